"""``torch.export`` programs (``.pt2``, ``torch.export.save``): an ATen graph with its weights.

The archive is a zip whose ``archive_format`` member marks it; the graph is JSON and the weights
are raw tensors, so loading it runs no pickle of the user's. Symbolic sizes (``s31``, a
``Dim("batch")``) are dynamic dimensions.
"""
from __future__ import annotations

import warnings
from functools import lru_cache

from shipyard.deps import require
from shipyard.errors import ModelLoadError
from shipyard.model import Model, Signature, TensorSpec
from shipyard.summary import Summary, add_param, histogram


def is_export_archive(names: list[str]) -> bool:
    return any(n.rsplit("/", 1)[-1] == "archive_format" for n in names) and any("/models/" in n for n in names)


@lru_cache(maxsize=4)
def load(model: Model):
    torch = require("torch", "Loading a torch.export program")
    import io

    data = model.in_memory()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.load(io.BytesIO(data) if data is not None else str(model.path))
    except Exception as exc:  # torch raises RuntimeError, KeyError, zipfile errors, JSON errors...
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{model.path}: torch.export.load failed ({detail})") from exc


def _spec(name: str, value) -> TensorSpec:
    """Name, dtype and shape of a graph value from its FakeTensor; symbolic sizes become -1."""
    if value is None or not hasattr(value, "shape"):
        return TensorSpec(name, "unknown", None)
    dims = tuple(int(d) if str(d).lstrip("-").isdigit() else -1 for d in value.shape)
    return TensorSpec(name, str(value.dtype).removeprefix("torch."), dims)


def signature_of(program) -> Signature:
    user = set(program.graph_signature.user_inputs)
    inputs = [_spec(n.name, n.meta.get("val")) for n in program.graph.nodes if n.op == "placeholder" and n.name in user]
    out_node = next(n for n in program.graph.nodes if n.op == "output")
    values = out_node.args[0] if isinstance(out_node.args[0], (list, tuple)) else [out_node.args[0]]
    names = list(program.graph_signature.user_outputs)
    values = values[-len(names):] if names else []
    outputs = [_spec(name or f"output_{i}", getattr(v, "meta", {}).get("val")) for i, (name, v) in enumerate(zip(names, values))]
    return Signature(tuple(inputs), tuple(outputs))


def signature(model: Model) -> Signature:
    return signature_of(load(model))


def summarize(model: Model) -> Summary:
    program = load(model)
    sig = signature_of(program)
    param_bytes: dict[str, int] = {}
    params = 0
    for tensor in program.state_dict.values():
        params += tensor.numel()
        add_param(param_bytes, str(tensor.dtype).removeprefix("torch."), tensor.numel() * tensor.element_size())
    kinds = [str(n.target).removeprefix("aten.").removesuffix(".default")
             for n in program.graph.nodes if n.op == "call_function"]
    return Summary(
        format="torch-export", path=str(model.path), size_bytes=model.path.stat().st_size,
        inputs=list(sig.inputs), outputs=list(sig.outputs), ops=histogram(kinds), params=params,
        param_bytes=param_bytes, producer="torch.export",
        details={"flops_unavailable": "not counted for torch.export programs; convert to ONNX to count them"},
    )
