"""`shipyard dump`: intermediate tensors of a model, as computed by its runtime, into a .npz."""
from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("dump", help="write intermediate tensors (all, or named ones) to a .npz file")
    p.add_argument("model")
    p.add_argument("--map", action="append", default=[], metavar="FEATURE=INPUT",
                   help="TFRecord inputs: feed this Example feature to this model input")
    from shipyard.cliargs import add_inputs, add_random

    add_inputs(p, "inputs: FILE.npz, NAME=FILE.npy or FILE.npy (default: random)")
    p.add_argument("--seed", type=int, default=0)
    add_random(p, "random inputs with a dynamic batch dimension of N (the default; N: 1)", batch_alias="dump")
    p.add_argument("--shape", action="append", default=[], metavar="NAME=D0,D1,..",
                   help="shape for a generated input whose shape is dynamic or unknown (TorchScript)")
    p.add_argument("--tensors", default="all", help="'all' or comma-separated tensor names")
    p.add_argument("--list", action="store_true", help="only list the tensors that can be dumped")
    p.add_argument("--backend")
    p.add_argument("--threads", type=int)
    p.add_argument("-o", "--output", type=Path, help="the .npz file to write")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_dump)


def cmd_dump(args) -> int:
    import numpy as np

    from shipyard.atomic import atomic_path, check_output_path
    from shipyard.compare import model_feeds
    from shipyard.dump import dump_tensors, npz_entries, real_values
    from shipyard.errors import UsageError
    from shipyard.feeds import parse_mapping, parse_shapes
    from shipyard.report.text import array_stats

    if not args.list and args.output is None:
        raise UsageError("say where to write the tensors: -o dump.npz (or --list to list them)")
    from shipyard.cliargs import check_inputs_or_random, data_items, random_size, split_list

    check_inputs_or_random(args)
    inputs = data_items(args)
    out = check_output_path(args.output, Path(args.model), *(i.rpartition("=")[2] for i in inputs)) if args.output else None
    from shipyard.runtimes import open_runner

    with open_runner(args.model, args.backend, args.threads, intermediates=True) as source:
        if args.list:
            tensors = source.tensors()
            if args.json:
                print(json.dumps([t.__dict__ for t in tensors], indent=2))
            else:
                for t in tensors:
                    print(f"{t.name}  ({t.op})")
            return 0
        feeds = model_feeds(source.signature, inputs, args.seed, random_size(args), parse_shapes(args.shape),
                            parse_mapping(args.map))
        names = None if args.tensors.strip() == "all" else split_list(args.tensors)
        raw = dump_tensors(source, feeds, names)
        values, quantized = real_values(source, raw)  # int8/uint8 tensors dequantized before any figure
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **npz_entries(raw, values, quantized))
    stats = {name: array_stats(v) for name, v in values.items()}
    for name, q in quantized.items():
        stats[name]["quantized"] = {"dtype": raw[name].dtype.name, **q.to_json()}
    if args.json:
        print(json.dumps({"output_file": str(out), "tensors": stats}, indent=2))
    else:
        width = min(max((len(n) for n in stats), default=0), 60)
        for name, st in stats.items():
            shown = name if len(name) <= width else name[:width - 3] + "..."  # TFLite fused names run long
            extra = f"  min {st['min']:.4g}  max {st['max']:.4g}  mean {st['mean']:.4g}" if "min" in st else ""
            if name in quantized:
                extra += f"  (dequantized {st['quantized']['dtype']}, {quantized[name].describe()})"
            print(f"{shown:<{width}}  {st['dtype']:<8} {st['shape']}{extra}")
        from shipyard.report.numbers import plural

        print(f"{plural(len(values), 'tensor')} written to {out}")
    return 0
