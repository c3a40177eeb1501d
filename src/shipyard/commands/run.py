"""`shipyard run`: one inference with output statistics."""
from __future__ import annotations

import json
import time
from pathlib import Path

from shipyard.report.numbers import a as _a


def register(sub) -> None:
    p = sub.add_parser("run", help="run one inference and print output statistics")
    p.add_argument("model")
    from shipyard.cliargs import add_inputs, add_random

    add_inputs(p, "inputs: FILE.npz (keys are input names), NAME=FILE.npy, FILE.npy, a TFRecord or a folder of images")
    p.add_argument("--map", action="append", default=[], metavar="FEATURE=INPUT",
                   help="TFRecord input: feed this Example feature to this model input")
    p.add_argument("--shape", action="append", default=[], metavar="NAME=D0,D1,..",
                   help="shape for a generated input whose shape is dynamic or unknown")
    add_random(p, "random inputs with a dynamic batch dimension of N (the default when no --inputs; N: 1)",
               batch_alias="run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--signature", help="SavedModel signature key to run (default: serving_default)")
    p.add_argument("--backend", help="onnxruntime, litert, tensorflow or torch (default: the format's own)")
    p.add_argument("--threads", type=int, help="intra-op threads for the engine")
    p.add_argument("-o", "--output", type=Path, help="write the outputs to this .npz file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_run)



def cmd_run(args) -> int:
    import numpy as np

    from shipyard.atomic import atomic_path, check_output_path
    from shipyard.cliargs import check_inputs_or_random, data_items, random_size
    from shipyard.data.random import random_feeds
    from shipyard.feeds import load_feeds, parse_mapping, parse_shapes
    from shipyard.report.text import array_stats, render_outputs
    from shipyard.runtimes import open_runner

    check_inputs_or_random(args)
    inputs = data_items(args)
    out_path = check_output_path(args.output, Path(args.model), *(i.rpartition("=")[2] for i in inputs)) if args.output else None
    options = {}
    if args.signature is not None:
        from shipyard.errors import UsageError
        from shipyard.inspection import as_model

        model = as_model(args.model)
        if model.format != "tf-savedmodel" or args.backend not in (None, "tensorflow", "tf"):
            raise UsageError(f"--signature chooses a SavedModel signature; {args.model} is {_a(model.format)} model"
                             + (f" run on {args.backend}" if args.backend else ""))
        options["signature_key"] = args.signature
    with open_runner(args.model, backend=args.backend, threads=args.threads, **options) as runner:
        if inputs:
            feeds = load_feeds(inputs, runner.signature, parse_mapping(args.map))
        else:
            feeds = random_feeds(runner.signature, args.seed, random_size(args), parse_shapes(args.shape))
        start = time.perf_counter()
        outputs = runner.run(feeds)
        latency = (time.perf_counter() - start) * 1e3
    stats = {name: array_stats(v) for name, v in outputs.items()}
    _warn_not_finite(outputs)
    if out_path is not None:
        with atomic_path(out_path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **outputs)
    if args.json:
        print(json.dumps({"backend": runner.backend, "latency_ms": latency, "outputs": stats,
                          "output_file": str(out_path) if out_path else None}, indent=2))
    else:
        print(render_outputs(stats, runner.backend, latency))
        if out_path:
            print(f"outputs written to {out_path}")
    return 0


def _warn_not_finite(outputs: dict) -> None:
    """One stderr line per output holding NaN or Inf (a damaged model or an overflow)."""
    import sys

    import numpy as np

    for name, value in outputs.items():
        value = np.asarray(value)
        if value.dtype.kind in "fc":
            bad = int(value.size - np.count_nonzero(np.isfinite(value)))
            if bad:
                print(f"shipyard: warning: output '{name}' holds {bad} NaN/Inf value(s) of {value.size}",
                      file=sys.stderr)
