"""ONNX transforms under the graph_transforms names, as onnx-ir passes.

Each transform builds an ``onnx_ir.passes.PassBase`` from its parameters; :func:`run_passes`
composes them with onnx-ir's ``PassManager`` on one IR model, so a pipeline converts the
protobuf to IR and back once, however many transforms it has. The work is done by maintained
tools: onnx-ir's own passes, onnxscript's constant folder and rewrite rules, and, where only a
protobuf tool exists (onnxruntime's optimizer and float16 converter, onnxslim), one round trip
through :class:`ProtoPass`.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import FunctionalPass, InPlacePass, PassBase, PassManager, PassResult
from onnx_ir.passes.common import (
    CommonSubexpressionEliminationPass,
    DeduplicateInitializersPass,
    IdentityEliminationPass,
    LiftConstantsToInitializersPass,
    RemoveUnusedNodesPass,
    ShapeInferencePass,
    TopologicalSortPass,
)

from shipyard.deps import require
from shipyard.errors import UnsupportedError, UsageError, engine_message
from shipyard.passes.context import Context
from shipyard.passes.registry import Params


class ModelPass(InPlacePass):
    """An in-place pass from a function that edits the IR model and says whether it changed it."""

    def __init__(self, edit: Callable[[ir.Model], bool]) -> None:
        super().__init__()
        self.edit = edit

    def call(self, model: ir.Model) -> PassResult:
        return PassResult(model, bool(self.edit(model)))


class ProtoPass(FunctionalPass):
    """A protobuf-only tool as a pass (one round trip). Used where no onnx-ir or onnxscript
    equivalent exists: onnxruntime's offline optimizer and float16 converter, onnxslim."""

    def __init__(self, rewrite: Callable) -> None:
        super().__init__()
        self.rewrite = rewrite

    def call(self, model: ir.Model) -> PassResult:
        return PassResult(ir.from_proto(self.rewrite(ir.to_proto(model))), modified=True)


class _Timed(PassBase):
    """A step of the pipeline: says what it is doing (crash guard) and how long it took."""

    def __init__(self, inner: PassBase, label: str, seconds: dict[str, float]) -> None:
        super().__init__()
        self.inner, self.label, self.seconds = inner, label, seconds

    @property
    def in_place(self) -> bool:
        return self.inner.in_place

    @property
    def changes_input(self) -> bool:
        return self.inner.changes_input

    def call(self, model: ir.Model) -> PassResult:
        from shipyard import guard

        guard.stage(f"applying {self.label}")
        start = time.perf_counter()
        result = self.inner(model)
        self.seconds[self.label] = time.perf_counter() - start
        return result


def run_passes(proto, steps: list[tuple[str, PassBase]]) -> tuple[object, dict[str, float]]:
    """Apply ``(label, pass)`` steps in order with onnx-ir's PassManager; returns the new proto
    and each step's seconds."""
    seconds: dict[str, float] = {}
    manager = PassManager([_Timed(p, label, seconds) for label, p in steps])
    try:
        model = manager(ir.from_proto(proto)).model
    except ir.passes.PassError as exc:  # onnx-ir wraps what a pass raised: give back the user's error
        cause = exc.__cause__
        while isinstance(cause, ir.passes.PassError) and cause.__cause__ is not None:
            cause = cause.__cause__
        raise (cause or exc) from None
    return ir.to_proto(model), seconds


def lift_constants_proto(proto):
    """Constant-node weights -> initializers on a protobuf (quantize's preparation)."""
    return ir.to_proto(_lift()(ir.from_proto(proto)).model)


def _lift() -> PassBase:
    return LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)


# -- the transforms: each returns the pass its parameters describe ----------------------------


def strip_unused_nodes(params: Params, ctx: Context) -> PassBase:
    """Drop nodes no output needs, then apply ``shape=`` to the inputs if given."""
    if params.str("type") not in (None, "float", "float32"):
        raise UsageError("strip_unused_nodes(type=...) cannot retype ONNX inputs", hint="use the float16 transform")
    shape = params.shape("shape")
    if shape is None:
        return RemoveUnusedNodesPass()
    wanted = {name: shape for name in (params.strs("name") or ctx.inputs)}
    return ir.passes.Sequential(RemoveUnusedNodesPass(), ModelPass(lambda model: _fix_inputs(model, wanted)))


def remove_nodes(params: Params, ctx: Context) -> PassBase:
    """Identity goes through onnx-ir's IdentityEliminationPass; other single-input ops are
    bypassed the same way (their first input replaces their only output)."""
    ops = set(params.strs("op"))
    if not ops:
        raise UsageError("remove_nodes needs at least one op=OPTYPE parameter")
    return _remove_ops(ops)


def _remove_ops(ops: set[str]) -> PassBase:
    def bypass(model: ir.Model) -> bool:
        graph_outputs = {v.name for v in model.graph.outputs}
        changed = False
        for node in list(model.graph):
            if node.op_type in ops - {"Identity"} and node.inputs and node.inputs[0] is not None:
                out = node.outputs[0]
                if out.name in graph_outputs or any(o.uses() for o in node.outputs[1:]):
                    continue
                ir.convenience.replace_all_uses_with(out, node.inputs[0])
                changed = True
        return changed

    passes = [IdentityEliminationPass()] if "Identity" in ops else []
    return ir.passes.Sequential(*passes, ModelPass(bypass), RemoveUnusedNodesPass())


def remove_training_nodes(params: Params, ctx: Context) -> PassBase:
    return _remove_ops({"Dropout", "Identity"})


def fold_constants(params: Params, ctx: Context) -> PassBase:
    """onnxscript's constant folder (it also propagates shapes), then dead-node removal."""
    from onnxscript.optimizer import fold_constants as fold

    ignore_errors = params.bool("ignore_errors", False)

    def edit(model: ir.Model) -> bool:
        try:
            return bool(fold(model).modified)
        except Exception as exc:  # onnxscript raises many kinds; ignore_errors keeps going
            if ignore_errors:
                ctx.notes.append(f"fold_constants: stopped early ({exc.__class__.__name__}: {str(exc)[:100]})")
                return True
            raise UnsupportedError(f"fold_constants failed: {exc}", hint="use fold_constants(ignore_errors=true)") from exc

    return ir.passes.Sequential(ModelPass(edit), RemoveUnusedNodesPass())


def fold_batch_norms(params: Params, ctx: Context) -> PassBase:
    """onnxscript's rewrite rules fold BatchNormalization into the Conv, ConvTranspose or Gemm
    before it; shipyard's (passes/onnx_rules.py) fold a per-channel Mul/Add by constants after a
    Conv into its weights and bias."""
    from onnxscript.rewriter import RewritePass
    from onnxscript.rewriter._rewrite_rule import RewriteRuleSet
    from onnxscript.rewriter.rules.common import (
        fuse_batchnorm_into_conv_rule,
        fuse_batchnorm_into_conv_transpose_rule,
        fuse_batchnorm_into_gemm_rule,
    )

    from shipyard.passes import onnx_rules

    rules = RewriteRuleSet([fuse_batchnorm_into_conv_rule, fuse_batchnorm_into_conv_transpose_rule,
                            fuse_batchnorm_into_gemm_rule, *onnx_rules.rules()], commute=True)

    def edit(model: ir.Model) -> bool:
        before = _node_count(model)
        modified = RewritePass(rules)(model).modified
        RemoveUnusedNodesPass()(model)
        if before > _node_count(model):
            ctx.notes.append(f"fold_batch_norms: {before - _node_count(model)} node(s) folded into weights")
        return modified

    return ModelPass(edit)


def _node_count(model: ir.Model) -> int:
    return sum(1 for _ in ir.traversal.RecursiveGraphIterator(model.graph))


def ort_optimize(params: Params, ctx: Context) -> PassBase:
    level = params.str("level", "basic")
    if level not in ("basic", "extended"):
        raise params.bad("level", level, "basic or extended")
    return ProtoPass(lambda proto: _ort_optimize(proto, level))


def _ort_optimize(proto, level: str):
    import os
    import tempfile

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


def sort_by_execution_order(params: Params, ctx: Context) -> PassBase:
    return TopologicalSortPass()


def merge_duplicate_nodes(params: Params, ctx: Context) -> PassBase:
    """onnx-ir's common-subexpression elimination and initializer deduplication."""
    return ir.passes.Sequential(DeduplicateInitializersPass(size_limit=1 << 30),
                                CommonSubexpressionEliminationPass(size_limit=1 << 20), RemoveUnusedNodesPass())


def lift_constants(params: Params, ctx: Context) -> PassBase:
    """Constant nodes -> initializers, so weight tools (quantizers) can see them."""
    return _lift()


def round_weights(params: Params, ctx: Context) -> PassBase:
    """Snap each float initializer onto ``num_steps`` levels between its min and max."""
    steps = params.int("num_steps", 256, minimum=2)

    def edit(model: ir.Model) -> bool:
        changed = False
        for value in model.graph.initializers.values():
            if value.const_value is None or value.dtype != ir.DataType.FLOAT:
                continue
            array = value.const_value.numpy()
            lo, hi = (float(array.min()), float(array.max())) if array.size > 1 else (0.0, 0.0)
            if hi > lo:
                step = (hi - lo) / (steps - 1)
                rounded = (np.round((array - lo) / step) * step + lo).astype(np.float32)
                value.const_value = ir.Tensor(rounded, name=value.name)
                changed = True
        return changed

    return ModelPass(edit)


def obfuscate_names(params: Params, ctx: Context) -> PassBase:
    """Nodes and intermediate values get short names; graph inputs, outputs and initializers keep theirs."""
    def edit(model: ir.Model) -> bool:
        keep = {v.name for v in model.graph.inputs} | {v.name for v in model.graph.outputs}
        for i, node in enumerate(ir.traversal.RecursiveGraphIterator(model.graph)):
            node.name = f"n{i}"
            for j, out in enumerate(node.outputs):
                if out.name not in keep:
                    out.name = f"t{i}_{j}"
        return True

    return ModelPass(edit)


def fix_shapes(params: Params, ctx: Context) -> PassBase:
    """``fix_shapes(image="1,3,224,224")`` or ``fix_shapes(shape=...)`` for a one-input model;
    then strict shape inference, so shapes that do not fit the model are an error here."""
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
    return ModelPass(lambda model: _fix_inputs(model, wanted))


def _fix_inputs(model: ir.Model, wanted: dict[str, tuple[int, ...]]) -> bool:
    """Fix the named inputs' shapes; a symbolic dimension they fix is fixed in every graph input
    and output that uses it (as onnxruntime's ``make_input_shape_fixed`` does); intermediate
    shapes are inferred again, strictly."""
    inputs = {v.name: v for v in model.graph.inputs}
    symbols: dict[str, int] = {}
    for name, shape in wanted.items():
        value = inputs.get(name)
        if value is None:
            raise UsageError(f"the model has no input '{name}'")
        dims = list(value.shape.dims) if value.shape is not None else []
        if dims and len(dims) != len(shape):
            raise UsageError(f"input '{name}' has rank {len(dims)}; the shape {list(shape)} has rank {len(shape)}")
        for i, (d, want) in enumerate(zip(dims, shape)):
            if isinstance(d, int) and d != want:
                raise UsageError(f"input '{name}' dimension {i} is fixed at {d}, not {want}")
            if isinstance(d, ir.SymbolicDim) and d.value is not None:
                symbols[d.value] = want
        value.shape = ir.Shape(list(shape))
    for value in [*model.graph.inputs, *model.graph.outputs]:
        if value.shape is not None and value.name not in wanted:
            value.shape = ir.Shape([symbols.get(d.value, d) if isinstance(d, ir.SymbolicDim) else d
                                    for d in value.shape.dims])
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for out in node.outputs:
            if not out.is_graph_output():
                out.shape = None  # stale symbolic shapes; inference recomputes them
    try:
        ShapeInferencePass(strict_mode=True)(model)
    except Exception as exc:  # onnx's InferenceError, raised through onnx-ir's pass machinery
        cause = exc.__cause__ or exc
        raise UsageError(f"fix_shapes: the shapes do not fit the model ({engine_message(cause)})") from exc
    return True


def float16(params: Params, ctx: Context) -> PassBase:
    """onnxruntime's float16 converter; inputs and outputs stay float32 unless keep_io_types=false."""
    keep_io = params.bool("keep_io_types", True)

    def convert(proto):
        from onnxruntime.transformers.float16 import convert_float_to_float16

        return convert_float_to_float16(proto, keep_io_types=keep_io)

    return ProtoPass(convert)


def slim(params: Params, ctx: Context) -> PassBase:
    onnxslim = require("onnxslim", "the slim transform")
    return ProtoPass(onnxslim.slim)
