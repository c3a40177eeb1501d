"""Terminal table of a shipped distribution: accuracy and latency per artifact, with ratios."""
from __future__ import annotations

from pathlib import Path

from shipyard.report.numbers import error, percent
from shipyard.report.numbers import size as human_bytes


def rows(manifest) -> list[dict]:
    """One row per artifact. Latency ratios are against the float artifact of the same format
    (so int8 ONNX is compared with float ONNX on the same engine), accuracy against the reference."""
    ref = manifest.artifacts[0] if manifest.artifacts else None
    base_ms = ref.latency_ms["p50"] if ref and ref.latency_ms else None
    float_ms = {a.format: a.latency_ms["p50"] for a in manifest.artifacts if a.quantization == "float32" and a.latency_ms}
    base_acc = manifest.reference.get("accuracy")
    out = []
    for a in manifest.artifacts:
        p50 = a.latency_ms["p50"] if a.latency_ms else None
        out.append({
            "artifact": a.name, "format": a.format, "quantization": a.quantization, "size": a.size_bytes,
            "accuracy": a.accuracy, "accuracy_delta": (a.accuracy - base_acc) if a.accuracy is not None and base_acc is not None else None,
            "top1_agreement": a.worst("argmax_agreement"), "max_abs": a.worst("max_abs", max),
            "p50_ms": p50,
            "latency_ratio": p50 / float_ms.get(a.format, base_ms) if p50 and float_ms.get(a.format, base_ms) else None,
        })
    return out


def render_manifest(manifest, out_dir: Path) -> str:
    acc = manifest.reference.get("accuracy")
    lines = [f"shipped {manifest.source['path']} ({manifest.source['format']}) -> {out_dir}/",
             f"reference: {manifest.reference.get('model')}, {manifest.reference.get('samples')} samples"
             + (f", accuracy {percent(acc)}" if acc is not None else " (no labels: agreement with the reference only)"),
             "",
             f"{'artifact':<14} {'quant':<22} {'size':>9} {'accuracy':>9} {'top-1 agr':>9} {'max |err|':>10} {'p50 ms':>8} {'x float':>8}"]
    for r in rows(manifest):
        fmt = lambda v, spec: "-" if v is None else format(v, spec)
        lines.append(f"{r['artifact']:<14} {r['quantization'][:22]:<22} {human_bytes(r['size']):>9} {percent(r['accuracy']):>9} "
                     f"{percent(r['top1_agreement']):>9} {error(r['max_abs']):>10} {fmt(r['p50_ms'], '.3f'):>8} "
                     f"{fmt(r['latency_ratio'], '.2f'):>8}")
    for a in manifest.rejected:
        lines.append(f"{a.name:<14} NOT SHIPPED: missed the accuracy budget ({'; '.join(a.failures)})")
    for a in manifest.artifacts:
        if a.status == "degraded":
            lines.append(f"{a.name:<14} shipped with --allow-degraded although it missed the budget ({'; '.join(a.failures)})")
    if manifest.optimize:
        from shipyard.ship.optimize import render as render_optimize

        lines += ["", *render_optimize(manifest.optimize)]
    lines += ["", f"manifest: {out_dir}/manifest.json   report: {out_dir}/report.html   serving repository: {out_dir}/serving/"]
    return "\n".join(lines)
