"""`shipyard convert`: one model to another format, verified against its source."""
from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert a model to another format and verify it against the source")
    p.add_argument("model", help="model file/directory, or a PyTorch module as package.module:factory")
    p.add_argument("--to", required=True, help="onnx, tflite, tfjs, savedmodel, keras, torchscript, pb, memmapped, openvino")
    p.add_argument("-o", "--output", required=True, type=Path, help="output file (or directory for tfjs/savedmodel)")
    from shipyard.cliargs import add_inputs, add_nodes

    add_nodes(p, "output", "output node names, comma-separated (GraphDef sources; default: detected)", "convert",
              old="--outputs")
    p.add_argument("--signature", help="SavedModel signature key (default: serving_default)")
    p.add_argument("--input-shape", action="append", default=[], metavar="[NAME=]D0,D1,..",
                   help="input shape for PyTorch sources (repeat for several inputs)")
    p.add_argument("--weights", type=Path, metavar="STATE_DICT",
                   help="package.module:factory sources: load this state_dict / checkpoint (.pth, .pt, .bin, "
                        ".safetensors; read with weights_only=True) into the module first")
    p.add_argument("--dynamic", action="append", default=[], metavar="NAME:AXES",
                   help="PyTorch sources: keep these input axes dynamic in the ONNX export besides the batch "
                        "(e.g. x:2,3); verified on a second input shape")
    p.add_argument("--via", metavar="ROUTE",
                   help="take this converter's route where several reach the target: litert-torch (PyTorch -> "
                        "TFLite directly, the default when installed) or onnx2tf (through ONNX)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--allow-tf-ops", action="store_true", help="TFLite: allow select TensorFlow ops (Flex)")
    p.add_argument("--memmap-min-bytes", type=int, default=10000, metavar="N",
                   help="memmapped: constants of at least N bytes become memory-mapped regions (TF's default 10000)")
    add_inputs(p, "verify on these inputs instead of generated ones: FILE.npz, NAME=FILE.npy or FILE.npy")
    p.add_argument("--atol", type=float, default=1e-4)
    p.add_argument("--rtol", type=float, default=1e-3)
    p.add_argument("--no-verify", action="store_true", help="skip the comparison with the source")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_convert)


def _input_shapes(items: list[str]) -> dict[str, tuple[int, ...]]:
    from shipyard.feeds import parse_shapes

    named = [i if "=" in i else (f"input={i}" if len(items) == 1 else f"input_{n}={i}") for n, i in enumerate(items)]
    return parse_shapes(named)


def _dynamic(items: list[str]) -> dict[str, tuple[int, ...]]:
    """``NAME:AXES`` (``x:2,3``; ``2,3`` for the only input, kept under the name "") -> {name: axes}."""
    from shipyard.errors import UsageError

    out: dict[str, tuple[int, ...]] = {}
    for item in items:
        name, sep, axes = item.rpartition(":")
        try:
            out[name if sep else ""] = tuple(int(a) for a in axes.split(",") if a.strip())
        except ValueError as exc:
            raise UsageError(f"--dynamic {item!r}: expected NAME:AXES such as x:2,3") from exc
    return out


def _any_signature(items: list[str]):
    """A module factory declares no signature: the --inputs names are its inputs."""
    from shipyard.model import Signature, TensorSpec

    return Signature(tuple(TensorSpec(i.partition("=")[0], "unknown", None) for i in items if "=" in i), ())


def cmd_convert(args) -> int:
    from shipyard.cliargs import check_suffix, data_items, split_list
    from shipyard.convert.api import convert_model, source_model
    from shipyard.convert.options import ConvertOptions
    from shipyard.convert.planner import target_format
    from shipyard.feeds import load_feeds
    from shipyard.formats import handler
    from shipyard.report.text import render_verification
    from shipyard.verify import VerificationError

    check_suffix(args.output, target_format(args.to))  # ONNX written into f.pb: say so before the work
    args.inputs = data_items(args)
    opts = ConvertOptions(
        opset=args.opset, allow_tf_ops=args.allow_tf_ops,
        outputs=split_list(args.output_nodes) or None,
        signature_key=args.signature, input_shape=_input_shapes(args.input_shape), dynamic=_dynamic(args.dynamic),
        weights=args.weights, via=args.via, memmap_min_bytes=args.memmap_min_bytes,
    )
    feeds = None
    if args.inputs:
        src = source_model(args.model)
        sig = handler(src.format).signature(src) if src.format != "torch-module" else None
        feeds = load_feeds(args.inputs, sig) if sig is not None else load_feeds(args.inputs, _any_signature(args.inputs))
        opts.example_feeds = feeds
    try:
        result = convert_model(args.model, args.to, args.output, opts, check=not args.no_verify,
                               feeds=feeds, atol=args.atol, rtol=args.rtol)
    except VerificationError as exc:
        result = exc.result
        print(json.dumps(result.to_json(), indent=2) if args.json else render_verification(result))
        raise
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(render_verification(result))
    return 0
