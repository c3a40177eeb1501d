"""ONNX transforms under the graph_transforms names, built on maintained tools: onnx-ir
passes, onnxscript's optimizer, onnxslim, onnxruntime's offline optimizer, float16 converter
and shape fixer. Each takes and returns an ``onnx.ModelProto``.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np

from shipyard.deps import require
from shipyard.errors import UnsupportedError, UsageError
from shipyard.passes.graphdef import Context
from shipyard.passes.registry import Params


def _ir_passes(proto, *passes):
    """Run onnx-ir passes in sequence on a proto."""
    import onnx_ir as ir

    model = ir.from_proto(proto)
    for p in passes:
        model = p(model).model
    return ir.to_proto(model)


def strip_unused_nodes(proto, params: Params, ctx: Context):
    """Drop nodes no output needs (onnx-ir), then apply ``shape=`` to the inputs if given."""
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    if params.str("type") not in (None, "float", "float32"):
        raise UsageError("strip_unused_nodes(type=...) cannot retype ONNX inputs", hint="use the float16 transform")
    proto = _ir_passes(proto, RemoveUnusedNodesPass())
    shape = params.shape("shape")
    if shape is not None:
        names = params.strs("name") or ctx.inputs
        for name in names:
            _fix_input(proto, name, shape)
    return proto


def remove_nodes(proto, params: Params, ctx: Context):
    """Identity goes through onnx-ir's IdentityEliminationPass; other single-input ops are
    bypassed the same way (their first input replaces their only output)."""
    import onnx_ir as ir
    from onnx_ir.passes.common import IdentityEliminationPass, RemoveUnusedNodesPass

    ops = set(params.strs("op"))
    if not ops:
        raise UsageError("remove_nodes needs at least one op=OPTYPE parameter")
    model = ir.from_proto(proto)
    if "Identity" in ops:
        model = IdentityEliminationPass()(model).model
    graph_outputs = {v.name for v in model.graph.outputs}
    for node in list(model.graph):
        if node.op_type in ops - {"Identity"} and node.inputs and node.inputs[0] is not None:
            out = node.outputs[0]
            if out.name in graph_outputs or any(o.uses() for o in node.outputs[1:]):
                continue
            ir.convenience.replace_all_uses_with(out, node.inputs[0])
    model = RemoveUnusedNodesPass()(model).model
    return ir.to_proto(model)


def remove_training_nodes(proto, params: Params, ctx: Context):
    from shipyard.passes.spec import Step

    return remove_nodes(proto, Params(Step("remove_nodes", {"op": ["Dropout", "Identity"]})), ctx)


def fold_constants(proto, params: Params, ctx: Context):
    """onnxscript's constant folder (it also propagates shapes and removes what becomes dead)."""
    import onnx_ir as ir
    import onnxscript.optimizer as opt
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    model = ir.from_proto(proto)
    try:
        opt.fold_constants(model)
    except Exception as exc:  # onnxscript raises many kinds; ignore_errors keeps the model as it was
        if params.bool("ignore_errors", False):
            ctx.notes.append(f"fold_constants: skipped ({exc.__class__.__name__}: {str(exc)[:100]})")
            return proto
        raise UnsupportedError(f"fold_constants failed: {exc}", hint="use fold_constants(ignore_errors=true)") from exc
    model = RemoveUnusedNodesPass()(model).model
    return ir.to_proto(model)


def fold_batch_norms(proto, params: Params, ctx: Context):
    """onnxruntime's basic offline optimization: Conv+BatchNormalization, Conv+Mul and Conv+Add fusions."""
    return _ort_optimize(proto, "basic")


def ort_optimize(proto, params: Params, ctx: Context):
    level = params.str("level", "basic")
    if level not in ("basic", "extended"):
        raise params.bad("level", level, "basic or extended")
    return _ort_optimize(proto, level)


def _ort_optimize(proto, level: str):
    import onnx

    ort = require("onnxruntime", "onnxruntime's offline optimization")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                     "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}[level]
    opts.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        opts.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return onnx.load(opts.optimized_model_filepath)


def sort_by_execution_order(proto, params: Params, ctx: Context):
    from onnx_ir.passes.common import TopologicalSortPass

    return _ir_passes(proto, TopologicalSortPass())


def merge_duplicate_nodes(proto, params: Params, ctx: Context):
    """onnx-ir's common-subexpression elimination and initializer deduplication."""
    from onnx_ir.passes.common import (
        CommonSubexpressionEliminationPass,
        DeduplicateInitializersPass,
        RemoveUnusedNodesPass,
    )

    return _ir_passes(proto, DeduplicateInitializersPass(size_limit=1 << 30),
                      CommonSubexpressionEliminationPass(size_limit=1 << 20), RemoveUnusedNodesPass())


def lift_constants(proto, params: Params, ctx: Context):
    """Constant nodes -> initializers (onnx-ir), so weight tools (quantizers) can see them."""
    from onnx_ir.passes.common import LiftConstantsToInitializersPass

    return _ir_passes(proto, LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0))


def round_weights(proto, params: Params, ctx: Context):
    """Snap each float initializer onto ``num_steps`` levels between its min and max."""
    from onnx import numpy_helper

    steps = params.int("num_steps", 256, minimum=2)
    for init in proto.graph.initializer:
        value = numpy_helper.to_array(init)
        if value.dtype != np.float32 or value.size < 2:
            continue
        lo, hi = float(value.min()), float(value.max())
        if hi > lo:
            step = (hi - lo) / (steps - 1)
            rounded = (np.round((value - lo) / step) * step + lo).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(rounded, init.name))
    return proto


def obfuscate_names(proto, params: Params, ctx: Context):
    """Nodes and intermediate values get short names; graph inputs, outputs and initializers keep theirs."""
    import onnx_ir as ir

    model = ir.from_proto(proto)
    keep = {v.name for v in model.graph.inputs} | {v.name for v in model.graph.outputs}
    for i, node in enumerate(ir.traversal.RecursiveGraphIterator(model.graph)):
        node.name = f"n{i}"
        for j, out in enumerate(node.outputs):
            if out.name not in keep:
                out.name = f"t{i}_{j}"
    return ir.to_proto(model)


def fix_shapes(proto, params: Params, ctx: Context):
    """``fix_shapes(image="1,3,224,224")`` or ``fix_shapes(shape=...)`` for a one-input model
    (onnxruntime's ``make_input_shape_fixed``, then shape inference)."""
    wanted: dict[str, tuple[int, ...]] = {}
    for key, values in params.step.params.items():
        if key == "shape":
            if len(ctx.inputs) != 1:
                raise UsageError("fix_shapes(shape=...) needs a one-input model; name the inputs: fix_shapes(NAME=\"1,3,224,224\")")
            wanted[ctx.inputs[0]] = params.shape(key)
        else:
            if key not in ctx.inputs:
                raise UsageError(f"fix_shapes: the model has no input '{key}'", hint="inputs: " + ", ".join(ctx.inputs))
            wanted[key] = params.shape(key, values[-1])
    if not wanted:
        raise UsageError("fix_shapes needs INPUT=\"d0,d1,...\" (or shape=... for a one-input model)")
    for name, shape in wanted.items():
        _fix_input(proto, name, shape)
    import onnx

    try:
        return onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    except onnx.shape_inference.InferenceError as exc:
        raise UsageError(f"fix_shapes: the shapes do not fit the model ({str(exc).splitlines()[0][:200]})") from exc


def _fix_input(proto, name: str, shape: tuple[int, ...]) -> None:
    from onnxruntime.tools.onnx_model_utils import make_input_shape_fixed

    graph_input = next((i for i in proto.graph.input if i.name == name), None)
    if graph_input is None:
        raise UsageError(f"the model has no input '{name}'")
    rank = len(graph_input.type.tensor_type.shape.dim)
    if rank and rank != len(shape):
        raise UsageError(f"input '{name}' has rank {rank}; the shape {list(shape)} has rank {len(shape)}")
    for i, (d, want) in enumerate(zip(graph_input.type.tensor_type.shape.dim, shape)):
        if d.HasField("dim_value") and d.dim_value != want:
            raise UsageError(f"input '{name}' dimension {i} is fixed at {d.dim_value}, not {want}")
    make_input_shape_fixed(proto.graph, name, list(shape))
    del proto.graph.value_info[:]  # stale symbolic shapes; inference recomputes them


def float16(proto, params: Params, ctx: Context):
    """onnxruntime's float16 converter; inputs and outputs stay float32 unless keep_io_types=false."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(proto, keep_io_types=params.bool("keep_io_types", True))


def slim(proto, params: Params, ctx: Context):
    onnxslim = require("onnxslim", "the slim transform")
    return onnxslim.slim(proto)
