"""One KServe v2 inference request and response, whatever the wire: REST JSON, REST with the
binary tensor extension, or gRPC (typed contents or ``raw_input_contents``).

Each front end only splits its transport (HTTP body and header length; the protobuf message)
and calls the decoder here; both then run the same :func:`outputs_for` and encode the same
:class:`InferResponse`. Every declared shape passes the model's :class:`~codec.Limits` before
its data is decoded (see codec.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shipyard.errors import InputError
from shipyard.serve import codec, protocol

_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
             "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}


@dataclass(slots=True)
class InferRequest:
    """A decoded request: tensors by input name, the outputs asked for (None: all), and for
    REST, which outputs to answer as binary (per output, else ``binary_default``)."""

    inputs: dict[str, np.ndarray]
    outputs: list[str] | None = None
    id: str = ""
    binary: dict[str, bool] = field(default_factory=dict)
    binary_default: bool = False


@dataclass(slots=True)
class InferResponse:
    model: str
    version: str
    outputs: dict[str, np.ndarray]
    id: str = ""


def outputs_for(request: InferRequest, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The outputs the request asked for (an unknown name is a client error)."""
    return protocol.filter_outputs(outputs, request.outputs)


# -- REST (JSON header, optional binary tail) ---------------------------------------------------


def from_rest(body: Any, binary: memoryview, limits: codec.Limits | None = None) -> InferRequest:
    """A request from the KServe v2 JSON header and the binary data after it."""
    limits = limits if limits is not None else codec.Limits()
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
        raise InputError("the body must be an object with a non-empty 'inputs' list")
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise InputError("'parameters' must be an object")
    feeds, offset = {}, 0
    for i, tensor in enumerate(body["inputs"]):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise InputError(f"inputs[{i}] must be an object with a 'name'")
        what = f"input '{tensor['name']}'"
        shape = codec.check_shape(tensor.get("shape"), what)
        limits.admit(tensor["name"], shape, codec.numpy_dtype(tensor.get("datatype")), what)
        tparams = tensor.get("parameters") or {}
        if not isinstance(tparams, dict):
            raise InputError(f"{what}: 'parameters' must be an object")
        size = tparams.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise InputError(f"{what}: binary_data_size {size!r} does not fit the binary data after the header")
            feeds[tensor["name"]] = codec.from_bytes(binary[offset:offset + size], tensor.get("datatype"), shape, what)
            offset += size
        elif "data" in tensor:
            feeds[tensor["name"]] = codec.from_values(tensor["data"], tensor.get("datatype"), shape, what)
        else:
            raise InputError(f"{what}: give 'data' or parameters.binary_data_size")
    if offset != len(binary):
        raise InputError(f"{len(binary) - offset} bytes of binary data after the header belong to no input")
    default = bool(params.get("binary_data_output", False))
    request = InferRequest(feeds, id=body["id"] if isinstance(body.get("id"), str) else "", binary_default=default)
    outputs = body.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs):
            raise InputError("'outputs' must be a list of objects with a 'name'")
        request.outputs = [o["name"] for o in outputs]
        for o in outputs:
            op = o.get("parameters") or {}
            request.binary[o["name"]] = bool(op.get("binary_data", default)) if isinstance(op, dict) else False
    return request


def to_rest(response: InferResponse, request: InferRequest, dumps) -> tuple[bytes, list[bytes]]:
    """(JSON header, binary blobs to append after it): an output is binary when the request
    asked for it by name, or for every output with ``binary_data_output``."""
    tensors, blobs = [], []
    for name, arr in response.outputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": codec.kserve_datatype_of(arr.dtype), "shape": list(arr.shape)}
        if request.binary.get(name, request.binary_default):
            blob = codec.to_bytes(arr)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = codec.to_json_values(arr)
        tensors.append(entry)
    result: dict[str, Any] = {"model_name": response.model, "model_version": response.version, "outputs": tensors}
    if request.id:
        result["id"] = request.id
    return dumps(result), blobs


# -- gRPC ---------------------------------------------------------------------------------------


def from_grpc(message, limits: codec.Limits | None = None) -> InferRequest:
    """A request from a ``ModelInferRequest`` (typed contents or ``raw_input_contents``)."""
    limits = limits if limits is not None else codec.Limits()
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InputError("raw_input_contents must hold one entry per input")
    feeds = {}
    for i, tensor in enumerate(message.inputs):
        what = f"input '{tensor.name}'"
        shape = codec.check_shape(list(tensor.shape), what)
        limits.admit(tensor.name, shape, codec.numpy_dtype(tensor.datatype), what)
        if raw:
            feeds[tensor.name] = codec.from_bytes(raw[i], tensor.datatype, shape, what)
        else:
            values = getattr(tensor.contents, _CONTENTS.get(tensor.datatype, "fp32_contents"))
            feeds[tensor.name] = codec.from_repeated(values, tensor.datatype, shape, what)
    return InferRequest(feeds, [o.name for o in message.outputs] or None, message.id)


def to_grpc(response: InferResponse, reply) -> None:
    """Fill ``reply`` (a ``ModelInferResponse``): every output as ``raw_output_contents``."""
    reply.model_name = response.model
    reply.model_version = response.version
    reply.id = response.id
    for name, arr in response.outputs.items():
        arr = np.asarray(arr)
        reply.outputs.add(name=name, datatype=codec.kserve_datatype(arr.dtype.name), shape=list(arr.shape))
        reply.raw_output_contents.append(codec.to_bytes(arr))
