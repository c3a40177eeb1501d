"""`shipyard records`: count, index, look into and write TFRecord files (no TensorFlow)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("records", help="TFRecord files: count, index, head, show, write")
    rsub = p.add_subparsers(dest="records_command", required=True, metavar="ACTION")
    c = rsub.add_parser("count", help="number of records (instant with an index)")
    c.add_argument("file", type=Path)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_count)
    i = rsub.add_parser("index", help="write FILE.index (offset and length of every record)")
    i.add_argument("file", type=Path)
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_index)
    h = rsub.add_parser("head", help="decode the first records' tf.train.Example features")
    h.add_argument("file", type=Path)
    h.add_argument("-n", type=int, default=3)
    h.add_argument("--json", action="store_true")
    h.set_defaults(func=cmd_head)
    s = rsub.add_parser("show", help="decode record N (random access through the index)")
    s.add_argument("file", type=Path)
    s.add_argument("number", type=int)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_show)
    w = rsub.add_parser("write", help="write Examples from a .npz (one feature per array) or a folder of images")
    w.add_argument("source", type=Path, nargs="?", metavar="DATA",
                   help="a .npz (arrays whose first dimension is the record number: one feature per array) or a folder "
                        "of images (sub-folder names become integer labels)")
    w.add_argument("-o", "--output", type=Path, metavar="OUT.tfrecord", help="the TFRecord file to write")
    # the old spelling: records write OUT --from-npz IN | --images DIR
    w.add_argument("--from-npz", type=Path, help=argparse.SUPPRESS)
    w.add_argument("--images", type=Path, help=argparse.SUPPRESS)
    w.add_argument("--gzip", action="store_true", help="GZIP-compress the file")
    w.add_argument("--json", action="store_true")
    w.set_defaults(func=cmd_write)


def _describe(features: dict) -> dict:
    out = {}
    for name, value in features.items():
        if isinstance(value, list):
            out[name] = {"kind": "bytes", "count": len(value), "first_bytes": len(value[0]) if value else 0}
        else:
            out[name] = {"kind": str(value.dtype), "count": int(value.size), "values": value[:6].tolist()}
    return out


def _print_features(number: int, features: dict) -> None:
    print(f"record {number}")
    for name, info in _describe(features).items():
        detail = _preview(info["values"], info["count"]) if "values" in info else f"{info['first_bytes']} bytes"
        print(f"  {name:<24} {info['kind']:<8} x{info['count']:<6} {detail}")


def _preview(values: list, count: int, shown: int = 3) -> str:
    """The first few values, floats to 4 significant digits (the JSON keeps them exact)."""
    text = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in values[:shown])
    return f"[{text}{', ...' if count > shown else ''}]"


def cmd_count(args) -> int:
    from shipyard.records import count
    from shipyard.report.numbers import plural

    n, how = count(args.file)
    print(json.dumps({"file": str(args.file), "records": n, "counted_by": how}) if args.json else f"{plural(n, 'record')} ({how})")
    return 0


def cmd_index(args) -> int:
    from shipyard.records import read_index, write_index
    from shipyard.report.numbers import plural

    out = write_index(args.file)
    n = len(read_index(args.file) or [])
    print(json.dumps({"index": str(out), "records": n}) if args.json else f"indexed {plural(n, 'record')} -> {out}")
    return 0


def cmd_head(args) -> int:
    from shipyard import tf_example
    from shipyard.records import iter_records

    rows = []
    for i, data in enumerate(iter_records(args.file)):
        if i >= args.n:
            break
        features = tf_example.decode(data)
        rows.append({"record": i, "features": _describe(features)})
        if not args.json:
            _print_features(i, features)
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


def cmd_show(args) -> int:
    from shipyard import tf_example
    from shipyard.records import iter_records, read_at, read_index

    if read_index(args.file) is not None:
        data = read_at(args.file, args.number)
    else:
        data = next((d for i, d in enumerate(iter_records(args.file)) if i == args.number), None)
        if data is None:
            from shipyard.errors import InputError

            raise InputError(f"{args.file}: record {args.number} does not exist")
    features = tf_example.decode(data)
    if args.json:
        print(json.dumps({"record": args.number, "features": _describe(features)}, indent=2))
    else:
        _print_features(args.number, features)
    return 0


def _write_paths(args) -> tuple[Path, Path | None, Path | None]:
    """(OUT, npz, image folder) from ``records write DATA -o OUT`` or the old ``records write OUT
    --from-npz IN`` / ``--images DIR`` (which still works, with a deprecation line)."""
    from shipyard.cliargs import deprecated
    from shipyard.errors import UsageError

    old = args.from_npz or args.images
    if old is not None:
        if args.output is not None or args.source is None or (args.from_npz and args.images):
            raise UsageError("give the data first and the file to write with -o: records write DATA -o OUT.tfrecord")
        flag = "--from-npz" if args.from_npz else "--images"
        deprecated(f"records write OUT {flag} IN", "records write IN -o OUT")
        return args.source, args.from_npz, args.images
    if args.source is None or args.output is None:
        raise UsageError("records write needs DATA and -o OUT.tfrecord (DATA: a .npz or a folder of images)")
    return args.output, (None if args.source.is_dir() else args.source), (args.source if args.source.is_dir() else None)


def cmd_write(args) -> int:
    import numpy as np

    from shipyard import tf_example
    from shipyard.atomic import check_output_path
    from shipyard.errors import InputError
    from shipyard.records import write_records
    from shipyard.report.numbers import plural

    out, npz, images = _write_paths(args)
    out = check_output_path(out, npz, images)
    args.from_npz = npz
    if npz:
        try:
            arrays = dict(np.load(args.from_npz, allow_pickle=False))
        except (OSError, ValueError) as exc:
            raise InputError(f"{args.from_npz}: not a readable .npz ({exc})") from exc
        lengths = {k: len(v) for k, v in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise InputError(f"{args.from_npz}: arrays disagree on the number of records: {lengths}")
        n = next(iter(lengths.values()))
        records = (tf_example.encode({k: v[i] for k, v in arrays.items()}) for i in range(n))
    else:
        from shipyard.data.images import image_files

        files, labels = image_files(images)  # the files and labels an image-folder source would read
        records = (tf_example.encode({
            "image/encoded": p.read_bytes(), "image/filename": p.name.encode(),
            **({"image/class/label": np.array([labels[i]])} if labels is not None else {}),
        }) for i, p in enumerate(files))
    written = write_records(out, records, compressed=args.gzip)
    print(json.dumps({"output": str(out), "records": written, "gzip": args.gzip}) if args.json
          else f"wrote {plural(written, 'record')} -> {out}{' (gzip)' if args.gzip else ''}")
    return 0
