"""The quantization report: size, latency and error of the quantized model against its float one."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field


@dataclass
class QuantizeReport:
    source: str
    output: str
    format: str
    mode: str
    settings: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    size_before: int = 0
    size_after: int = 0
    latency_before_ms: float | None = None
    latency_after_ms: float | None = None
    outputs: list[dict] = field(default_factory=list)
    accuracy: dict | None = None
    layers: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    budget: dict | None = None          # the accuracy budget it was judged by
    verification: dict | None = None    # the verification core's verdict (every output)
    search: dict | None = None          # the accuracy search: trials, sensitivities, nodes kept in float

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        d["size_ratio"] = self.size_after / self.size_before if self.size_before else None
        if self.latency_before_ms and self.latency_after_ms:
            d["speedup"] = self.latency_before_ms / self.latency_after_ms
        return d


def render(r: QuantizeReport) -> str:
    from shipyard.report.numbers import error, percent, plural
    from shipyard.report.text import human_bytes

    lines = [f"{r.source} -> {r.output}", f"  mode         {r.mode} ({r.format})"]
    lines.append("  settings     " + ", ".join(f"{k}={v}" for k, v in r.settings.items() if k != "why"))
    if r.settings.get("why"):
        lines.append(f"  why          {r.settings['why']}")
    c = r.calibration
    if c:
        lines.append(f"  calibration  {c.get('source')}, {plural(c.get('samples'), 'sample')}")
    ratio = r.size_after / r.size_before if r.size_before else 0
    lines.append(f"  size         {human_bytes(r.size_before)} -> {human_bytes(r.size_after)} ({ratio:.2f}x)")
    if r.latency_before_ms and r.latency_after_ms:
        lines.append(f"  latency      {r.latency_before_ms:.3f} ms -> {r.latency_after_ms:.3f} ms "
                     f"(speed-up {r.latency_before_ms / r.latency_after_ms:.2f}x, median, batch 1)")
    for d in r.outputs:
        agree = ""
        if d.get("argmax_agreement") is not None:
            agree = f", top-1 agreement {percent(d['argmax_agreement'])}"
            if d.get("top1_agreement") is not None and d["top1_agreement"] != d["argmax_agreement"]:
                agree += f" ({percent(d['top1_agreement'])} with near-ties forgiven)"
        if d.get("kind") == "probabilities" and d.get("decision_agreement") is not None:
            agree += (f", decisions at > {d['decision_threshold']:g} agree {percent(d['decision_agreement'])} "
                      f"(of {d['positives']} positive)")
        lines.append(f"  error        {d['name']}: max abs {error(d['max_abs'])}, mean abs {error(d['mean_abs'])}, "
                     f"cosine {d['cosine']:.5f}{agree}")
        if d.get("judged_by"):
            lines.append(f"  judged by    {d['judged_by']}")
    if r.accuracy:
        a = r.accuracy
        lines.append(f"  accuracy     float {percent(a['float'])} -> quantized {percent(a['quantized'])} "
                     f"({plural(a['samples'], 'labelled sample')})")
    if r.verification is not None:
        v = r.verification
        lines.append(f"  budget       {_budget_text(r.budget)}: "
                     + ("inside" if v["passed"] else "MISSED (" + "; ".join(v["failures"]) + ")"))
    if r.search:
        s = r.search
        took = f" in {s['seconds']:.1f} s" if s.get("seconds") is not None else ""
        stopped = {"time": " (stopped by its time box)", "trials": " (stopped at its trial limit)"}.get(s.get("stopped"), "")
        fallback = s.get("weights_fallback")
        instead = bool(fallback and fallback["met"])  # the written model is the weight-only one
        lines.append(f"  search       {len(s['trials'])} quantized model(s) tried{took}{stopped}; "
                     + ("chosen: " if s.get("met", True) else "closest: ")
                     + ", ".join(f"{k}={v}" for k, v in s["chosen"]["settings"].items() if k != "exclude"))
        for row in [] if instead else s.get("kept_from_start", []):
            lines.append(f"  kept float   {_short(row['node'])} (Concat, from the start: {row['why']})")
        for name, part in s.get("judged_in_parts", {}).items():
            bounds = [sum(part["sizes"][:i]) for i in range(len(part["sizes"]) + 1)]
            lines.append(f"  judged       {name} in parts along axis {part['axis']} ("
                         + ", ".join(f"[{a}:{b}]" for a, b in itertools.pairwise(bounds))
                         + "), each by cosine: its rows run over anchors, where top-1 agreement means nothing")
        if s["sensitivity"]:
            lines.append("  nodes whose quantization hurts the outputs most (score gained when kept float alone):")
            for row in s["sensitivity"][:5]:
                lines.append(f"    {_short(row['node']):<40} {row['op']:<17} {row['gain']:+.4f}")
        for row in [] if instead else s["kept_float"]:
            gain = f", score {row['gain']:+.4f} when kept" if row.get("gain") is not None else ", helps with the others"
            lines.append(f"  kept float   {_short(row['node'])} ({row['op']}{gain})")
        if fallback:
            kept = ", ".join(_short(r["node"]) for r in fallback["kept_float"]) or "none"
            lines.append(f"  fallback     int8 weights, float compute: {len(fallback['trials'])} model(s) tried in "
                         f"{fallback['seconds']:.1f} s, " + ("inside the budget" if fallback["met"] else
                                                            "missed too: " + fallback["chosen"]["summary"])
                         + f"; weights kept float: {kept}")
    if r.layers:
        lines.append("  layers adding the most quantization noise (keep one in float with --exclude NODE):")
        width = max(len(row["node"]) for row in r.layers)
        for row in r.layers:
            if "rmse_per_step" in row:
                lines.append(f"    {row['node'][:100]:<{min(width, 100)}}  {row['op']:<18} RMSE {row['rmse_per_step']:.2f} "
                             f"quantization steps, max abs error {row['max_abs']:.3g}")
                continue
            drop = f"drop {row['drop_db']:5.1f} dB" if row.get("drop_db") is not None else "first quantized layer"
            lines.append(f"    {row['node']:<{width}}  {row['op']:<18} SQNR {row['sqnr_db']:5.1f} dB  {drop}")
    for w in r.warnings:
        lines.append(f"  warning      {w}")
    return "\n".join(lines)


def _budget_text(b: dict | None) -> str:
    if not b:
        return "budget"
    from shipyard.report.numbers import percent

    text = (f"agreement >= {percent(b['min_agreement'])}, cosine >= {b['min_cosine']:g}, "
            f"accuracy drop <= {b['max_accuracy_drop'] * 100:g} pt")
    if b.get("output_kind", "auto") != "auto":
        text += f", every output judged as {b['output_kind']}"
    for name, o in (b.get("outputs") or {}).items():
        text += f"; {name}: agreement >= {percent(o['min_agreement'])}, cosine >= {o['min_cosine']:g}"
        if o.get("output_kind", "auto") != "auto":
            text += f", judged as {o['output_kind']}"
    return text


def _short(name: str, width: int = 60) -> str:
    """A node name for a terminal: TFLite's fused names list every op they fused (``a;b;c``)."""
    return name if len(name) <= width else name[: width - 3] + "..."
