"""``DIST/report.html``: the pipeline, the graph, and accuracy and latency per artifact.

Built on the self-contained page helpers of :mod:`shipyard.report.html` (inline SVG plots,
no external assets), so the report opens offline.
"""
from __future__ import annotations

import html

from shipyard.ship.render import rows


def _graph_svg(pipeline) -> str:
    """The reference model drawn with Graphviz, when the drawing tools are installed."""
    try:
        from shipyard.graph_view import overview, read_graph, render, to_dot

        graph, _, how = overview(read_graph(pipeline.reference), 60)
        text = render(to_dot(graph, pipeline.name + (f" (collapsed by {how})" if how else "")), "svg").decode("utf-8")
        return text[text.index("<svg"):]
    except Exception as exc:  # noqa: BLE001 -- drawing is optional: Graphviz missing, or a format it cannot draw
        return f"<p>(graph not drawn: {html.escape(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)})</p>"


def write_report(pipeline) -> None:
    from shipyard.report import numbers
    from shipyard.report.html import _page, _pyplot, _svg, _table, write_page

    manifest = pipeline.manifest
    table = rows(manifest)
    warnings = [f"<p class='fail'>warning: {html.escape(w)}</p>" for w in manifest.warnings]
    body = warnings + [(f"<p>Source <code>{html.escape(manifest.source['path'])}</code> ({manifest.source['format']}); "
            f"reference <code>{html.escape(str(manifest.reference.get('model')))}</code> on "
            f"{manifest.reference.get('samples')} samples of {html.escape(str(manifest.reference.get('data')))}.</p>"),
            "<h2>Pipeline</h2>",
            _table(["step", "status", "seconds"], [[s["step"], s["status"], s["seconds"]] for s in manifest.steps]),
            "<h2>Artifacts</h2>",
            _table(["artifact", "format", "quantization", "size", "accuracy", "top-1 agreement", "max |err|", "p50 ms", "x float"],
                   [[r["artifact"], r["format"], r["quantization"], numbers.size(r["size"]), numbers.percent(r["accuracy"]),
                     numbers.percent(r["top1_agreement"]), numbers.error(r["max_abs"]), r["p50_ms"], r["latency_ratio"]]
                    for r in table])]
    plt = _pyplot()
    names = [r["artifact"] for r in table]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    axes[0].barh(names, [r["p50_ms"] or 0 for r in table], color="#4c72b0")
    axes[0].set_xlabel("p50 latency (ms, batch 1)")
    axes[0].invert_yaxis()
    accuracy = [r["accuracy"] if r["accuracy"] is not None else (r["top1_agreement"] or 0) for r in table]
    bars = axes[1].barh(names, [a * 100 for a in accuracy], color="#55a868")
    axes[1].set_xlabel("accuracy (%)" if manifest.reference.get("labelled") else "top-1 agreement with the reference (%)")
    axes[1].set_xlim(0, 100)  # from zero: a zoomed axis made 95% look like 0; the labels carry the decimals
    axes[1].bar_label(bars, [numbers.percent(a) for a in accuracy], label_type="center", fontsize=8, color="white")
    axes[0].set_xlim(left=0)
    axes[1].invert_yaxis()
    if manifest.optimize:
        opt = manifest.optimize
        body += [f"<h2>Optimize for {opt['objective']} ({opt['threads']} thread(s))</h2>",
                 f"<p>{html.escape(opt['why'])}</p>",
                 _table(["", "artifact", "precision", "engine", "threads", "p50 ms", "per s", "size", "verdict"],
                        [["*" if c["chosen"] else "", c["artifact"], c["precision"], c["engine"], c["threads"], c["p50_ms"],
                          c["throughput_per_s"], numbers.size(c["size_bytes"]),
                          "chosen" if c["chosen"] else (c["reason"] or "ok")] for c in opt["candidates"]])]
    env = manifest.environment
    from shipyard.ship.sensitivity import html_section

    body += ["<h2>Accuracy and latency</h2>", f"<figure>{_svg(fig)}</figure>",
             *html_section([*manifest.artifacts, *manifest.rejected]),
             "<h2>Graph</h2>", _graph_svg(pipeline),
             "<h2>Environment</h2>",
             _table(["", ""], [["python", env.get("python")], ["platform", env.get("platform")], ["CPUs", env.get("cpus")],
                               *[[k, v] for k, v in env.get("packages", {}).items()]])]
    write_page(pipeline.out / "report.html", _page(f"shipyard ship: {pipeline.name}", body))
