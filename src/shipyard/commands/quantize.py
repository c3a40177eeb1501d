"""`shipyard quantize`: int8 / float16 with a report of size, latency and error vs float."""
from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("quantize", help="quantize a model (ONNX, Keras/SavedModel -> TFLite, GraphDef) and report its error")
    p.add_argument("model")
    from shipyard.cliargs import Deprecated

    p.add_argument("--mode", required=True, choices=["weights", "dynamic", "static", "float16"],
                   help="quantization mode (the same option as ship's --mode)")
    p.add_argument("-o", "--output", required=True, help="the quantized model (.onnx, .tflite or .pb)")
    p.add_argument("--calibration", metavar="DATA",
                   help=".npy/.npz samples (an npz may hold 'labels'), or a folder of images (sub-folders = classes); "
                        "default: random data, with a warning")
    p.add_argument("--map", action="append", default=[], metavar="FEATURE=INPUT",
                   help="TFRecord calibration data: feed this Example feature to this input")
    p.add_argument("--calibration-samples", dest="samples", type=int, default=100, metavar="N",
                   help="at most this many calibration samples (default 100)")
    p.add_argument("--samples", dest="samples", type=int, action=Deprecated, new="--calibration-samples N",
                   where="quantize", store="store")
    p.add_argument("--per-channel", action="store_true", help="per-channel weight scales (ONNX static/dynamic)")
    p.add_argument("--exclude", action="append", default=[], metavar="NODES",
                   help="layers to keep in float (comma-separated, repeatable; ONNX node names, TFLite layer names from the report)")
    p.add_argument("--format", dest="quant_format", choices=["qoperator", "qdq"], default="qoperator",
                   help="ONNX static form: qoperator (default, fastest on CPU) or qdq")
    p.add_argument("--method", dest="calibrate_method", choices=["minmax", "entropy", "percentile"], default="minmax",
                   help="ONNX calibration method")
    p.add_argument("--engine", choices=["onnxruntime", "nncf"], default="onnxruntime",
                   help="static int8: onnxruntime's quantizer (QOperator, fastest on onnxruntime) or NNCF for "
                        "--backend openvino (QDQ ONNX; with -o MODEL.xml an OpenVINO IR, from any model OpenVINO reads)")
    p.add_argument("--int8-io", action="store_true", help="TFLite static: int8 inputs and outputs too")
    p.add_argument("--minimum-size", type=int, default=1024, help="weights mode: smallest tensor to quantize")
    p.add_argument("--image-size", help="image folders: resize to H,W (default: the model's input size)")
    p.add_argument("--layout", choices=["NHWC", "NCHW"], help="image folders: tensor layout (default: from the model)")
    p.add_argument("--mean", help="image folders: per-channel mean subtracted after scaling, e.g. 0.485,0.456,0.406")
    p.add_argument("--std", help="image folders: per-channel std divided by, e.g. 0.229,0.224,0.225")
    p.add_argument("--scale", default="1/255", help="image folders: pixel scale (default 1/255)")
    p.add_argument("--runs", type=int, default=30, help="timed runs for the latency figures (0: skip)")
    p.add_argument("--threads", type=int, help="engine threads for the latency figures")
    p.add_argument("--no-layers", action="store_true", help="skip the per-layer error analysis")
    p.add_argument("--accuracy-budget", metavar="SPEC",
                   help="how far the quantized model may drift from float, e.g. top1=99%%,cosine=0.99,drop=1 "
                        "(the default: agreement >= 99%% and cosine >= 0.99 on every output, agreement read from "
                        "what the output holds: top-1 for class scores, decisions at threshold=0.5 for "
                        "probabilities; kind=scores forces top-1; with labels, at most 1 point of accuracy lost); "
                        "OUTPUT:KEY=VALUE for one output, e.g. onset:cosine=0.95")
    p.add_argument("--no-search", action="store_true",
                   help="quantize with the settings as given: no other settings, no nodes kept in float by the search")
    p.add_argument("--max-search-seconds", type=float, default=240, metavar="S",
                   help="time box of the accuracy search: no trial starts after S seconds (default 240; 0: no limit)")
    p.add_argument("--force", action="store_true", help="write the model even when it misses the accuracy budget")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_quantize)


def cmd_quantize(args) -> int:
    from shipyard.errors import UsageError
    from shipyard.quantize import Request, quantize_model
    from shipyard.quantize.report import render
    from shipyard.quantize.request import SlowerThanFloat
    from shipyard.verify import Budget, VerificationError

    if args.samples < 1:
        raise UsageError("--calibration-samples must be at least 1")
    if args.max_search_seconds < 0:
        raise UsageError("--max-search-seconds must be 0 (no limit) or more")
    from shipyard.feeds import parse_mapping

    exclude = tuple(n.strip() for item in args.exclude for n in item.split(",") if n.strip())
    req = Request(args.mode, args.calibration, args.per_channel, exclude, args.quant_format, args.calibrate_method,
                  args.samples, args.int8_io, args.minimum_size,
                  {"size": args.image_size, "layout": args.layout, "mean": args.mean, "std": args.std, "scale": args.scale},
                  args.runs, args.threads, not args.no_layers,
                  mapping=parse_mapping(args.map), budget=Budget.parse(args.accuracy_budget),
                  search=not args.no_search, force=args.force, engine=args.engine,
                  max_seconds=args.max_search_seconds or None)
    try:
        report = quantize_model(args.model, args.output, req)
    except (VerificationError, SlowerThanFloat) as exc:
        if exc.result is not None:  # the best figures reached, then the one-line error
            print(json.dumps(exc.result.to_json(), indent=2, default=str) if args.json else render(exc.result))
        raise
    print(json.dumps(report.to_json(), indent=2, default=str) if args.json else render(report))
    return 0
