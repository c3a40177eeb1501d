"""`shipyard demo`: the built-in example."""
from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("demo", help="train a digits CNN, ship it to ONNX/TFLite/TF.js with int8, serve it and send a request")
    p.add_argument("-o", "--output", type=Path, default=Path("demo-out"), help="where the example models go")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_demo)



def cmd_demo(args) -> int:
    from shipyard.demo import run_demo

    return run_demo(args.output, as_json=args.json)
