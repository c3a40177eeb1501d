"""`shipyard bench`: latency percentiles, throughput, memory, FLOP rate and per-op time,
for several models, backends, thread counts and batch sizes side by side."""
from __future__ import annotations

import json
from pathlib import Path


def _ints(text: str | None, flag: str) -> list[int | None]:
    from shipyard.errors import UsageError

    if not text:
        return [None]
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError as exc:
        raise UsageError(f"{flag} {text!r}: expected comma-separated integers, e.g. {flag} 1,2") from exc
    if any(v < 1 for v in values):
        raise UsageError(f"{flag} {text!r}: values must be at least 1")
    return values


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmark latency, throughput, memory and per-op time")
    p.add_argument("models", nargs="+", metavar="MODEL")
    p.add_argument("--backend", help="comma-separated backends to run every model on (default: each format's own)")
    p.add_argument("--threads", help="comma-separated intra-op thread counts, e.g. 1,2")
    p.add_argument("--batch", help="comma-separated batch sizes for the dynamic batch dimension, e.g. 1,8")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--map", action="append", default=[], metavar="FEATURE=INPUT",
                   help="TFRecord inputs: feed this Example feature to this model input")
    p.add_argument("--inputs", "--input", "-i", action="append", default=[], metavar="DATA",
                   help="inputs: FILE.npz, NAME=FILE.npy or FILE.npy (default: random)")
    p.add_argument("--shape", action="append", default=[], metavar="NAME=D0,D1,..",
                   help="shape for a generated input whose shape is dynamic or unknown (TorchScript)")
    p.add_argument("--profile", action="store_true", help="per-op time from the engine's profiler")
    p.add_argument("--html", type=Path, help="write a self-contained HTML report here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)


def render(results, ratios) -> str:
    from shipyard.report.text import human_bytes, human_count

    head = (f"{'config':<42} {'min':>8} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8} {'mean':>8} {'/s':>8} "
            f"{'FLOP/run':>9} {'GFLOP/s':>8} {'RSS':>9} {'ratio':>6}")
    # FLOPs belong to each row: models differ, and a batch-8 run does 8x a sample's work
    lines = ["latency in ms; FLOP/run = the model's FLOPs per sample x the batch", head]
    for r, ratio in zip(results, ratios):
        lat = r.latency_ms
        gf = f"{r.gflops_per_s:.2f}" if r.gflops_per_s else "-"
        lines.append(f"{r.label[:42]:<42} {lat['min']:>8.3f} {lat['p50']:>8.3f} {lat['p90']:>8.3f} {lat['p99']:>8.3f} "
                     f"{lat['max']:>8.3f} {lat['mean']:>8.3f} {r.throughput_per_s:>8.1f} "
                     f"{human_count(r.flops) if r.flops else '-':>9} {gf:>8} "
                     f"{human_bytes(r.peak_rss_bytes):>9} {ratio:>6.2f}")
    for r in results:
        if r.profile:
            lines.append(f"\nper-op time, {r.label} (ms per run, sorted by time)")
            width = max(32, *(len(row.op) for row in r.profile[:25]))
            for row in r.profile[:25]:
                lines.append(f"  {row.op:<{width}} {row.total_ms:>9.3f} ms  {row.calls:>4} calls  {row.share * 100:5.1f}%")
        elif r.profile_note:
            lines.append(f"\nper-op time, {r.label}: unavailable ({r.profile_note})")
    return "\n".join(lines)


def cmd_bench(args) -> int:
    from shipyard.atomic import check_output_path
    from shipyard.bench import BenchConfig, bench, ratios
    from shipyard.errors import UsageError
    from shipyard.feeds import parse_mapping, parse_shapes

    if args.runs < 1 or args.warmup < 0:
        raise UsageError("--runs must be at least 1 and --warmup at least 0")
    html = check_output_path(args.html, *map(Path, args.models)) if args.html else None
    backends = [b.strip() for b in args.backend.split(",")] if args.backend else [None]
    configs = [BenchConfig(m, b, t, n or 1) for m in args.models for b in backends
               for t in _ints(args.threads, "--threads") for n in _ints(args.batch, "--batch")]
    results = bench(configs, runs=args.runs, warmup=args.warmup, profile=args.profile, inputs=args.inputs,
                    shapes=parse_shapes(args.shape), mapping=parse_mapping(args.map))
    rel = ratios(results)
    if html:
        from shipyard.report.html import bench_page, write_page

        write_page(html, bench_page(results, rel))
    if args.json:
        doc = [{**r.to_json(), "ratio_p50": q} for r, q in zip(results, rel)]
        print(json.dumps(doc[0] if len(doc) == 1 else {"results": doc}, indent=2))
    else:
        print(render(results, rel))
        if html:
            print(f"report written to {html}")
    return 0
