"""Terminal rendering of inspect and run results (plain text, no dependency)."""
from __future__ import annotations

import numpy as np

from shipyard.report import numbers
from shipyard.summary import Summary

# The one home of number formatting is report/numbers.py; these names stay for their callers.
human_bytes = numbers.size
human_count = numbers.count


def _shape(shape) -> str:
    return "?" if shape is None else "[" + ", ".join(str(d) for d in shape) + "]"


def render_summary(s: Summary) -> str:
    lines = [f"{s.path}", f"  format     {s.format}" + (f" ({s.version})" if s.version else "")]
    if s.producer:
        lines.append(f"  producer   {s.producer}")
    lines.append(f"  size       {human_bytes(s.size_bytes)}")
    for title, specs in (("inputs", s.inputs), ("outputs", s.outputs)):
        lines.append(f"  {title:<10} {len(specs)}")
        width = max((len(t.name) for t in specs), default=0)
        for t in specs:
            lines.append(f"    {t.name:<{width}}  {t.dtype:<8} {_shape(t.shape)}")
    per_dtype = ", ".join(f"{k} {human_bytes(v)}" for k, v in s.param_bytes.items())
    lines.append(f"  params     {s.params:,}" + (f"  ({per_dtype})" if per_dtype else ""))
    flops = human_count(s.flops)
    if s.flops is not None:
        top = ", ".join(f"{k} {human_count(v)}" for k, v in list(s.flops_by_op.items())[:5])
        flops += f" FLOPs per sample ({top})" if top else " FLOPs per sample"
    elif s.details.get("flops_unavailable"):
        flops += f" ({s.details['flops_unavailable']})"
    lines.append(f"  flops      {flops}")
    uncounted = s.details.get("flops_uncounted_ops")
    if uncounted:
        lines.append("             not counted: " + ", ".join(f"{k} x{v}" for k, v in uncounted.items()))
    lines.append(f"  ops        {numbers.plural(s.node_count, 'node')}, {numbers.plural(len(s.ops), 'type')}")
    items = [f"{op} {n}" for op, n in s.ops.items()]
    for i in range(0, len(items), 6):
        lines.append("    " + ", ".join(items[i : i + 6]))
    for key in ("control_edges", "devices", "saver", "signatures", "signature_keys", "custom_ops"):
        if s.details.get(key):
            lines.append(f"  {key.replace('_', ' '):<10} {s.details[key]}")
    for key, value in s.metadata.items():
        lines.append(f"  meta       {key}: {str(value)[:80]}")
    lines += _tensor_table(s.details.get("tensors"), s.details.get("saved_on"))
    return "\n".join(lines)


def _tensor_table(tensors: list[dict] | None, saved_on: str | None) -> list[str]:
    """The tensors of a weights-only file (a torch checkpoint): name, shape, dtype, device, size."""
    if not tensors:
        return []
    lines = [f"  tensors    {len(tensors)}" + (f"  (saved on {saved_on})" if saved_on else "")]
    width = min(max(len(t["name"]) for t in tensors), 48)
    for t in tensors:
        lines.append(f"    {t['name']:<{width}}  {t['dtype']:<9} {_shape(t['shape']):<16} {t['device']:<8} "
                     f"{t['numel']:>12,}  {human_bytes(t['bytes'])}")
    return lines


def array_stats(value: np.ndarray) -> dict:
    stats = {"shape": list(value.shape), "dtype": value.dtype.name}
    if value.size and value.dtype.kind in "fiub":
        v = value.astype(np.float64)
        finite = np.isfinite(v)
        stats.update(
            min=float(np.min(v)), max=float(np.max(v)), mean=float(np.mean(v)), std=float(np.std(v)),
            nonfinite=int((~finite).sum()),
        )
        if value.ndim == 2 and value.shape[-1] > 1:
            stats["argmax"] = [int(i) for i in value.argmax(-1)[:8]]
    return stats


def render_outputs(outputs: dict[str, dict], backend: str, latency_ms: float) -> str:
    lines = [f"backend {backend}, {latency_ms:.2f} ms"]
    width = max((len(n) for n in outputs), default=0)
    for name, st in outputs.items():
        line = f"  {name:<{width}}  {st['dtype']:<8} {_shape(st['shape'])}"
        if "min" in st:
            line += f"  min {st['min']:.6g}  max {st['max']:.6g}  mean {st['mean']:.6g}  std {st['std']:.6g}"
        if st.get("nonfinite"):
            line += f"  NaN/Inf: {st['nonfinite']}"
        if "argmax" in st:
            line += f"  argmax {st['argmax']}"
        lines.append(line)
    return "\n".join(lines)


def render_verification(result) -> str:
    """Conversion path, notes and the per-output error figures against the source."""
    lines = [f"{result.source.path} ({result.source.format}) -> {result.artifact.path} ({result.artifact.format})",
             f"  path       {' -> '.join(result.path)}  ({result.seconds:.1f} s)"]
    skipped = [n.removeprefix("not verified: ") for n in result.notes if n.startswith("not verified: ")]
    lines += [f"  fixed      {note}" for note in result.notes if not note.startswith("not verified: ")]
    v = result.verification
    if v is None:
        lines.append(f"  verified   no ({skipped[0] if skipped else '--no-verify'})")
        return "\n".join(lines)
    lines.append(f"  verified   {numbers.verdict(v.passed, ok='yes', bad='NO')} against the source on the same inputs")
    for p, d in zip(v.pairing, v.outputs):
        agree = f"  top-1 agreement {numbers.percent(d.argmax_agreement)}" if d.argmax_agreement is not None else ""
        lines.append(f"    {p.ref} ~ {p.other}: max abs {numbers.error(d.max_abs)}  max rel {numbers.error(d.max_rel)}  "
                     f"cosine {d.cosine:.7f}{agree}{'' if d.passed else '  ' + numbers.paint('OUT OF TOLERANCE', 'fail')}")
    return "\n".join(lines)
