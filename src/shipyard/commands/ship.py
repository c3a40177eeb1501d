"""`shipyard ship`: from a trained model to verified, benchmarked artifacts in one command."""
from __future__ import annotations

import json
from pathlib import Path

# the modes of ship --mode (shipyard.ship.pipeline.QUANTIZE; kept here so --help imports no pipeline)
QUANTIZE_MODES = ("none", "weights", "dynamic", "static", "float16")


def register(sub) -> None:
    p = sub.add_parser("ship", help="inspect, freeze, optimise, convert, quantize, verify, bench and package a model")
    p.add_argument("model", help="GraphDef (+ --checkpoint), checkpoint, SavedModel, Keras, ONNX, TorchScript")
    p.add_argument("-o", "--output", required=True, type=Path, help="the distribution directory (DIST/)")
    p.add_argument("--targets", help="comma-separated: onnx, tflite, tfjs, torchscript (default onnx,tflite,tfjs; "
                                     "with --optimize onnx,tflite)")
    from shipyard.cliargs import Deprecated, add_nodes

    p.add_argument("--mode", dest="quantize", default="none", choices=list(QUANTIZE_MODES),
                   help="quantization mode: none (default), weights, dynamic, static or float16 (as in quantize --mode)")
    p.add_argument("--quantize", dest="quantize", action=Deprecated, new="--mode MODE", where="ship", store="store")
    p.add_argument("--calibration", metavar="DATA", help="calibration data: .npz/.npy, TFRecord or a folder of images")
    p.add_argument("--inputs", "--input", "-i", metavar="DATA",
                   help="evaluation data (labels in it give accuracy); default: calibration")
    add_nodes(p, "output", "output node names, comma-separated (default: detected, training outputs left out)", "ship",
              old="--outputs")
    p.add_argument("--checkpoint", help="checkpoint prefix or directory for a GraphDef with variables")
    p.add_argument("--eval-samples", dest="samples", type=int, default=64, metavar="N",
                   help="evaluation samples every artifact is verified on (default 64)")
    p.add_argument("--samples", dest="samples", type=int, action=Deprecated, new="--eval-samples N", where="ship",
                   store="store")
    p.add_argument("--calibration-samples", type=int, default=100, metavar="N",
                   help="at most this many calibration samples for --mode (default 100, as in quantize)")
    p.add_argument("--runs", type=int, default=30, help="timed runs per artifact (default 30)")
    p.add_argument("--threads", type=int, default=1, help="engine threads for verification and benchmarks "
                                                          "(--optimize: the target; 1 and N are tried)")
    p.add_argument("--optimize", choices=["latency", "throughput", "size"],
                   help="choose the fastest (or smallest) artifact x engine x precision x threads inside the accuracy "
                        "budget, each measured in its own process; the serving repository serves it (int8 candidates "
                        "are made unless --mode says otherwise)")
    p.add_argument("--engines", help="--optimize: comma-separated engines to consider (default: every installed one "
                                     "of onnxruntime, openvino, litert, tensorflow)")
    p.add_argument("--precisions", help="--optimize: comma-separated precisions to consider: fp32, bf16, int8 "
                                        "(default all; bf16 is OpenVINO's, judged by the budget like int8)")
    p.add_argument("--name", help="model name in the serving repository (default: from the file name)")
    p.add_argument("--accuracy-budget", metavar="SPEC",
                   help="how far quantized artifacts may drift from float (see quantize --help); default "
                        "top1=99%%,cosine=0.99,drop=1")
    p.add_argument("--allow-degraded", action="store_true",
                   help="ship quantized artifacts that miss the budget anyway (marked 'degraded'); exit 0")
    p.add_argument("--serve", action="store_true", help="serve DIST/serving when done")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ship)


def cmd_ship(args) -> int:
    from shipyard.errors import ShipyardError, UsageError
    from shipyard.ship.pipeline import Pipeline, ShipRequest
    from shipyard.ship.render import render_manifest
    from shipyard.verify import Budget

    if args.runs < 1:
        raise UsageError("--runs must be at least 1: ship measures every artifact it makes")
    for flag, n in (("--eval-samples", args.samples), ("--calibration-samples", args.calibration_samples)):
        if n < 1:
            raise UsageError(f"{flag} must be at least 1")
    if (args.engines or args.precisions) and not args.optimize:
        raise UsageError("--engines and --precisions need --optimize")
    from shipyard.cliargs import split_list

    targets = args.targets or ("onnx,tflite" if args.optimize else "onnx,tflite,tfjs")
    req = ShipRequest(
        model=args.model, out=args.output, targets=tuple(t.strip() for t in targets.split(",") if t.strip()),
        quantize=args.quantize, calibration=args.calibration, inputs=args.inputs,
        outputs=split_list(args.output_nodes) or None,
        checkpoint=args.checkpoint, samples=args.samples, calibration_samples=args.calibration_samples,
        bench_runs=args.runs, threads=args.threads, name=args.name,
        budget=Budget.parse(args.accuracy_budget), allow_degraded=args.allow_degraded, optimize=args.optimize,
        engines=tuple(e.strip() for e in args.engines.split(",") if e.strip()) if args.engines else None,
        precisions=tuple(e.strip() for e in args.precisions.split(",") if e.strip()) if args.precisions else None,
    )
    if args.quiet:  # no "· step" lines either
        req.progress = lambda text: None
    manifest = Pipeline(req).run()
    print(json.dumps(manifest.to_json(), indent=2, default=str) if args.json else render_manifest(manifest, args.output))
    if manifest.optimize is not None:
        if manifest.optimize["chosen"] is None:
            error = ShipyardError(f"--optimize {args.optimize}: {manifest.optimize['why']} (the table above; figures in "
                                  f"{args.output}/manifest.json)",
                                  hint="relax --accuracy-budget, give representative --calibration data, or allow "
                                       "more --engines")
            error.exit_code = 1
            raise error
    elif manifest.rejected:
        error = ShipyardError(f"{len(manifest.rejected)} quantized artifact(s) missed the accuracy budget and were not "
                              f"shipped: {', '.join(a.name for a in manifest.rejected)} (figures in "
                              f"{args.output}/manifest.json)",
                              hint="give representative --calibration data, relax --accuracy-budget, or ship them "
                                   "anyway with --allow-degraded")
        error.exit_code = 1
        raise error
    if args.serve:
        from shipyard.serve.server import ServeOptions, serve

        return serve(ServeOptions(repo=args.output / "serving"))
    return 0
