"""Self-contained HTML reports for ``bench --html`` and ``compare --html``.

Plots are drawn by matplotlib (Agg, no display) as inline SVG, so a page is one file with
no scripts, fonts or images fetched from anywhere: it opens offline and can be attached to
a bug report.
"""
from __future__ import annotations

import html
import io
import math
from pathlib import Path

from shipyard.deps import require

_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f0f3f8}td:first-child,th:first-child{text-align:left}.fail{color:#b00020;font-weight:bold}
.ok{color:#0a7d2c;font-weight:bold}figure{margin:1em 0}"""


def _pyplot():
    require("matplotlib", "Drawing the HTML report's plots")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    _pyplot().close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE: the SVG is inlined


def _page(title: str, body: list[str]) -> str:
    return ("<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>" + "\n".join(body) + "</body></html>")


def _table(header: list[str], rows: list[list]) -> str:
    from shipyard.report.numbers import figure

    def cell(v):
        if isinstance(v, float):
            return figure(v)  # the one number style: 13630, not 1.363e+04
        return html.escape(str(v)) if v is not None else "-"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_page(path: Path, text: str) -> None:
    from shipyard.atomic import atomic_path

    with atomic_path(Path(path)) as tmp:
        tmp.write_text(text, encoding="utf-8")


# -- bench -------------------------------------------------------------------------------


def bench_page(results, ratios) -> str:
    plt = _pyplot()
    from shipyard.report.numbers import count, size

    rows = [[r.label, *(r.latency_ms[k] for k in ("min", "p50", "p90", "p99", "max", "mean")),
             r.throughput_per_s, count(r.flops) if r.flops else None, r.gflops_per_s, size(r.peak_rss_bytes), q]
            for r, q in zip(results, ratios)]
    body = ["<h2>Latency (ms)</h2>", _table(["config", "min", "p50", "p90", "p99", "max", "mean", "per s",
                                             "FLOP/run", "GFLOP/s", "peak RSS", "p50 ratio"], rows)]
    measured = [r for r in results if r.samples_ms]
    if measured:  # one box per configuration: outliers stay visible without hiding the others
        fig, ax = plt.subplots(figsize=(8, 0.55 * len(measured) + 1.4))
        ax.boxplot([r.samples_ms for r in measured], vert=False, whis=(1, 99), widths=0.5,
                   flierprops={"markersize": 2, "alpha": 0.5}, medianprops={"color": "#222"})
        ax.set_yticks(range(1, len(measured) + 1), [r.label for r in measured], fontsize=7)
        ax.invert_yaxis()  # the first configuration on top, as in the table
        for i, r in enumerate(measured, start=1):
            ax.plot(r.latency_ms["p99"], i, marker="|", markersize=14, color="#c44e52")
        ax.plot([], [], marker="|", linestyle="", color="#c44e52", label="p99")
        ax.plot([], [], color="#222", label="p50 (box: p25-p75, whiskers: p1-p99)")
        spread = max(r.latency_ms["max"] for r in measured) / max(min(r.latency_ms["min"] for r in measured), 1e-9)
        if spread > 20:  # configurations an order of magnitude apart: a linear axis squeezes the fast ones
            ax.set_xscale("log")
        else:
            ax.set_xlim(left=0)
        ax.set_xlabel("latency (ms)" + (", log axis" if spread > 20 else ""))
        ax.legend(fontsize=7, loc="lower right")
        body += ["<h2>Latency per configuration</h2>", f"<figure>{_svg(fig)}</figure>"]
    for r in results:
        if r.profile:
            top = r.profile[:20][::-1]
            fig, ax = plt.subplots(figsize=(8, 0.3 * len(top) + 1))
            ax.barh([p.op for p in top], [p.total_ms for p in top], color="#4c72b0")
            ax.set_xlabel("ms per run")
            body += [f"<h2>Per-op time: {html.escape(r.label)}</h2>", f"<figure>{_svg(fig)}</figure>",
                     _table(["op", "ms per run", "calls", "share %"],
                            [[p.op, p.total_ms, p.calls, p.share * 100] for p in r.profile])]
        elif r.profile_note:
            body.append(f"<p>Per-op time for {html.escape(r.label)}: {html.escape(r.profile_note)}</p>")
    return _page("shipyard bench", body)


# -- compare -----------------------------------------------------------------------------


def _finite(v):
    return v if isinstance(v, (int, float)) and v is not None and math.isfinite(v) else None


def compare_page(result) -> str:
    from shipyard.report.numbers import error, percent

    plt = _pyplot()
    verdict = "<p class='ok'>PASS</p>" if result.passed else "<p class='fail'>FAIL</p>"
    body = [f"<p>reference {html.escape(result.reference)} ({result.reference_backend})</p>", verdict]
    for c in result.candidates:
        rows = [[f"{p.ref} / {p.other} ({p.how})", "ok" if d.passed else "FAIL", error(d.max_abs), error(d.mean_abs),
                 error(d.max_rel), d.cosine, _finite(d.snr_db), percent(d.argmax_agreement), percent(d.topk_agreement),
                 d.nonfinite]
                for p, d in zip(c.pairs, c.diffs)]
        body += [f"<h2>{html.escape(c.path)} ({c.backend})</h2>",
                 _table(["output pair", "verdict", "max abs", "mean abs", "max rel", "cosine", "SNR dB",
                         "argmax", "top-5", "NaN/Inf"], rows)]
        for p, d in zip(c.pairs, c.diffs):
            body += _error_distribution(plt, p, d)
    return _page("shipyard compare", body)


def _error_distribution(plt, pair, d) -> list[str]:
    """One output pair: how its |error| spreads over decades against the tolerance, and the worst elements."""
    from shipyard.report.numbers import error, plural

    h = d.histogram or {}
    decades = sorted(h.get("decades", {}).items())
    labels = (["0"] if h.get("zero") else []) + [f"1e{e}" for e, _ in decades]
    counts = ([h["zero"]] if h.get("zero") else []) + [c for _, c in decades]
    title = f"<h3>{html.escape(pair.ref)} / {html.escape(pair.other)}</h3>"
    if not counts:
        return [title, "<p>no elements compared (shapes differ)</p>"]
    fig, ax = plt.subplots(figsize=(7, 2.6))
    bounds = ([(0.0, 0.0)] if h.get("zero") else []) + [(10.0 ** e, 10.0 ** (e + 1)) for e, _ in decades]
    atol = d.atol or 0.0
    ax.bar(range(len(counts)), counts, color=["#c44e52" if lo >= atol and hi > 0 else "#4c72b0" for lo, hi in bounds])
    ax.set_xticks(range(len(counts)), labels)
    ax.set_ylim(bottom=0)
    if atol > 0:  # the absolute tolerance: between the bars wholly below it, or through the decade holding it
        inside = [i for i, (lo, hi) in enumerate(bounds) if 0 < lo <= atol < hi]
        pos = (inside[0] - 0.5 + math.log10(atol / bounds[inside[0]][0]) if inside
               else sum(1 for _, hi in bounds if hi <= atol) - 0.5)  # within a decade: by its log position
        ax.axvline(pos, color="#222", linestyle="--", zorder=3, label=f"atol {atol:g} (+ rtol {d.rtol:g}·|ref|)")
        ax.legend(fontsize=7)
    ax.set_xlabel("|error| (decade of its lower bound)")
    ax.set_ylabel("elements")
    worst = _table(["index", "reference", "other", "|error|", "allowed"],
                   [[str(w["index"]), f"{w['ref']:.6g}", f"{w['other']:.6g}", error(w["abs_error"]), error(w["allowed"])]
                    for w in d.worst])
    verdict = (f"<p class='fail'>{d.outside} of {plural(d.size, 'element')} outside the tolerance</p>" if d.outside
               else f"<p class='ok'>all {plural(d.size, 'element')} within the tolerance</p>")
    return [title, verdict, f"<figure>{_svg(fig)}</figure>", "<p>largest errors</p>", worst]


def layerwise_page(loc) -> str:
    plt = _pyplot()
    first = loc.first_divergent
    head = (f"<p class='fail'>first divergence at {html.escape(first.pair.ref)} ({html.escape(first.op)})</p>"
            if first else "<p class='ok'>no divergence</p>")
    fig, ax = plt.subplots(figsize=(9, 3.5))
    errs = [max(r.diff.max_abs, 1e-30) if math.isfinite(r.diff.max_abs) else 1e30 for r in loc.checked]
    ax.semilogy(range(len(errs)), errs, marker="o", markersize=3)
    if first:
        ax.axvline(loc.checked.index(first), color="#c44e52", linestyle="--", label="first divergence")
        ax.legend(fontsize=7)
    ax.set_xlabel("tensor (execution order)")
    ax.set_ylabel("max absolute error")
    rows = [[r.pair.ref, r.op, r.pair.how, "ok" if r.diff.passed else "DIFF", r.diff.max_abs, r.diff.cosine]
            for r in loc.checked]
    from shipyard.report.numbers import plural

    body = [(f"<p>{html.escape(loc.reference)} vs {html.escape(loc.other)}: {plural(loc.matched, 'tensor')} matched, "
            f"{len(loc.checked)} checked in {plural(loc.runs, 'run')}</p>"), head, f"<figure>{_svg(fig)}</figure>",
            _table(["tensor", "op", "matched by", "verdict", "max abs", "cosine"], rows)]
    return _page("shipyard compare --layerwise", body)
