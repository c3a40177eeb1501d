"""Layer-wise localisation: the first intermediate tensor where two models diverge.

Tensors are matched by name where names survive conversion, else by graph position (when
both graphs expose the same number of tensors). They are then streamed in execution order,
``chunk`` pairs per run: only one chunk of intermediates is ever in memory, unlike "mark
every tensor as an output" (Polygraphy's ``mark all``), which holds them all at once and runs
out of memory on large models. The scan stops at the first pair beyond tolerance.

An int8/uint8 tensor (a quantized TFLite or ONNX model) is dequantized with the scale and zero
point its engine reports before any figure is computed, so a float model and its int8 version
are compared in real values; each line shows the relative error (``rel_l2``) beside the cosine,
since a tensor off by a constant factor keeps a cosine of 1.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from shipyard.compare import Tolerance, model_feeds
from shipyard.dump import real_values
from shipyard.errors import UnsupportedError
from shipyard.model import tensor_name
from shipyard.runtimes.base import TensorInfo
from shipyard.verify import OutputDiff, Pair, adapt_feeds, diff, name_key, restore_layout


@dataclass
class LayerResult:
    pair: Pair
    op: str
    diff: OutputDiff
    dequantized: str = ""  # "", "reference", "other" or "both": whose int8 values were dequantized


@dataclass
class Localization:
    reference: str
    other: str
    matched: int
    checked: list[LayerResult] = field(default_factory=list)
    runs: int = 0

    @property
    def first_divergent(self) -> LayerResult | None:
        return next((r for r in self.checked if not r.diff.passed), None)

    @property
    def passed(self) -> bool:
        return self.first_divergent is None

    def to_json(self) -> dict:
        first = self.first_divergent
        return {
            "passed": self.passed,
            "reference": self.reference, "other": self.other,
            "matched_tensors": self.matched, "checked_tensors": len(self.checked), "runs": self.runs,
            "first_divergent": None if first is None else {
                "tensor": first.pair.ref, "other_tensor": first.pair.other, "op": first.op,
                "matched_by": first.pair.how, "dequantized": first.dequantized or None, **first.diff.to_json()},
            "layers": [{"tensor": r.pair.ref, "other_tensor": r.pair.other, "op": r.op, "matched_by": r.pair.how,
                        "passed": r.diff.passed, "max_abs": r.diff.max_abs, "cosine": r.diff.cosine,
                        "rel_l2": _finite(r.diff.rel_l2), "dequantized": r.dequantized or None,
                        "snr_db": r.diff.snr_db if r.diff.snr_db is None or abs(r.diff.snr_db) != float("inf")
                        else str(r.diff.snr_db)} for r in self.checked],
        }

    def render(self) -> str:
        from shipyard.report.numbers import plural

        lines = [f"layer-wise: {self.reference} vs {self.other}",
                 f"  {plural(self.matched, 'tensor')} matched, {len(self.checked)} checked in {plural(self.runs, 'run')}"]
        for r in self.checked:
            mark = "ok  " if r.diff.passed else "DIFF"
            how = r.pair.how + (f", {_DEQUANTIZED[r.dequantized]}" if r.dequantized else "")
            lines.append(f"  {mark} {r.pair.ref} ({r.op}) <-> {r.pair.other} [{how}]  "
                         f"max_abs {r.diff.max_abs:.4g}  cosine {r.diff.cosine:.6f}  rel_l2 {_g(r.diff.rel_l2)}")
        first = self.first_divergent
        if first is None:
            lines.append("no divergence: every matched tensor is within tolerance")
        else:
            lines.append(f"first divergence at '{first.pair.ref}' (op {first.op}), "
                         f"other model's '{first.pair.other}': max_abs {first.diff.max_abs:.4g}  "
                         f"cosine {first.diff.cosine:.6f}  rel_l2 {_g(first.diff.rel_l2)}")
        return "\n".join(lines)


_DEQUANTIZED = {"reference": "reference dequantized", "other": "other dequantized", "both": "both dequantized"}


def _g(v) -> str:
    return "-" if v is None else f"{v:.4g}"


def _finite(v):
    return v if v is None or abs(v) != float("inf") else str(v)


# What onnxruntime's quantizer appends to the name of a tensor it quantized (QOperator, QDQ).
_QUANTIZED_SUFFIXES = ("_quantized", "_QuantizeLinear_Output")


def _quantized_key(name: str) -> str | None:
    """The key of the float tensor an ONNX quantizer's tensor stands for (None: not one of those)."""
    base = tensor_name(name)
    for suffix in _QUANTIZED_SUFFIXES:
        if base.endswith(suffix):
            return name_key(base.removesuffix(suffix))
    return None


def match_tensors(ref: list[TensorInfo], other: list[TensorInfo]) -> list[tuple[TensorInfo, Pair]]:
    """Pairs in the reference's execution order: by name, else by position.

    A float tensor ``X`` pairs with a quantized model's ``X_quantized`` (ONNX QOperator) or
    ``X_QuantizeLinear_Output`` (QDQ) when there is one: those hold the values the int8 model
    computes, while a QDQ model's own ``X`` is the float value before its Quantize/Dequantize
    pair (for a convolution whose ReLU the quantizer folded into the quantization range, the
    value before the ReLU).
    """
    by_key = {name_key(t.name): t for t in other}
    for t in other:
        key = _quantized_key(t.name)
        if key is not None:
            by_key[key] = t
    named: list[tuple[TensorInfo, Pair]] = []
    used: set[str] = set()
    for t in ref:
        match = by_key.get(_quantized_key(t.name) or name_key(t.name))
        if match is not None and match.name not in used:
            used.add(match.name)
            named.append((t, Pair(t.name, match.name, "name")))
    if named:
        return named
    if len(ref) == len(other):
        return [(a, Pair(a.name, b.name, "position")) for a, b in zip(ref, other)]
    raise UnsupportedError(
        f"the two models share no tensor names and expose different numbers of tensors ({len(ref)} vs {len(other)})",
        hint="compare models whose tensor names survived conversion, or dump both and compare chosen tensors",
    )


def localize(ref_path: str | Path, other_path: str | Path, backends: list | None = None,
             inputs: list[str] | None = None, seed: int = 0, batch: int = 1,
             atol: Tolerance | None = None, rtol: Tolerance | None = None,
             chunk: int = 16, threads: int | None = None, shapes: dict | None = None,
             mapping: dict | None = None) -> Localization:
    """Stream matched tensors in chunks and stop at the first chunk holding a divergence."""
    backends = backends or [None, None]
    atol = atol or Tolerance(1e-4)
    rtol = rtol or Tolerance(1e-3)
    chunk = max(1, chunk)
    from shipyard.runtimes import open_runner

    with open_runner(ref_path, backends[0], threads, intermediates=True) as a, \
            open_runner(other_path, backends[1], threads, intermediates=True) as b:
        feeds_a = model_feeds(a.signature, inputs, seed, batch, shapes, mapping)
        feeds_b = adapt_feeds(feeds_a, a.signature, b.signature)
        pairs = match_tensors(a.tensors(), b.tensors())
        known = [t.name for t in a.tensors()] + [s.name for s in a.signature.outputs]
        atol.check(known, "--atol")
        rtol.check(known, "--rtol")
        result = Localization(str(ref_path), str(other_path), len(pairs))
        for start in range(0, len(pairs), chunk):
            part = pairs[start:start + chunk]
            values_a = a.fetch(feeds_a, [p.ref for _, p in part])
            values_b = b.fetch(feeds_b, [p.other for _, p in part])
            result.runs += 1
            # int8/uint8 tensors as real values (per-channel scales apply before any transpose)
            values_a, quant_a = real_values(a, values_a)
            values_b, quant_b = real_values(b, values_b)
            for info, pair in part:
                # converters move activations between NHWC (TF, TFLite) and NCHW (ONNX, torch)
                ref_value = values_a[pair.ref]
                other_value = restore_layout(ref_value, values_b[pair.other])
                d = diff(pair.ref, ref_value, other_value, atol.get(pair.ref), rtol.get(pair.ref))
                which = {(True, True): "both", (True, False): "reference", (False, True): "other"}.get(
                    (pair.ref in quant_a, pair.other in quant_b), "")
                result.checked.append(LayerResult(pair, info.op, d, which))
            del values_a, values_b
            if not result.passed:
                break
        return result
