"""`shipyard inspect`: inputs, outputs, ops, parameters and FLOPs of any model."""
from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("inspect", help="inputs, outputs, ops, parameters and FLOPs of a model")
    p.add_argument("model", help="model file or directory (any supported format)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_inspect)



def cmd_inspect(args) -> int:
    from shipyard.inspection import inspect_model
    from shipyard.report.text import render_summary

    summary = inspect_model(args.model)
    print(json.dumps(summary.to_json(), indent=2) if args.json else render_summary(summary))
    return 0
