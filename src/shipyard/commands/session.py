"""`shipyard session`: init/restore, run train ops, fetch tensors and save — from a graph file."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


class _Step(argparse.Action):
    """Keep --restore/--init/--run/--fetch/--save in the order they were given."""

    def __call__(self, parser, namespace, values, option_string=None):
        steps = list(getattr(namespace, "steps", None) or [])
        steps.append((self.dest, values))
        namespace.steps = steps


def register(sub) -> None:
    p = sub.add_parser("session", help="train and predict from a graph file, as a C/C++ program would")
    p.add_argument("graph", help="GraphDef (.pb/.pbtxt) or .meta, with its init/train/saver ops")
    p.add_argument("--list", action="store_true", help="show the init op, train ops, saver tensors, inputs and outputs")
    from shipyard.cliargs import Deprecated

    p.add_argument("--inputs", "--input", "-i", dest="feed", action="append", default=[], metavar="NAME=FILE.npy",
                   help="fed to every run and fetch (comma-separated or repeated)")
    p.add_argument("--feed", dest="feed", action=Deprecated, new="--inputs", where="session")
    p.add_argument("--restore", action=_Step, metavar="CKPT", help="restore variables from a checkpoint prefix or directory")
    p.add_argument("--init", action=_Step, nargs=0, help="run the init op")
    p.add_argument("--restore-or-init", action=_Step, metavar="DIR", help="restore DIR's latest checkpoint if there is one, else init")
    p.add_argument("--run", action=_Step, metavar="OP[:N]", help="run an op (N times)")
    p.add_argument("--fetch", action=_Step, metavar="TENSOR", help="fetch a tensor and print it")
    p.add_argument("--save", action=_Step, metavar="PREFIX", help="save variables to a checkpoint prefix")
    p.add_argument("-o", "--output", type=Path, help="write every fetched value to this .npz")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_session, steps=[])


def cmd_session(args) -> int:
    import numpy as np

    from shipyard.atomic import atomic_path, check_output_path
    from shipyard.data.arrays import load_array
    from shipyard.errors import UsageError
    from shipyard.session import GraphSession, check_session_model
    from shipyard.sniff import open_model

    model = open_model(args.graph)
    check_session_model(model, args.graph)
    out = check_output_path(args.output, model.path) if args.output else None
    feeds = {}
    from shipyard.cliargs import split_list

    for item in split_list(args.feed):
        name, sep, file = item.partition("=")
        if not sep:
            raise UsageError(f"--inputs {item}: expected NAME=FILE.npy")
        feeds[name] = load_array(Path(file))
    sess = GraphSession(model)
    try:
        if args.list or not args.steps:
            roles = sess.roles
            if args.json:
                print(json.dumps(roles.to_json(), indent=2))
            else:
                print(f"init op      {roles.init_op or '-'}")
                print(f"train ops    {', '.join(roles.train_ops) or '-'}")
                for key, value in (roles.saver or {}).items():
                    print(f"{key.replace('_', ' '):<12} {value}")
                print(f"inputs       {', '.join(roles.inputs) or '-'}")
                print(f"outputs      {', '.join(roles.outputs) or '-'}")
            if not args.steps:
                return 0
        results = []
        for kind, value in args.steps:
            if kind == "restore":
                results.append(sess.restore(value))
            elif kind == "init":
                results.append(sess.init())
            elif kind == "restore_or_init":
                results.append(sess.restore_or_init(value))
            elif kind == "run":
                results.append(sess.run_op(value, feeds))
            elif kind == "fetch":
                results.append(sess.fetch(value, feeds))
            elif kind == "save":
                results.append(sess.save(value))
            if not args.json:
                r = results[-1]
                extra = ""
                if r.step == "fetch":
                    v = r.values
                    extra = f"  {v['dtype']}{v['shape']}" + (f"  mean {v['mean']:.6g}  min {v['min']:.6g}  max {v['max']:.6g}" if "mean" in v else "")
                print(f"{r.step:<8} {r.target}{extra}  ({r.seconds * 1e3:.1f} ms)")
        if out is not None:
            with atomic_path(out) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, **sess.fetched)
        if args.json:
            print(json.dumps({"roles": sess.roles.to_json(), "steps": [r.to_json() for r in results]}, indent=2))
    finally:
        sess.close()
    return 0
