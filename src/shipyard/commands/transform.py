"""`shipyard transform`: TF's graph transform tool, without bazel, for GraphDef and ONNX."""
from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("transform", help="rewrite a GraphDef or ONNX model with graph_transforms-style passes")
    p.add_argument("model", nargs="?")
    p.add_argument("--transforms", "-t", metavar="SPEC",
                   help="e.g. 'strip_unused_nodes(type=float, shape=\"1,224,224,3\") fold_constants(ignore_errors=true) fold_batch_norms'")
    p.add_argument("-o", "--output", help="where to write the transformed model (.pbtxt writes a text GraphDef)")
    from shipyard.cliargs import add_nodes

    add_nodes(p, "input", "input node names, comma-separated (default: detected)", "transform", old="--inputs")
    add_nodes(p, "output", "output node names, comma-separated (default: detected)", "transform", old="--outputs")
    p.add_argument("--list", action="store_true", help="list every transform with its parameters")
    p.add_argument("--no-verify", action="store_true", help="skip running both models to compare them")
    p.add_argument("--force", action="store_true", help="write the result even if verification fails")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_transform)


def cmd_transform(args) -> int:
    from shipyard.errors import UsageError
    from shipyard.passes.registry import listing

    if args.list:
        items = listing()
        if args.json:
            print(json.dumps(items, indent=2))
        else:
            print(render_listing(items))
        return 0
    if not args.model or not args.transforms or not args.output:
        raise UsageError("transform needs MODEL, --transforms SPEC and -o OUT",
                         hint="shipyard transform --list shows the transforms")
    from shipyard.passes.pipeline import check_inputs_outputs, transform_model

    result = transform_model(args.model, args.transforms, args.output, check_inputs_outputs(args.input_nodes),
                             check_inputs_outputs(args.output_nodes), verify=not args.no_verify, force=args.force)
    if args.json:
        print(json.dumps(result.to_json(), indent=2, default=str))
    else:
        print(render_result(result))
    return 0


def render_listing(items: list[dict]) -> str:
    from shipyard.formats import registry

    lines = []
    for t in items:
        fmts = ", ".join(registry.get(f).word for f in t["formats"])
        lines.append(f"{t['name']:<24} [{fmts}]  {t['description']}")
        for name, what in t["params"].items():
            lines.append(f"    {name}: {what}")
    return "\n".join(lines)


def render_result(r) -> str:
    from shipyard.report.numbers import error, percent
    from shipyard.report.text import human_bytes

    b, a = r.before, r.after
    lines = [f"{r.source} -> {r.output} ({r.format})"]
    for s in r.steps:
        lines.append(f"  {s['transform']:<60} {s['seconds']:.2f} s")
    lines.append(f"  nodes   {b['nodes']} -> {a['nodes']}")
    ratio = a["size_bytes"] / b["size_bytes"] if b["size_bytes"] else 0
    lines.append(f"  size    {human_bytes(b['size_bytes'])} -> {human_bytes(a['size_bytes'])} ({ratio:.2f}x)")
    for note in r.notes:
        lines.append(f"  note    {note}")
    for d in r.verification:
        agree = f", top-1 agreement {percent(d['argmax_agreement'])}" if d.get("argmax_agreement") is not None else ""
        lines.append(f"  verify  {d['name']}: max abs {error(d['max_abs'])}, mean abs {error(d['mean_abs'])}, "
                     f"cosine {d['cosine']:.6f}{agree}")
    if r.verified is not None:
        lines.append("  result  " + ("matches the original" if r.verified else "DOES NOT match the original (--force)"))
    return "\n".join(lines)
