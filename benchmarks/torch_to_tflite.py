"""PyTorch -> TFLite by the two routes side by side: litert-torch (direct, in its own
environment) and torch.onnx.export -> onnx2tf. Conversion time, TFLite size, LiteRT latency and
the verification's max abs error against PyTorch, measured in one run.

Run: .venv/bin/python benchmarks/torch_to_tflite.py [--runs 200] [--threads 1]
The models are the factories in tests/torch_factories.py (the CNN, transformer block and
LSTM+GRU that tests/test_onnx_to_tf.py builds), batch 1. Each cell is one `convert_model`
call (plan, conversion, verification on the same generated inputs); latency is the median of
--runs LiteRT (XNNPACK) invocations in this process.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

MODELS = [("CNN 3x32x32", "torch_factories:cnn", (1, 3, 32, 32)),
          ("transformer block T=6 D=16", "torch_factories:block", (1, 6, 16)),
          ("LSTM+GRU T=4", "torch_factories:recurrent", (1, 4, 8))]
ROUTES = ("litert-torch", "onnx2tf")


def litert_ms(path: Path, shape: tuple[int, ...], threads: int, runs: int) -> float:
    import numpy as np
    from _common import median_ms, tflite_interpreter

    from shipyard.verify import relayout

    interp = tflite_interpreter(path, threads)
    detail = interp.get_input_details()[0]
    x = relayout(np.random.default_rng(0).standard_normal(shape).astype(np.float32),
                 tuple(int(d) for d in detail["shape_signature"]))
    if tuple(detail["shape"]) != x.shape:
        interp.resize_tensor_input(detail["index"], x.shape)
        interp.allocate_tensors()

    def run():
        interp.set_tensor(detail["index"], x)
        interp.invoke()

    return median_ms(run, runs)


def main() -> int:
    from shipyard.convert.api import convert_model
    from shipyard.convert.options import ConvertOptions

    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="shipyard-bench-torch-tflite-"))
    rows = []
    for label, spec, shape in MODELS:
        cells = {}
        for route in ROUTES:
            out = work / f"{spec.split(':')[1]}-{route}.tflite"
            start = time.perf_counter()
            try:
                result = convert_model(spec, "tflite", out, ConvertOptions(input_shape={"x": shape}, via=route))
            except Exception as exc:  # noqa: BLE001 - a route that fails is a row too
                cells[route] = f"failed: {str(exc).splitlines()[0][:60]}"
                continue
            seconds = time.perf_counter() - start
            err = max(d.max_abs for d in result.verification.outputs)
            cells[route] = (seconds, out.stat().st_size, litert_ms(out, shape, args.threads, args.runs), err)
        rows.append((label, cells))
    print(f"PyTorch -> TFLite, batch 1, LiteRT {args.threads} thread(s), median of {args.runs}")
    head = (f"{'model':<28} {'route':<13} {'convert s':>9} {'tflite KB':>9} {'LiteRT ms':>9} {'max |err|':>9} "
            f"{'ms vs onnx2tf':>13}")
    print(head)
    print("-" * len(head))
    for label, cells in rows:
        base = cells.get("onnx2tf")
        for route, cell in cells.items():
            if isinstance(cell, str):
                print(f"{label:<28} {route:<13} {cell}")
                continue
            s, size, ms, err = cell
            ratio = f"{ms / base[2]:>13.2f}" if isinstance(base, tuple) else f"{'-':>13}"
            print(f"{label:<28} {route:<13} {s:>9.1f} {size / 1024:>9.1f} {ms:>9.4f} {err:>9.2e} {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
