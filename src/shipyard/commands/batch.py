"""`shipyard batch`: run a model over sharded data (TFRecord, Parquet, .npy/.npz, image folders),
one output file per shard plus a manifest, locally or on Ray; resumable, exactly once."""
from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("batch", help="run a model over a sharded dataset, locally or on Ray (resumable)")
    p.add_argument("model")
    p.add_argument("--inputs", "--input", "-i", action="append", required=True, metavar="DATA",
                   help="a glob of TFRecord (plain or gzip), Parquet, .npy or .npz files, or image folders; "
                        "one shard per file (folder); repeatable")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT/",
                   help="directory for one output per shard and manifest.json (new, empty, or this job's own)")
    p.add_argument("--map", action="append", default=[], metavar="FEATURE=INPUT",
                   help="feed this TFRecord feature / Parquet column to this model input; repeatable")
    p.add_argument("--batch-size", type=int, default=64, help="examples per model call (default 64)")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes (local) or actors (--ray), each with its own runner (default 1)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on Ray Data: a local Ray without ADDRESS, or join the cluster at HOST:PORT")
    p.add_argument("--format", choices=["parquet", "npz"], default="parquet", help="output files (default parquet)")
    p.add_argument("--backend", help="onnxruntime, litert, tensorflow or torch (default: the format's own)")
    p.add_argument("--threads", type=int, help="engine threads per worker (default: CPUs / workers)")
    p.add_argument("--image-size", help="image folders: resize to H,W (default: the model's input size)")
    p.add_argument("--layout", choices=["NHWC", "NCHW"], help="image folders: tensor layout (default: from the model)")
    p.add_argument("--mean", help="image folders: per-channel mean subtracted after scaling")
    p.add_argument("--std", help="image folders: per-channel std divided by")
    p.add_argument("--scale", default="1/255", help="image folders: pixel scale (default 1/255)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_batch)


def cmd_batch(args) -> int:
    from shipyard.batch.job import BatchOptions, render, run_batch
    from shipyard.errors import InputError
    from shipyard.feeds import parse_mapping

    image = {"size": args.image_size, "layout": args.layout, "mean": args.mean, "std": args.std, "scale": args.scale}
    opts = BatchOptions(model=Path(args.model), inputs=args.inputs, out=args.output, mapping=parse_mapping(args.map),
                        batch_size=args.batch_size, workers=args.workers, ray=args.ray is not None,
                        ray_address=args.ray or None, format=args.format, backend=args.backend, threads=args.threads,
                        image_options=image)
    summary = run_batch(opts)
    print(json.dumps(summary, indent=2) if args.json else render(summary))
    if summary["failed"]:
        raise InputError(f"{len(summary['failed'])} of {len(summary['shards'])} shard(s) failed (listed above and in "
                         "the manifest); the others are complete: fix those inputs and run the same command again")
    return 0
