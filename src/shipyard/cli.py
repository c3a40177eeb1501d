"""The ``shipyard`` command line: parse arguments, call the API, render the result.

Work happens in a forked child (see :mod:`shipyard.guard`) so that a native crash becomes
a clear message; errors the user can act on print one line (plus a hint) and exit 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from shipyard import __version__
from shipyard.errors import ShipyardError


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="inputs, outputs, ops, parameters and FLOPs of a model")
    p.add_argument("model", help="model file or directory (any supported format)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_inspect)


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="run one inference and print output statistics")
    p.add_argument("model")
    p.add_argument("--input", "-i", action="append", default=[], metavar="NAME=FILE.npy",
                   help="an input array (.npy), or a .npz whose keys are input names; repeatable")
    p.add_argument("--random", action="store_true", help="generate random inputs (the default when no --input)")
    p.add_argument("--shape", action="append", default=[], metavar="NAME=D0,D1,..",
                   help="shape for a generated input whose shape is dynamic or unknown")
    p.add_argument("--batch", type=int, default=1, help="size of a dynamic batch dimension for generated inputs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", help="onnxruntime, litert, tensorflow or torch (default: the format's own)")
    p.add_argument("--threads", type=int, help="intra-op threads for the engine")
    p.add_argument("-o", "--output", type=Path, help="write the outputs to this .npz file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_run)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="build an example model in every format, inspect, run and compare them")
    p.add_argument("-o", "--output", type=Path, default=Path("demo-out"), help="where the example models go")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shipyard",
        description="Take trained neural networks from training to deployment.",
    )
    parser.add_argument("--version", action="version", version=f"shipyard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_inspect, _add_run, _add_demo):
        add(sub)
    return parser


# -- commands -------------------------------------------------------------------------


def cmd_inspect(args) -> int:
    from shipyard.inspect import inspect_model
    from shipyard.report.text import render_summary

    summary = inspect_model(args.model)
    print(json.dumps(summary.to_json(), indent=2) if args.json else render_summary(summary))
    return 0


def cmd_run(args) -> int:
    import numpy as np

    from shipyard.atomic import atomic_path, check_output_path
    from shipyard.feeds import load_feeds, parse_shapes, random_feeds
    from shipyard.report.text import array_stats, render_outputs
    from shipyard.runtimes import open_runner

    out_path = check_output_path(args.output, Path(args.model)) if args.output else None
    with open_runner(args.model, backend=args.backend, threads=args.threads) as runner:
        if args.input:
            feeds = load_feeds(args.input, runner.signature)
        else:
            feeds = random_feeds(runner.signature, args.seed, args.batch, parse_shapes(args.shape))
        start = time.perf_counter()
        outputs = runner.run(feeds)
        latency = (time.perf_counter() - start) * 1e3
    stats = {name: array_stats(v) for name, v in outputs.items()}
    if out_path is not None:
        with atomic_path(out_path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **outputs)
    if args.json:
        print(json.dumps({"backend": runner.backend, "latency_ms": latency, "outputs": stats,
                          "output_file": str(out_path) if out_path else None}, indent=2))
    else:
        print(render_outputs(stats, runner.backend, latency))
        if out_path:
            print(f"outputs written to {out_path}")
    return 0


def cmd_demo(args) -> int:
    from shipyard.demo import run_demo

    return run_demo(args.output, as_json=args.json)


# -- entry points ---------------------------------------------------------------------


def run(argv: list[str] | None = None) -> int:
    """Parse and execute in this process (the body of :func:`main`; tests call it directly)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ShipyardError as exc:
        print(f"shipyard: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("shipyard: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except MemoryError:
        print("shipyard: out of memory", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug in shipyard: one line, and the way to see the traceback
        if os.environ.get("SHIPYARD_DEBUG"):
            raise
        print(f"shipyard: internal error: {exc.__class__.__name__}: {exc}\n"
              "  hint: run again with SHIPYARD_DEBUG=1 for the traceback, and please report it",
              file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the command in a crash-contained child process."""
    from shipyard.guard import run_guarded

    return run_guarded(lambda: run(argv))


if __name__ == "__main__":
    raise SystemExit(main())
