"""`shipyard freeze`: what freeze_graph did, without bazel — and for TF2 models too."""
from __future__ import annotations

import json
import time
from pathlib import Path

from shipyard.report.numbers import a as _a


def register(sub) -> None:
    p = sub.add_parser("freeze", help="fold variables into constants: GraphDef/.meta + checkpoint, SavedModel or Keras -> frozen .pb")
    p.add_argument("model", help="GraphDef (.pb/.pbtxt), .meta, checkpoint prefix/directory, SavedModel or Keras file")
    p.add_argument("--checkpoint", help="checkpoint prefix, or a directory (its latest checkpoint) for a GraphDef")
    from shipyard.cliargs import add_nodes

    add_nodes(p, "output", "output node names, comma-separated (default: detected)", "freeze", old="--outputs")
    p.add_argument("--signature", help="SavedModel signature key (default: serving_default)")
    p.add_argument("-o", "--output", required=True, type=Path, help="frozen GraphDef to write (.pb; .pbtxt writes text)")
    p.add_argument("--no-verify", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_freeze)


def cmd_freeze(args) -> int:
    from shipyard.atomic import atomic_path, check_output_path
    from shipyard.convert.api import ConvertResult
    from shipyard.convert.freeze import LiveGraph
    from shipyard.data.random import random_feeds
    from shipyard.errors import UsageError
    from shipyard.model import Model
    from shipyard.report.numbers import plural
    from shipyard.report.text import render_verification
    from shipyard.sniff import open_model
    from shipyard.verify import Exact, VerificationError, verify

    src = open_model(args.model)
    from shipyard.cliargs import check_suffix, split_list

    outputs = split_list(args.output_nodes) or None
    check_suffix(args.output, "tf-graphdef")
    if src.format in ("keras", "tf-savedmodel") and not args.checkpoint:
        from shipyard.convert.api import convert_model
        from shipyard.convert.options import ConvertOptions

        result = convert_model(args.model, "tf-graphdef", args.output,
                               ConvertOptions(outputs=outputs, signature_key=args.signature), check=not args.no_verify)
    else:
        if src.format == "tf-graphdef":
            if not args.checkpoint:
                raise UsageError(f"{src.path}: a GraphDef needs --checkpoint PREFIX|DIR to freeze")
            ckpt = open_model(args.checkpoint)
            if ckpt.format != "tf-checkpoint":
                raise UsageError(f"{args.checkpoint}: not a TF checkpoint (it is {ckpt.format})")
            live = LiveGraph(src.path, ckpt.path)
        elif src.format == "tf-checkpoint":
            if "meta" not in src.extras:
                raise UsageError(f"{src.path}: no .meta next to the checkpoint; give the GraphDef and --checkpoint")
            live = LiveGraph(None, Path(args.checkpoint) if args.checkpoint else src.path, src.extras["meta"])
        else:
            raise UsageError(f"{src.path}: {_a(src.format)} model has no variables to freeze")
        out = check_output_path(args.output, src.path)
        start = time.perf_counter()
        try:
            outputs = outputs or [s.name for s in live.signature().outputs]
            frozen = live.freeze(outputs)
            with atomic_path(out) as tmp:
                if out.suffix == ".pbtxt":
                    from google.protobuf import text_format

                    tmp.write_text(text_format.MessageToString(frozen))
                else:
                    tmp.write_bytes(frozen.SerializeToString())
            seconds = time.perf_counter() - start
            artifact = Model("tf-graphdef", out)
            verification = None
            if not args.no_verify:
                from shipyard.formats.tf_graph import signature_of

                sig = signature_of(frozen)  # only the inputs the outputs need
                verification = verify((sig, live.run_fn(outputs)), artifact, [random_feeds(sig, batch=2)], Exact())
        finally:
            live.close()
        result = ConvertResult(src, artifact, [src.format, "tf-graphdef (frozen)"], seconds, verification,
                               [f"kept {plural(len(frozen.node), 'node')} for outputs {', '.join(outputs)}; devices cleared"])
        if verification is not None and not verification.passed:
            raise VerificationError(str(artifact.path), verification, result=result)
    print(json.dumps(result.to_json(), indent=2) if args.json else render_verification(result))
    return 0
