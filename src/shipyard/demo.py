"""``shipyard demo``: the built-in example until the ``ship`` pipeline exists.

Builds a small Keras CNN and a torch CNN, writes them in every format shipyard reads,
inspects each, runs each on its own engine with the same input, and compares every output
with the framework's own answer.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from shipyard.compare import diff


def _progress(text: str) -> None:
    print(f"· {text}", file=sys.stderr, flush=True)


def run_demo(out_dir: Path, as_json: bool = False) -> int:
    from shipyard import examples
    from shipyard.inspect import inspect_model
    from shipyard.runtimes import open_runner

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    examples.quiet_keras_home(out_dir / ".keras")
    _progress("building the example Keras CNN and writing it as .keras, .h5, SavedModel, .pb, .pbtxt, .tflite, .onnx")
    keras_model = examples.keras_cnn()
    paths = examples.save_keras_family(keras_model, out_dir / "keras_cnn")
    x = np.random.default_rng(0).standard_normal((2, *examples.KERAS_INPUT_SHAPE)).astype("float32")
    reference = np.asarray(keras_model(x, training=False))
    _progress("building the example torch CNN and writing it as TorchScript and ONNX")
    torch_model = examples.torch_cnn()
    tpaths = examples.save_torch_family(torch_model, out_dir / "torch_cnn")
    import torch

    xt = np.random.default_rng(1).standard_normal((2, *examples.TORCH_INPUT_SHAPE)).astype("float32")
    with torch.no_grad():
        treference = torch_model(torch.from_numpy(xt)).numpy()

    rows = []
    jobs = [(p, x, reference) for p in paths.values()] + [(p, xt, treference) for p in tpaths.values()]
    for path, feed, ref in jobs:
        _progress(f"inspecting and running {path.relative_to(out_dir)}")
        summary = inspect_model(path)
        with open_runner(path) as runner:
            out = runner.run({runner.signature.inputs[0].name: feed})
        d = diff(summary.outputs[0].name if summary.outputs else "output", ref, next(iter(out.values())))
        rows.append({
            "model": str(path.relative_to(out_dir)), "format": summary.format, "backend": runner.backend,
            "params": summary.params, "flops": summary.flops, "nodes": summary.node_count,
            "max_abs_err": d.max_abs, "passed": d.passed,
        })
    ok = all(r["passed"] for r in rows)
    if as_json:
        print(json.dumps({"passed": ok, "models": rows}, indent=2))
    else:
        print(f"{'model':<28} {'format':<14} {'backend':<12} {'params':>7} {'FLOPs':>9} {'max |err|':>10}  ok")
        for r in rows:
            flops = "-" if r["flops"] is None else f"{r['flops']:,}"
            print(f"{r['model']:<28} {r['format']:<14} {r['backend']:<12} {r['params']:>7,} {flops:>9} "
                  f"{r['max_abs_err']:>10.2e}  {'yes' if r['passed'] else 'NO'}")
        print(f"\nevery format gives the framework's answer: {'yes' if ok else 'NO'}  (models in {out_dir}/)")
    return 0 if ok else 1
