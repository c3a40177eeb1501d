"""ONNX -> TFLite through onnx2tf: conversion time, size, latency against onnxruntime, error.

Run: .venv/bin/python benchmarks/onnx_to_tflite.py [--runs 200] [--threads 1]
The models are the ones tests/test_onnx_to_tf.py builds (a CNN, a transformer encoder block,
an LSTM+GRU sequence model) and the real PP-OCR text-orientation classifier shipped in
rapidocr-onnxruntime. Each row is one `convert_model` call (plan, onnx2tf, verification on the
same generated inputs), then the ONNX model in onnxruntime and the TFLite model in LiteRT
(XNNPACK) timed in this one process on the same batch-1 input: median of --runs calls.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test models live in one place: tests/test_onnx_to_tf.py, tests/corpus.py
sys.path.insert(0, str(ROOT / "benchmarks"))


def models(work: Path) -> list[tuple[str, Path, dict]]:
    """(label, ONNX file, verification feeds or None)."""
    from corpus import CORPUS
    from test_onnx_to_tf import CNN, Block, Recurrent, export

    real = CORPUS["ocr-cls-onnx"]
    return [
        ("CNN 3x32x32 (conv, BN, softmax)", export(CNN(), (2, 3, 32, 32), work / "cnn.onnx"), None),
        ("transformer block T=6 D=16 (LN, attention, GELU)", export(Block(), (2, 6, 16), work / "block.onnx"), None),
        ("LSTM+GRU T=4 (unrolled)", export(Recurrent(), (2, 4, 8), work / "seq.onnx"), None),
        ("PP-OCR orientation classifier (real, Paddle)", real.path, real.inputs()),
    ]


def latencies(onnx_path: Path, tflite_path: Path, feeds: dict | None, threads: int, runs: int) -> tuple[float, float]:
    """Median ms of onnxruntime and LiteRT on the same batch-1 input (channels-last for LiteRT)."""
    import numpy as np
    from _common import median_ms, ort_session, tflite_interpreter

    from shipyard.verify import relayout

    sess = ort_session(onnx_path, threads)
    spec = sess.get_inputs()[0]
    if feeds:
        x = next(iter(feeds.values()))[:1]
    else:
        shape = [1 if not isinstance(d, int) or d < 0 else d for d in spec.shape]
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    interp = tflite_interpreter(tflite_path, threads)
    detail = interp.get_input_details()[0]
    xt = relayout(x, tuple(int(d) for d in detail["shape_signature"]))
    if tuple(detail["shape"]) != xt.shape:
        interp.resize_tensor_input(detail["index"], xt.shape)
        interp.allocate_tensors()
        detail = interp.get_input_details()[0]

    def run_tflite():
        interp.set_tensor(detail["index"], xt)
        interp.invoke()

    return median_ms(lambda: sess.run(None, {spec.name: x}), runs), median_ms(run_tflite, runs)


def main() -> int:
    from shipyard.convert.api import convert_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="shipyard-bench-onnx2tf-"))
    rows = []
    for label, onnx_path, feeds in models(work):
        out = work / (onnx_path.stem + ".tflite")
        start = time.perf_counter()
        result = convert_model(str(onnx_path), "tflite", out, feeds=feeds)
        seconds = time.perf_counter() - start
        err = max(d.max_abs for d in result.verification.outputs)
        ort_ms, tfl_ms = latencies(onnx_path, out, feeds, args.threads, args.runs)
        rows.append((label, seconds, onnx_path.stat().st_size, out.stat().st_size, ort_ms, tfl_ms, err))
    print(f"onnx2tf {importlib.metadata.version('onnx2tf')}, batch 1, {args.threads} thread(s), median of {args.runs}")
    head = f"{'model':<50} {'convert s':>9} {'onnx KB':>8} {'tflite KB':>9} {'ORT ms':>8} {'LiteRT ms':>9} {'LiteRT/ORT':>10} {'max |err|':>9}"
    print(head)
    print("-" * len(head))
    for label, s, osize, tsize, o, t, e in rows:
        print(f"{label:<50} {s:>9.1f} {osize / 1024:>8.1f} {tsize / 1024:>9.1f} {o:>8.3f} {t:>9.3f} {t / o:>10.2f} {e:>9.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
