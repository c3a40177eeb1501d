"""Which layers quantization hurts most, per quantized artifact: for ``manifest.json`` and
``report.html``.

Read from the quantization report (nothing is measured again here), best measure first:

- ``outputs``: the accuracy search's sensitivity *at the model's outputs* (when plain int8
  missed the budget): each node rebuilt alone in float, and the verification score it gives
  back -- the cost of quantizing that node, in the budget's own terms (worst output's cosine
  shortfall plus top-1 disagreement, plus accuracy points lost).
- ``layer-noise``: otherwise (int8 was inside the budget at once), the noise each layer adds:
  for onnxruntime the fall in signal-to-quantization-noise ratio across the layer (dB, from
  ``qdq_loss_debug``), for TFLite the RMSE of its output in quantization steps (LiteRT's
  quantization debugger).
"""
from __future__ import annotations

TOP = 10

MEASURES = {
    "outputs": ("score lost at the outputs", ("the verification score this node costs when quantized: the worst output's "
                "(1 - cosine) + top-1 disagreement (+ accuracy points lost), measured by keeping it alone in float")),
    "sqnr-drop": ("SQNR drop (dB)", ("how much the signal-to-quantization-noise ratio falls across this layer "
                  "(onnxruntime's qdq_loss_debug on the calibration data): the noise it adds")),
    "rmse-steps": ("RMSE (quantization steps)", ("the RMSE of the layer's int8 output against float, in steps of its "
                   "quantization scale (LiteRT's quantization debugger): the noise it adds")),
}


def from_report(report) -> dict | None:
    """The top nodes and what each costs, or None when the report measured no layer."""
    if report is None:
        return None
    search = report.search or {}
    kept = set((report.settings or {}).get("kept_float") or []) | {r["node"] for r in search.get("kept_float") or []}
    rows = [r for r in search.get("sensitivity") or [] if r.get("gain") is not None]
    if rows:
        nodes = [{"node": r["node"], "op": r["op"], "cost": float(r["gain"]), "kept_float": r["node"] in kept}
                 for r in sorted(rows, key=lambda r: -r["gain"])[:TOP]]
        return {"measure": "outputs", "unit": MEASURES["outputs"][0], "why": MEASURES["outputs"][1], "nodes": nodes}
    layers = report.layers or []
    if layers and "rmse_per_step" in layers[0]:
        nodes = [{"node": r["node"], "op": r["op"], "cost": float(r["rmse_per_step"]), "max_abs": r.get("max_abs"),
                  "kept_float": r["node"] in kept} for r in layers[:TOP]]
        return {"measure": "rmse-steps", "unit": MEASURES["rmse-steps"][0], "why": MEASURES["rmse-steps"][1],
                "nodes": nodes}
    if layers:
        nodes = [{"node": r["node"], "op": r["op"], "cost": float(r["drop_db"]) if r.get("drop_db") is not None else 0.0,
                  "sqnr_db": r.get("sqnr_db"), "kept_float": r["node"] in kept} for r in layers[:TOP]]
        return {"measure": "sqnr-drop", "unit": MEASURES["sqnr-drop"][0], "why": MEASURES["sqnr-drop"][1],
                "nodes": nodes}
    return None


def html_section(artifacts: list) -> list[str]:
    """``<h2>Quantization sensitivity</h2>``: per quantized artifact, its top nodes as a bar chart
    (axis from zero) and a table; empty when no artifact measured any."""
    import html

    from shipyard.report.html import _pyplot, _svg, _table
    from shipyard.report.numbers import figure

    measured = [a for a in artifacts if getattr(a, "sensitivity", None) and a.sensitivity.get("nodes")]
    if not measured:
        return []
    body = ["<h2>Quantization sensitivity</h2>",
            ("<p>The layers whose quantization costs the most, per quantized artifact, highest first. "
            "Keep one in float with <code>shipyard quantize --exclude NODE</code>.</p>")]
    plt = _pyplot()
    for art in measured:
        s = art.sensitivity
        nodes = s["nodes"]
        status = "" if art.status == "shipped" else f" ({art.status})"
        body.append(f"<h3>{html.escape(art.name)}{html.escape(status)}: {html.escape(s['unit'])}</h3>"
                    f"<p>{html.escape(s['why'][:1].upper() + s['why'][1:])}.</p>")
        labels = [_short(n["node"]) + (" (kept float)" if n["kept_float"] else "") for n in nodes]
        fig, ax = plt.subplots(figsize=(9, 0.35 * len(nodes) + 0.9))
        bars = ax.barh(labels, [max(0.0, n["cost"]) for n in nodes],  # a layer that lowers the noise: no bar
                       color=["#8c8c8c" if n["kept_float"] else "#c44e52" for n in nodes])
        ax.set_xlim(left=0)  # from zero: bar lengths compare
        ax.invert_yaxis()
        ax.set_xlabel(s["unit"])
        ax.bar_label(bars, [figure(n["cost"]) for n in nodes], padding=3, fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
        body.append(f"<figure>{_svg(fig)}</figure>")
        body.append(_table(["#", "node", "op", s["unit"], "kept in float"],
                           [[i + 1, n["node"], n["op"], n["cost"], "yes" if n["kept_float"] else "no"]
                            for i, n in enumerate(nodes)]))
    return body


def _short(name: str, width: int = 48) -> str:
    """A node name for an axis label: TFLite's fused names list every op they fused (``a;b;c``)."""
    name = name.split(";")[0] if ";" in name else name
    return name if len(name) <= width else "..." + name[-(width - 3):]
