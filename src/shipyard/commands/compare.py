"""`shipyard compare`: run models on the same inputs and say whether their outputs agree."""
from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("compare", help="compare the outputs of two or more models (or backends)")
    p.add_argument("models", nargs="+", help="reference model first, then the models to check against it")
    p.add_argument("--map", action="append", default=[], metavar="FEATURE=INPUT",
                   help="TFRecord inputs: feed this Example feature to this model input")
    from shipyard.cliargs import add_inputs, add_random

    add_inputs(p, "inputs: FILE.npz (keys are input names), NAME=FILE.npy or FILE.npy")
    add_random(p, "compare on N random samples (the dynamic batch dimension; the default, N: 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape", action="append", default=[], metavar="NAME=D0,D1,..",
                   help="shape for a generated input whose shape is dynamic or unknown (TorchScript)")
    p.add_argument("--backend", help="comma-separated backends, one per model (one model + two backends "
                                     "compares the same file on both)")
    p.add_argument("--atol", action="append", metavar="[OUTPUT:]X", help="absolute tolerance (default 1e-4); repeatable")
    p.add_argument("--rtol", action="append", metavar="[OUTPUT:]Y", help="relative tolerance (default 1e-3); repeatable")
    p.add_argument("--threads", type=int)
    p.add_argument("--layerwise", action="store_true",
                   help="find the first intermediate tensor where the first two models diverge")
    p.add_argument("--chunk", type=int, default=16,
                   help="with --layerwise: tensors fetched per run (bounds memory; default 16)")
    p.add_argument("--html", type=Path, help="write a self-contained HTML report here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_compare)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return f"{v:.4g}"


def _pct(v) -> str:
    from shipyard.report.numbers import percent

    return "-" if v is None else percent(v)


def _err(v) -> str:
    from shipyard.report.numbers import error

    return error(v)


def _failure_details(d) -> list[str]:
    """Where a failing pair fails: how many elements, the worst ones, and the |error| distribution."""
    from shipyard.report.numbers import error, plural

    lines = [f"    outside tolerance: {d.outside} of {plural(d.size, 'element')}"]
    for w in d.worst[:3]:
        verdict = ">" if not w["abs_error"] <= w["allowed"] else "<="
        lines.append(f"      at {w['index']}: ref {w['ref']:.6g}, got {w['other']:.6g}, |err| {error(w['abs_error'])} "
                     f"{verdict} allowed {error(w['allowed'])}")
    h = d.histogram
    parts = ([f"0: {h['zero']}"] if h.get("zero") else []) + [f"[1e{e:+03d},1e{e + 1:+03d}): {c}"
                                                           for e, c in sorted(h["decades"].items())]
    if h.get("nonfinite"):
        parts.append(f"nan/inf: {h['nonfinite']}")
    lines.append("    |err| by decade: " + ", ".join(parts))
    return lines


def render(result) -> str:
    from shipyard.report.numbers import verdict

    lines = [f"reference {result.reference} ({result.reference_backend})",
             "inputs " + ", ".join(f"{k}{v}" for k, v in result.inputs.items())]
    for cand in result.candidates:
        lines.append(f"vs {cand.path} ({cand.backend}): {verdict(cand.passed)}")
        for pair, d in zip(cand.pairs, cand.diffs):
            lines.append(f"  {pair.ref} <-> {pair.other} (by {pair.how})")
            lines.append(
                f"    {verdict(d.passed, ok='ok  ')} max_abs {_err(d.max_abs)}  mean_abs {_err(d.mean_abs)}  "
                f"max_rel {_err(d.max_rel)}  mean_rel {_err(d.mean_rel)}  cosine {_fmt(d.cosine)}  rel_l2 {_fmt(d.rel_l2)}  "
                f"snr {_fmt(d.snr_db)} dB  argmax {_pct(d.argmax_agreement)}  top5 {_pct(d.topk_agreement)}  "
                f"nan/inf {d.nonfinite_ref}/{d.nonfinite_other}  (atol {d.atol:g}, rtol {d.rtol:g})")
            if d.shape_ref != d.shape_other:
                lines.append(f"    shapes differ: {list(d.shape_ref)} vs {list(d.shape_other)}")
            elif d.outside:
                lines += _failure_details(d)
    lines.append(verdict(True) if result.passed else verdict(False) + ": " + ", ".join(
        f"{d.name} ({c.path})" for c in result.candidates for d in c.diffs if not d.passed))
    return "\n".join(lines)


def cmd_compare(args) -> int:
    from shipyard.atomic import check_output_path
    from shipyard.compare import Tolerance, compare_models
    from shipyard.errors import UsageError
    from shipyard.feeds import parse_mapping, parse_shapes

    models = list(args.models)
    backends = [b.strip() or None for b in args.backend.split(",")] if args.backend else None
    if backends and len(models) == 1:
        models = models * len(backends)
    if backends and len(backends) != len(models):
        raise UsageError(f"--backend names {len(backends)} backend(s) for {len(models)} model(s); give one per model")
    from shipyard.cliargs import check_inputs_or_random, data_items, random_size

    check_inputs_or_random(args)
    args.inputs, args.random = data_items(args), random_size(args)
    html = check_output_path(args.html, *map(Path, models)) if args.html else None
    atol = Tolerance.parse(args.atol, 1e-4, "--atol")
    rtol = Tolerance.parse(args.rtol, 1e-3, "--rtol")
    if args.layerwise:
        return _layerwise(args, models, backends, atol, rtol, html)
    result = compare_models(models, backends, args.inputs, args.seed, args.random or 1, atol, rtol, args.threads,
                            shapes=parse_shapes(args.shape), mapping=parse_mapping(args.map))
    if html:
        from shipyard.report.html import compare_page, write_page

        write_page(html, compare_page(result))
    print(json.dumps(result.to_json(), indent=2) if args.json else render(result))
    if html and not args.json:
        print(f"report written to {html}")
    return 0 if result.passed else 1


def _layerwise(args, models, backends, atol, rtol, html) -> int:
    from shipyard.feeds import parse_mapping, parse_shapes
    from shipyard.layerwise import localize

    if len(models) != 2:
        from shipyard.errors import UsageError

        raise UsageError("--layerwise compares exactly two models")
    result = localize(models[0], models[1], backends, args.inputs, args.seed, args.random or 1,
                      atol, rtol, chunk=args.chunk, threads=args.threads, shapes=parse_shapes(args.shape),
                      mapping=parse_mapping(args.map))
    if html:
        from shipyard.report.html import layerwise_page, write_page

        write_page(html, layerwise_page(result))
    print(json.dumps(result.to_json(), indent=2) if args.json else result.render())
    return 0 if result.passed else 1
