"""OpenVINO IR: the graph as XML (``model.xml``) and its weights in a ``.bin`` file of the same name.

It is what NNCF's OpenVINO backend writes: an int8 IR runs on OpenVINO's CPU plugin with every
quantized layer fused into int8 kernels, which the QDQ ONNX NNCF's ONNX backend writes does not
always get (Keras ResNet50, 2 threads: 0.6-0.8x the QDQ ONNX's latency). Only OpenVINO reads it, so
shipyard reads it with OpenVINO too. The pieces every OpenVINO reader shares — a port's name and
spec, an exception's informative line — live here, and the runner imports them.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from shipyard.deps import require
from shipyard.errors import ModelLoadError
from shipyard.model import Model, Signature, TensorSpec
from shipyard.summary import Summary, add_param, histogram

WEIGHTS_SUFFIX = ".bin"
IN_MEMORY_FORMATS = ("onnx", "openvino-ir")  # what OpenVINO reads from bytes (an encrypted model, decrypted in memory)
# Element types of constants that are weights (not shapes, axes or indices)
_WEIGHT_TYPES = ("f32", "f16", "bf16", "f64", "i8", "u8", "i4", "u4", "nf4", "f8e4m3", "f8e5m2")


def looks_like_ir(head: bytes) -> bool:
    """An XML document whose root element is ``<net``: OpenVINO's IR (v10, v11)."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"<?xml"):
        text = text[text.find(b"?>") + 2:].lstrip() if b"?>" in text else b""
    while text.startswith(b"<!--") and b"-->" in text:  # comments before the root element
        text = text[text.find(b"-->") + 3:].lstrip()
    return text.startswith((b"<net ", b"<net>"))


def weights_path(path: Path) -> Path:
    return path.with_suffix(WEIGHTS_SUFFIX)


def files(path: Path) -> dict[str, Path]:
    """The two files an IR is ({name: path}), for copies, sizes, digests and serving repositories."""
    return {path.name: path, weights_path(path).name: weights_path(path)}


def first_reason(exc: BaseException) -> str:
    """The informative line of an OpenVINO exception (they open with 'Exception from src/...:NN')."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    failed = next((ln for ln in lines if ln.startswith("-- Conversion is failed for")), None)
    if failed:
        return "unsupported: " + failed.removeprefix("-- Conversion is failed for:").strip()
    useful = [ln for ln in lines if not ln.startswith(("Exception from", "Check '", "FrontEnd API failed"))]
    return (useful[0] if useful else lines[-1] if lines else type(exc).__name__)[:300]


def port_name(port, wanted: set[str]) -> str:
    """The port's name that the format's own signature uses (a port may carry several)."""
    for name in sorted(port.get_names()):
        if name in wanted:
            return name
        if name.endswith(":0") and name[:-2] in wanted:  # a GraphDef's node name, as TensorFlow's runner reports it
            return name[:-2]
    return port.get_any_name()


def port_spec(port, name: str) -> TensorSpec:
    pshape = port.get_partial_shape()
    shape = None if pshape.rank.is_dynamic else tuple(d.get_length() if d.is_static else -1 for d in pshape)
    etype = port.get_element_type()
    dtype = "unknown" if etype.is_dynamic() else np.dtype(etype.to_dtype()).name
    return TensorSpec(name, dtype, shape)


def read(core, model: Model, payload: bytes | None = None):
    """The ``openvino.Model`` of an IR: from its two files, or from an encrypted one's decrypted
    files in memory (``payload``, the plaintext archive; OpenVINO reads the graph as text and the
    weights as a tensor, so nothing decrypted touches the disk)."""
    ov = require("openvino", "Reading an OpenVINO IR model")
    payload = payload if payload is not None else model.in_memory()
    bin_path = weights_path(model.path)
    try:
        if payload is not None:
            from shipyard.protect import untar

            files = untar(payload, model.path)
            graph = next((v for k, v in sorted(files.items()) if k.endswith(".xml")), None)
            weights = next((v for k, v in sorted(files.items()) if k.endswith(WEIGHTS_SUFFIX)), b"")
            if graph is None:
                raise ModelLoadError(f"{model.path}: the encrypted IR holds no .xml file (holds: {', '.join(files) or 'nothing'})")
            return core.read_model(graph, ov.Tensor(np.frombuffer(weights, np.uint8).copy()))
        return core.read_model(str(model.path), str(bin_path) if bin_path.is_file() else "")
    except ModelLoadError:
        raise
    except Exception as exc:
        hint = None if payload is not None or bin_path.is_file() else \
            f"an IR is two files: {model.path.name} and {bin_path.name} beside it"
        raise ModelLoadError(f"{model.path}: OpenVINO cannot read the IR ({first_reason(exc)})", hint=hint) from exc


@lru_cache(maxsize=4)
def load(model: Model):
    """The ``openvino.Model`` of an IR file (its ``.bin`` read from beside it)."""
    ov = require("openvino", "Reading an OpenVINO IR model")
    return read(ov.Core(), model)


def graph_of(model: Model):
    """The ``openvino.Model`` of any model OpenVINO reads, to transform and write as an IR (the
    converter, NNCF): an IR as it is; the others through ``ov.convert_model``, not
    ``Core.read_model``, whose graph keeps what an export leaves for run time (an ONNX Conv's bias
    brings 161 ShapeOf nodes into ResNet50 with a dynamic batch, ~5% slower once quantized)."""
    ov = require("openvino", "Reading a model with OpenVINO's converter")
    from shipyard.deps import all_output_silenced
    from shipyard.errors import UnsupportedError

    if model.in_memory() is not None:
        raise UnsupportedError(f"{model.path}: OpenVINO's converter reads a model from a file, not an encrypted one",
                               hint="use the unencrypted model, then encrypt the result")
    if model.format == "openvino-ir":
        return read(ov.Core(), model)
    try:
        with all_output_silenced():  # its front ends print warnings of their own
            return ov.convert_model(str(model.path))
    except Exception as exc:  # OpenVINO raises OpConversionFailure, RuntimeError and others
        raise ModelLoadError(f"{model.path}: OpenVINO's converter cannot read the model ({first_reason(exc)})") from exc


def signature_of(ov_model) -> Signature:
    ins = tuple(port_spec(p, p.get_any_name()) for p in ov_model.inputs)
    outs = tuple(port_spec(p, p.get_any_name()) for p in ov_model.outputs)
    return Signature(ins, outs)


def signature(model: Model) -> Signature:
    return signature_of(load(model))


def summarize(model: Model) -> Summary:
    ov_model = load(model)
    sig = signature_of(ov_model)
    params, param_bytes, kinds = 0, {}, []
    for op in ov_model.get_ordered_ops():
        kind = op.get_type_name()
        if kind in ("Parameter", "Result"):
            continue
        if kind != "Constant":
            kinds.append(kind)
            continue
        etype = op.get_output_element_type(0)
        if etype.get_type_name() not in _WEIGHT_TYPES or not op.get_output_partial_shape(0).is_static:
            continue
        count = int(np.prod(list(op.get_output_shape(0)), dtype=np.int64))
        if count <= 1:  # scalars: zero points, scales of a whole tensor, clamp bounds
            continue
        params += count
        add_param(param_bytes, etype.get_type_name(), count * etype.bitwidth // 8)
    version = ov_model.get_rt_info("Runtime_version").astype(str) if ov_model.has_rt_info("Runtime_version") else None
    producer = "NNCF + OpenVINO" if ov_model.has_rt_info("nncf") else "OpenVINO"
    paths = [p for p in files(model.path).values() if p.is_file()]
    return Summary(
        format="openvino-ir", path=str(model.path), size_bytes=sum(p.stat().st_size for p in paths),
        inputs=list(sig.inputs), outputs=list(sig.outputs), ops=histogram(kinds), params=params,
        param_bytes=param_bytes, producer=producer, version=version,
        details={"weights": weights_path(model.path).name,
                 "flops_unavailable": "not counted for OpenVINO IR; count them on the ONNX model it came from"},
    )
