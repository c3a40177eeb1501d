"""Detector heads: concatenations of tensors whose ranges differ by orders of magnitude.

A YOLO-style detector ends in ``Concat(boxes in pixels 0..320, class scores 0..1)``. Quantized
with one int8 scale, the scores get less than one quantization step (320/255 = 1.25) and every
class score collapses to 0 or 1.25; no other node kept in float wins that back, so an accuracy
search spends hundreds of trials before it finds it, if it does. The calibration ranges show it
before any trial: such a Concat is kept float from the start (its inputs then keep their own
scales), and a model output it produces is judged part by part, since a cosine over the whole
output only sees the large part.

Why the parts are judged by cosine, not top-1 agreement: their last axis runs over anchors
(``[4 box rows | 18 class rows] x 2100 anchors``), so a row's argmax is which of the neighbouring
anchors on one object scores highest, not a class decision — a tie that quantization noise breaks
either way.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

MIXED_RANGE = 16.0  # inputs whose calibrated spans differ by more: the small one gets < 16 int8 levels


@dataclass
class MixedConcat:
    node: str
    output: str             # the tensor it produces
    axis: int               # non-negative
    spans: list[float]      # calibrated max - min of each input, in input order
    sizes: list[int] | None  # each input's extent along ``axis`` (None when a shape is unknown)

    @property
    def ratio(self) -> float:
        return max(self.spans) / max(min(self.spans), 1e-30)

    def to_json(self) -> dict:
        return {"node": self.node, "op": "Concat", "output": self.output, "axis": self.axis,
                "spans": [round(s, 6) for s in self.spans], "ratio": round(self.ratio, 1),
                "why": f"its inputs span {' and '.join(f'{s:.3g}' for s in self.spans)} ({self.ratio:.0f}x): one int8 "
                       f"scale would give the smallest {255 / self.ratio:.1f} levels"}


def calibration_ranges(model: Path, feeds: list[dict], method: str, cache: Path) -> dict[str, tuple[float, float]]:
    """Every calibrated tensor's (min, max), by onnxruntime's own calibrator, saved to ``cache``
    in the format its ``quantize_static`` reads back: the trials that follow calibrate no more."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    from shipyard.quantize.onnx_quant import calibrate_to_cache

    if not cache.exists():
        calibrate_to_cache(model, feeds, method, cache)
    out = {}
    for name, data in load_tensors_data(cache).data.items():
        try:
            lo, hi = data.range_value
        except AttributeError:
            continue
        out[name] = (float(np.min(lo)), float(np.max(hi)))
    return out


def mixed_range_concats(model: Path, ranges: dict[str, tuple[float, float]],
                        ratio: float = MIXED_RANGE) -> list[MixedConcat]:
    """The Concat nodes whose (calibrated, activation) inputs' spans differ by more than ``ratio``."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in [*graph.value_info, *graph.input, *graph.output]}
    found = []
    for node in graph.node:
        if node.op_type != "Concat" or not node.name or any(i not in ranges for i in node.input) or len(node.input) < 2:
            continue
        spans = [ranges[i][1] - ranges[i][0] for i in node.input]
        if min(spans) <= 0 or max(spans) / min(spans) <= ratio:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        rank = len(shapes.get(node.input[0], [])) or None
        if axis < 0 and rank:
            axis += rank
        sizes = [shapes.get(i, [None] * (axis + 1))[axis] if axis >= 0 and len(shapes.get(i, [])) > axis else None
                 for i in node.input]
        found.append(MixedConcat(node.name, node.output[0], axis, spans, None if None in sizes else sizes))
    return found


def output_parts(concats: list[MixedConcat], outputs: list[str]) -> dict[str, tuple[int, list[int]]]:
    """{model output: (axis, sizes)} for the outputs a mixed-range Concat produces directly."""
    return {c.output: (c.axis, c.sizes) for c in concats if c.output in outputs and c.sizes and c.axis >= 0}


def split(arrays: dict[str, np.ndarray], parts: dict[str, tuple[int, list[int]]]) -> tuple[dict, dict]:
    """(the outputs not split, the split ones as ``name[a:b]``, each part along its Concat's axis)."""
    whole, pieces = {}, {}
    for name, value in arrays.items():
        if name not in parts or np.ndim(value) <= parts[name][0]:
            whole[name] = value
            continue
        axis, sizes = parts[name]
        start = 0
        for size in sizes:
            pieces[f"{name}[{start}:{start + size}]"] = np.take(value, range(start, start + size), axis=axis)
            start += size
    return whole, pieces


def judge_parts(reference: dict, got: dict, budget, parts: dict[str, tuple[int, list[int]]]):
    """The verification core's verdict with each split output judged part by part: cosine
    against the budget for every part, top-1 agreement not (its rows run over anchors, see
    the module docstring); the other outputs as ``judge`` always does."""
    from dataclasses import replace

    from shipyard.verify import Verification, judge

    ref_whole, ref_parts = split(reference, parts)
    got_whole, got_parts = split(got, parts)
    budget.check_outputs([*ref_whole, *ref_parts])
    whole = judge(ref_whole, got_whole, budget, check_budget=False) if ref_whole else Verification(budget, [])
    cosine_only = replace(budget, min_agreement=0.0, kind="values",
                          outputs=tuple((n, replace(b, min_agreement=0.0, kind="values")) for n, b in budget.outputs))
    pieces = judge(ref_parts, got_parts, cosine_only, check_budget=False)
    for d in pieces.outputs:
        d.argmax_agreement = d.top1_agreement = d.topk_agreement = d.decision_agreement = None
        d.judged_by = "cosine: a part of a mixed-range Concat (its rows run over anchors, no decision to compare)"
    return Verification(budget, whole.outputs + pieces.outputs, whole.pairing + pieces.pairing,
                        whole.failures + pieces.failures, whole.accuracy, max(whole.samples, pieces.samples))
