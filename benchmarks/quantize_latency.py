"""Keras MobileNetV2 and ResNet50 (random weights, 224x224, batch 1): latency of the original
Keras model against shipyard's transformed + int8 ONNX on onnxruntime and TFLite int8 on
LiteRT, side by side in one run, 2 threads, medians and ratios against Keras.

Random weights make the error figures meaningless (MobileNetV2's output is flat), so this
benchmark reports speed only; quantize_accuracy.py measures accuracy on a trained model.
Run: PYTHONPATH=src python benchmarks/quantize_latency.py [--runs 20] [--models mobilenet_v2,resnet50]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).parent))

from _common import keras_to_onnx, median_ms, ort_session, table, tflite_interpreter, tflite_predict

TRANSFORMS = "fold_constants remove_nodes(op=Identity) merge_duplicate_nodes ort_optimize(level=basic)"


def build(name: str):
    import keras

    ctor = {"mobilenet_v2": keras.applications.MobileNetV2, "resnet50": keras.applications.ResNet50}[name]
    return ctor(weights=None, input_shape=(224, 224, 3))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--models", default="mobilenet_v2,resnet50")
    args = parser.parse_args()

    import tensorflow as tf

    from shipyard.passes.pipeline import transform_model
    from shipyard.quantize import Request, quantize_model

    tf.config.threading.set_intra_op_parallelism_threads(2)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 224, 224, 3)).astype("float32")
    rows = []
    for name in args.models.split(","):
        model = build(name)
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            calib = d / "calib.npy"
            np.save(calib, np.random.default_rng(1).uniform(-1, 1, (8, 224, 224, 3)).astype("float32"))
            keras_path = d / f"{name}.keras"
            model.save(keras_path)
            onnx_path = keras_to_onnx(model, d / f"{name}.onnx", batch=1)
            transform_model(onnx_path, TRANSFORMS, d / "opt.onnx", verify=False)
            req = Request("static", str(calib), samples=8, latency_runs=0, layers=False)
            quantize_model(d / "opt.onnx", d / "int8.onnx", req)
            quantize_model(keras_path, d / "int8.tflite", req)
            with contextlib.redirect_stdout(io.StringIO()):  # Keras prints the traced signature
                (d / "float.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())

            fn = tf.function(lambda t, m=model: m(t, training=False))
            timings = {
                "Keras predict_on_batch": median_ms(lambda m=model: m.predict_on_batch(x), args.runs),
                "Keras tf.function": median_ms(lambda f=fn: f(x), args.runs),
            }
            for label, path in (("ORT fp32 (transformed)", d / "opt.onnx"), ("ORT int8 QOperator", d / "int8.onnx")):
                sess = ort_session(path)
                feed = {sess.get_inputs()[0].name: x}
                timings[label] = median_ms(lambda s=sess, f=feed: s.run(None, f), args.runs)
            for label, path in (("TFLite fp32", d / "float.tflite"), ("TFLite int8", d / "int8.tflite")):
                interp = tflite_interpreter(path)
                timings[label] = median_ms(lambda i=interp: tflite_predict(i, x), args.runs)
            base = timings["Keras tf.function"]
            for label, ms in timings.items():
                rows.append([name, label, f"{ms:.2f}", f"{base / ms:.1f}x"])
    print(f"batch 1, 224x224, 2 threads, median of {args.runs} runs; speed-up against Keras tf.function")
    print(table(rows, ["model", "engine", "ms", "speed-up"]))


if __name__ == "__main__":
    main()
