"""Every transform shipyard knows: name, parameters, one-line description, and the function
that does it for each model format (named as ``module:function`` so nothing heavy is
imported until a transform runs)."""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from shipyard.errors import UsageError
from shipyard.passes.spec import Step

GRAPHDEF = "tf-graphdef"
ONNX = "onnx"


@dataclass(frozen=True)
class Transform:
    name: str
    description: str
    params: dict[str, str] = field(default_factory=dict)  # name -> what it means
    impl: dict[str, str] = field(default_factory=dict)  # format -> "module:function"
    lossy: bool = False  # changes the numbers on purpose (verification uses loose tolerances)
    any_params: bool = False  # parameter names are free (fix_shapes: input names)

    def function(self, fmt: str) -> Callable:
        module, _, func = self.impl[fmt].partition(":")
        return getattr(importlib.import_module(module), func)


_G = "shipyard.passes.graphdef"
_BN = "shipyard.passes.graphdef_bn"
_O = "shipyard.passes.onnx_passes"
_Q = "shipyard.quantize.onnx_weights"

TRANSFORMS: dict[str, Transform] = {t.name: t for t in [
    Transform("strip_unused_nodes", "keep only what the outputs need; optionally retype/reshape the inputs",
              {"type": "input dtype (float, int32, ...)", "shape": "input shape, e.g. \"1,224,224,3\"",
               "name": "input to apply type/shape to (default: every input)"},
              {GRAPHDEF: f"{_G}:strip_unused_nodes", ONNX: f"{_O}:strip_unused_nodes"}),
    Transform("remove_nodes", "remove pass-through nodes of the given op types, rewiring their consumers",
              {"op": "op type to remove (repeatable)"},
              {GRAPHDEF: f"{_G}:remove_nodes", ONNX: f"{_O}:remove_nodes"}),
    Transform("fold_constants", "evaluate every subgraph that depends only on constants",
              {"ignore_errors": "true: keep going when a node cannot be folded"},
              {GRAPHDEF: f"{_G}:fold_constants", ONNX: f"{_O}:fold_constants"}),
    Transform("fold_batch_norms", "fold a Mul by a constant after Conv/MatMul (a folded batch norm) into the weights",
              {}, {GRAPHDEF: f"{_BN}:fold_batch_norms", ONNX: f"{_O}:fold_batch_norms"}),
    Transform("fold_old_batch_norms",
              "fold BatchNormWithGlobalNormalization / FusedBatchNorm(V3) / BatchNormalization into the conv before it",
              {}, {GRAPHDEF: f"{_BN}:fold_old_batch_norms", ONNX: f"{_O}:fold_batch_norms"}),
    Transform("remove_training_nodes", "remove Identity/CheckNumerics/StopGradient (GraphDef) or Dropout (ONNX) kept for training",
              {}, {GRAPHDEF: f"{_G}:remove_training_nodes", ONNX: f"{_O}:remove_training_nodes"}),
    Transform("remove_device", "clear every node's device placement", {}, {GRAPHDEF: f"{_G}:remove_device"}),
    Transform("sort_by_execution_order", "order nodes so that each comes after its inputs",
              {}, {GRAPHDEF: f"{_G}:sort_by_execution_order", ONNX: f"{_O}:sort_by_execution_order"}),
    Transform("merge_duplicate_nodes", "merge identical constants and nodes with identical inputs and attributes",
              {}, {GRAPHDEF: f"{_G}:merge_duplicate_nodes", ONNX: f"{_O}:merge_duplicate_nodes"}),
    Transform("round_weights", "round float weights to num_steps levels each (compresses well, stays float)",
              {"num_steps": "levels per tensor (default 256)"},
              {GRAPHDEF: f"{_G}:round_weights", ONNX: f"{_O}:round_weights"}, lossy=True),
    Transform("quantize_weights", "store float weights of at least minimum_size elements as 8 bits + Dequantize",
              {"minimum_size": "smallest tensor to quantize, in elements (default 1024)"},
              {GRAPHDEF: f"{_G}:quantize_weights", ONNX: f"{_Q}:quantize_weights_transform"}, lossy=True),
    Transform("quantize_nodes", "run Conv2D/MatMul/BiasAdd/Relu/Relu6/MaxPool/AvgPool on TF's eight-bit kernels "
              "(ranges from FakeQuant nodes, input_min/max, fallback_min/max, or measured at run time)",
              {"input_min": "range of the graph's inputs (with input_max)", "input_max": "see input_min",
               "fallback_min": "range for every activation without a FakeQuant range (with fallback_max)",
               "fallback_max": "see fallback_min"},
              {GRAPHDEF: "shipyard.passes.graphdef_quantize:quantize_nodes"}, lossy=True),
    Transform("obfuscate_names", "replace node names by short meaningless ones (inputs and outputs keep theirs)",
              {}, {GRAPHDEF: f"{_G}:obfuscate_names", ONNX: f"{_O}:obfuscate_names"}),
    Transform("rename_op", "change the op type of every node of one type",
              {"old_op_name": "op type to rename", "new_op_name": "its new op type"}, {GRAPHDEF: f"{_G}:rename_op"}),
    Transform("fix_shapes", "make dynamic input dimensions fixed: fix_shapes(INPUT=\"1,3,224,224\") or fix_shapes(shape=...)",
              {"INPUT": "an input name, its value the shape", "shape": "shape for the only input"},
              {ONNX: f"{_O}:fix_shapes"}, any_params=True),
    Transform("float16", "convert float32 weights and compute to float16 (inputs/outputs stay float32)",
              {"keep_io_types": "true (default): inputs and outputs stay float32"}, {ONNX: f"{_O}:float16"}, lossy=True),
    Transform("lift_constants", "move Constant-node tensors into initializers (Paddle-style exports)",
              {}, {ONNX: f"{_O}:lift_constants"}),
    Transform("slim", "onnxslim's whole pipeline: constant folding, dead code, fusions", {}, {ONNX: f"{_O}:slim"}),
    Transform("ort_optimize", "onnxruntime's offline graph optimization",
              {"level": "basic (default) or extended; extended output runs only on onnxruntime's CPU provider"},
              {ONNX: f"{_O}:ort_optimize"}),
]}


def transform(name: str, fmt: str) -> Transform:
    """The transform called ``name`` for format ``fmt``, or a UsageError listing the valid ones."""
    t = TRANSFORMS.get(name)
    valid = [n for n, t2 in TRANSFORMS.items() if fmt in t2.impl]
    if t is None:
        from shipyard.cliargs import did_you_mean

        raise UsageError(f"unknown transform '{name}'{did_you_mean(name, TRANSFORMS)}",
                         hint="valid transforms for " + fmt + ": " + ", ".join(valid))
    if fmt not in t.impl:
        raise UsageError(f"transform '{name}' does not apply to {fmt} models",
                         hint="valid transforms for " + fmt + ": " + ", ".join(valid))
    return t


def check_step(step: Step, fmt: str) -> Transform:
    """Resolve a parsed step and reject parameters the transform does not take."""
    t = transform(step.name, fmt)
    if not t.any_params:
        unknown = sorted(set(step.params) - set(t.params))
        if unknown:
            takes = ", ".join(t.params) or "no parameters"
            raise UsageError(f"transform '{step.name}' has no parameter '{unknown[0]}'", hint=f"it takes: {takes}")
    params = Params(step)
    for key in step.params:  # typed values are checked before any model is loaded
        kind = _PARAM_TYPES.get(key)
        if kind == "bool":
            params.bool(key, False)
        elif kind == "int":
            params.int(key, 1, minimum=2 if key == "num_steps" else 1)
        elif kind == "shape":
            params.shape(key)
    return t


_PARAM_TYPES = {"ignore_errors": "bool", "keep_io_types": "bool", "num_steps": "int", "minimum_size": "int",
                "shape": "shape"}


class Params:
    """Typed access to a step's parameters, with errors naming the transform and parameter."""

    def __init__(self, step: Step):
        self.step = step

    def strs(self, key: str) -> list[str]:
        return list(self.step.params.get(key, []))

    def str(self, key: str, default: str | None = None) -> str | None:
        values = self.step.params.get(key)
        return values[-1] if values else default

    def int(self, key: str, default: int, minimum: int = 1) -> int:
        raw = self.str(key)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise self.bad(key, raw, "an integer") from None
        if value < minimum:
            raise self.bad(key, raw, f"an integer >= {minimum}")
        return value

    def bool(self, key: str, default: bool) -> bool:
        raw = self.str(key)
        if raw is None:
            return default
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise self.bad(key, raw, "true or false")

    def shape(self, key: str, raw: str | None = None) -> tuple[int, ...] | None:
        raw = self.str(key) if raw is None else raw
        if raw is None:
            return None
        try:
            dims = tuple(int(d) for d in raw.replace("x", ",").split(",") if d.strip())
        except ValueError:
            raise self.bad(key, raw, "a comma-separated shape such as \"1,224,224,3\"") from None
        if not dims or any(d < 1 for d in dims):
            raise self.bad(key, raw, "a comma-separated shape of positive sizes")
        return dims

    def bad(self, key: str, raw: str, expected: str) -> UsageError:
        return UsageError(f"{self.step.name}({key}={raw}): expected {expected}")


def listing() -> list[dict]:
    """Every transform with its formats and parameters (for ``--list``)."""
    return [{"name": t.name, "formats": sorted(t.impl), "params": t.params, "description": t.description,
             "lossy": t.lossy} for t in TRANSFORMS.values()]
