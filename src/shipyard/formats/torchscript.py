"""TorchScript archives, loaded with ``torch.jit.load`` onto the CPU (``map_location``), so a
model traced on a GPU opens on a machine without one."""
from __future__ import annotations

import zipfile
from functools import lru_cache

from shipyard.deps import require
from shipyard.errors import ModelLoadError
from shipyard.model import Model, Signature, TensorSpec
from shipyard.summary import Summary, add_param, histogram

_NOISE = {"prim::Constant", "prim::GetAttr", "prim::ListConstruct", "prim::TupleConstruct",
          "prim::TupleUnpack", "prim::ListUnpack", "prim::NumToTensor"}
_SCALAR_TYPES = {"Float": "float32", "Double": "float64", "Half": "float16", "BFloat16": "bfloat16",
                 "Long": "int64", "Int": "int32", "Short": "int16", "Char": "int8", "Byte": "uint8",
                 "Bool": "bool"}


@lru_cache(maxsize=4)
def load(model: Model, device: str = "cpu"):
    torch = require("torch", "Loading a TorchScript model")
    try:
        return torch.jit.load(str(model.path), map_location=device).eval()
    except (RuntimeError, ValueError, zipfile.BadZipFile, OSError) as exc:
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__
        raise ModelLoadError(f"{model.path}: torch.jit.load failed ({detail})") from exc


def signature_of(module) -> Signature:
    """Input names from ``forward``'s schema; shapes and dtypes from the traced graph when recorded."""
    schema = module.forward.schema
    args = [a for a in schema.arguments if a.name != "self"]
    graph_inputs = list(module.graph.inputs())[1:]
    inputs = []
    for i, arg in enumerate(args):
        dtype, shape = "float32", None
        if i < len(graph_inputs):
            t = graph_inputs[i].type()
            sizes = t.sizes() if hasattr(t, "sizes") else None
            shape = tuple(int(s) for s in sizes) if sizes else None
            scalar = t.scalarType() if hasattr(t, "scalarType") else None
            dtype = _SCALAR_TYPES.get(scalar, dtype) if scalar else dtype
        inputs.append(TensorSpec(arg.name, dtype, shape))
    returns = schema.returns
    ret_type = str(returns[0].type) if returns else "Tensor"
    if ret_type.startswith("Tuple"):
        count = ret_type.count("Tensor")
        outputs = tuple(TensorSpec(f"output_{i}", "float32", None) for i in range(count))
    else:
        outputs = (TensorSpec("output", "float32", None),)
    return Signature(tuple(inputs), outputs)


def signature(model: Model) -> Signature:
    return signature_of(load(model))


def summarize(model: Model) -> Summary:
    module = load(model)
    sig = signature_of(module)
    params = 0
    param_bytes: dict[str, int] = {}
    for tensor in module.state_dict().values():
        params += tensor.numel()
        add_param(param_bytes, str(tensor.dtype).replace("torch.", ""), tensor.numel() * tensor.element_size())
    kinds = [n.kind() for n in module.inlined_graph.nodes() if n.kind() not in _NOISE]
    with zipfile.ZipFile(model.path) as zf:
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
