"""TorchScript archives, loaded with ``torch.jit.load`` onto the CPU (``map_location``), so a
model traced on a GPU opens on a machine without one."""
from __future__ import annotations

import io
import zipfile
import zlib
from functools import lru_cache

from shipyard.deps import require
from shipyard.errors import ModelFormatError, ModelLoadError, engine_message
from shipyard.model import Model, Signature, TensorSpec
from shipyard.summary import Summary, add_param, histogram

_NOISE = {"prim::Constant", "prim::GetAttr", "prim::ListConstruct", "prim::TupleConstruct",
          "prim::TupleUnpack", "prim::ListUnpack", "prim::NumToTensor"}
_SCALAR_TYPES = {"Float": "float32", "Double": "float64", "Half": "float16", "BFloat16": "bfloat16",
                 "Long": "int64", "Int": "int32", "Short": "int16", "Char": "int8", "Byte": "uint8",
                 "Bool": "bool"}


def load(model: Model, device: str = "cpu"):
    """A fresh module for each caller: a scripted model can keep state between calls (silero-vad's
    ``_state`` and ``_context``), so two runners of one file must not share one (a cached module did)."""
    torch = require("torch", "Loading a TorchScript model")
    data = model.in_memory()
    source = io.BytesIO(data) if data is not None else str(model.path)
    check_archive(io.BytesIO(data) if data is not None else model.path, model.path)
    try:
        return torch.jit.load(source, map_location=device).eval()
    except (RuntimeError, ValueError, zipfile.BadZipFile, OSError) as exc:
        detail = engine_message(exc)
        raise ModelLoadError(f"{model.path}: torch.jit.load failed ({detail})") from exc


def check_archive(source, path) -> None:
    """A TorchScript file is a zip archive with a CRC-32 per member; torch.jit.load does not
    check them, so flipped bytes in the weights would load and compute garbage. Check every
    member's CRC (and the archive's structure) first."""
    try:
        with zipfile.ZipFile(source) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError, OSError) as exc:
        raise ModelFormatError(f"{path}: truncated or corrupt TorchScript file (not a readable zip archive: {exc})",
                               hint="save the model again; if it was copied, compare its size with the original") from exc
    if bad is not None:
        raise ModelFormatError(f"{path}: corrupt TorchScript file: archive member '{bad}' fails its CRC check "
                               "(its bytes changed after the model was saved)",
                               hint="save the model again; if it was copied, compare its size with the original")


_SCALAR_ARGS = {"int": "int64", "float": "float32", "bool": "bool"}


def _tensor_type_info(jit_type) -> tuple[str, tuple[int, ...] | None]:
    """(dtype, shape) a traced graph recorded for a Tensor input, when it recorded them."""
    import torch

    if not isinstance(jit_type, torch._C.TensorType):
        return "float32", None
    try:
        sizes = jit_type.sizes()
        scalar = jit_type.scalarType()
    except RuntimeError:  # incomplete tensor types assert inside TorchScript
        return "float32", None
    return _SCALAR_TYPES.get(scalar, "float32") if scalar else "float32", tuple(int(d) for d in sizes) if sizes else None


def signature_of(module) -> Signature:
    """Input names from ``forward``'s schema; shapes and dtypes from the traced graph when recorded.

    Non-tensor arguments (``int sr``) become 0-d inputs of the matching dtype.
    """
    schema = module.forward.schema
    args = [a for a in schema.arguments if a.name != "self"]
    graph_inputs = list(module.graph.inputs())[1:]
    inputs = []
    for i, arg in enumerate(args):
        kind = str(arg.type)
        if kind in _SCALAR_ARGS:
            inputs.append(TensorSpec(arg.name, _SCALAR_ARGS[kind], ()))
            continue
        dtype, shape = _tensor_type_info(graph_inputs[i].type()) if i < len(graph_inputs) else ("float32", None)
        inputs.append(TensorSpec(arg.name, dtype, shape))
    returns = schema.returns
    ret_type = str(returns[0].type) if returns else "Tensor"
    if ret_type.startswith("Tuple"):
        count = ret_type.count("Tensor")
        outputs = tuple(TensorSpec(f"output_{i}", "float32", None) for i in range(count))
    else:
        outputs = (TensorSpec("output", "float32", None),)
    return Signature(tuple(inputs), outputs)


def scalar_args(module) -> set[str]:
    """Names of forward arguments that take Python scalars rather than tensors."""
    return {a.name for a in module.forward.schema.arguments if str(a.type) in _SCALAR_ARGS}


def signature(model: Model) -> Signature:
    return signature_of(_inspected(model))


def summarize(model: Model) -> Summary:
    module = _inspected(model)
    sig = signature_of(module)
    params = 0
    param_bytes: dict[str, int] = {}
    for tensor in module.state_dict().values():
        params += tensor.numel()
        add_param(param_bytes, str(tensor.dtype).replace("torch.", ""), tensor.numel() * tensor.element_size())
    kinds = [n.kind() for n in module.inlined_graph.nodes() if n.kind() not in _NOISE]
    with zipfile.ZipFile(io.BytesIO(model.read_bytes()) if model.encrypted else model.path) as zf:
        version = next((zf.read(n).decode().strip() for n in zf.namelist() if n.endswith("/version")), "?")
    return Summary(
        format="torchscript",
        path=str(model.path),
        size_bytes=model.path.stat().st_size,
        inputs=list(sig.inputs),
        outputs=list(sig.outputs),
        ops=histogram(kinds),
        params=params,
        param_bytes=param_bytes,
        flops=None,
        producer="TorchScript",
        version=f"archive version {version}",
        details={"flops_unavailable": "TorchScript graphs carry no shapes to count FLOPs from; convert to ONNX to count them"},
    )


@lru_cache(maxsize=4)
def _inspected(model: Model):
    """One loaded module per file for reading its graph (signature, summary): never run."""
    return load(model)
