"""Keras MobileNetV2 (224x224, random weights) on onnxruntime, LiteRT and TensorFlow, side by
side in one run through `shipyard.bench`, with achieved GFLOP/s against this CPU's peak.

The peak is estimated two ways: measured (a large float32 SGEMM through numpy's BLAS on the
same threads) and theoretical (cores x clock x 2 FMA units x 16 fp32 lanes x 2 for AVX-512).

    PYTHONPATH=src python benchmarks/bench_mobilenet.py [--runs 50] [--threads 2] [--out DIR]

Takes about 2-3 minutes on 2 cores (model conversion included). Not run by the test suite.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build(directory: Path) -> dict[str, Path]:
    """MobileNetV2 as .keras, .tflite and ONNX (tf2onnx from the frozen graph)."""
    import keras
    import tensorflow as tf
    import tf2onnx

    from shipyard.formats.tf_freeze import freeze_concrete_function, keras_concrete_function

    model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))
    paths = {"keras": directory / "mobilenet_v2.keras", "tflite": directory / "mobilenet_v2.tflite",
             "onnx": directory / "mobilenet_v2.onnx"}
    model.save(paths["keras"])
    with contextlib.redirect_stdout(io.StringIO()):
        paths["tflite"].write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    concrete = keras_concrete_function(model)
    graph_def = freeze_concrete_function(concrete)
    inputs = [n.name + ":0" for n in graph_def.node if n.op == "Placeholder"]
    onnx_model, _ = tf2onnx.convert.from_graph_def(graph_def, input_names=inputs,
                                                   output_names=[t.name for t in concrete.outputs], opset=17)
    paths["onnx"].write_bytes(onnx_model.SerializeToString())
    return paths


def sgemm_peak(threads: int, n: int = 2048, repeats: int = 15) -> float:
    """Median GFLOP/s of an n x n float32 matrix product (numpy's BLAS, ``threads`` threads)."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    times = []
    with threadpool_limits(limits=threads):
        a @ b
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def theoretical_peak(threads: int) -> tuple[float, str]:
    text = Path("/proc/cpuinfo").read_text()
    mhz = float(re.search(r"cpu MHz\s*:\s*([\d.]+)", text).group(1))
    avx512 = "avx512f" in text
    lanes = 16 if avx512 else 8
    peak = threads * mhz / 1e3 * 2 * lanes * 2
    return peak, f"{threads} cores x {mhz / 1e3:.2f} GHz x 2 FMA units x {lanes} fp32 lanes x 2 flops"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="keep the converted models here")
    parser.add_argument("--html", type=Path, help="also write the HTML report")
    parser.add_argument("--build-only", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_only:
        build(args.build_only)
        return

    from shipyard.bench import BenchConfig, bench, ratios
    from shipyard.commands.bench import render

    with tempfile.TemporaryDirectory() as tmp:
        directory = args.out or Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        # Build in a separate process: TensorFlow left running in this one (its thread pools)
        # slowed every engine measured afterwards 3-6x in a first version of this script.
        subprocess.run([sys.executable, __file__, "--build-only", str(directory)], check=True)
        paths = {"keras": directory / "mobilenet_v2.keras", "tflite": directory / "mobilenet_v2.tflite",
                 "onnx": directory / "mobilenet_v2.onnx"}
        print(f"models built in {time.perf_counter() - t0:.0f} s")
        configs = [BenchConfig(str(paths[k]), None, args.threads, 1) for k in ("onnx", "tflite", "keras")]
        results = bench(configs, runs=args.runs, warmup=args.warmup)
        rel = ratios(results)
        print(render(results, rel))
        if args.html:
            from shipyard.report.html import bench_page, write_page

            write_page(args.html, bench_page(results, rel))
    measured = sgemm_peak(args.threads)
    theory, how = theoretical_peak(args.threads)
    print(f"\npeak estimate, {args.threads} threads: measured SGEMM 2048^3 (numpy BLAS) {measured:.1f} GFLOP/s; "
          f"theoretical {theory:.0f} GFLOP/s ({how})")
    print(f"{'engine':<12} {'p50 ms':>8} {'GFLOP/s':>8} {'% of SGEMM':>10} {'% of theory':>11} {'p50 ratio':>9}")
    for r, q in zip(results, rel):
        g = r.gflops_per_s or 0.0
        print(f"{r.backend:<12} {r.latency_ms['p50']:>8.2f} {g:>8.1f} {100 * g / measured:>9.1f}% "
              f"{100 * g / theory:>10.1f}% {q:>9.2f}")


if __name__ == "__main__":
    main()
