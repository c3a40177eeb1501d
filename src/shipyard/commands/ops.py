"""`shipyard ops`: the operators a mobile/minimal build must include for this model."""
from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("ops", help="list the ops a deployment needs (ORT config, TFLite ops, TF ops_to_register.h)")
    p.add_argument("model")
    p.add_argument("--for", dest="target", choices=["ort", "tflite", "tf"],
                   help="the runtime being built (default: from the model's format)")
    p.add_argument("-o", "--output", type=Path,
                   help="write the build file: ORT reduced-ops config, TFLite registration .cc, or ops_to_register.h")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ops)


def cmd_ops(args) -> int:
    from shipyard.atomic import atomic_path, check_output_path
    from shipyard.ops import list_ops

    out = check_output_path(args.output, Path(args.model)) if args.output else None
    report = list_ops(args.model, args.target)
    if out:
        with atomic_path(out) as tmp:
            tmp.write_text(report.file_text)
    if args.json:
        print(json.dumps({**report.to_json(), "output_file": str(out) if out else None}, indent=2))
        return 0
    print(f"{report.model}: ops for {report.target}")
    for group, names in report.ops.items():
        print(f"  {group} ({len(names)}): {', '.join(names) if names else '-'}")
    for key, value in report.details.items():
        if key != "versions":
            print(f"  {key}: {value}")
    if out:
        print(f"{report.file_kind} written to {out}")
    else:
        print(f"(write the {report.file_kind} with -o FILE)")
    return 0
