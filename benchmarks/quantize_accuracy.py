"""Int8 static quantization keeps accuracy: a CNN trained here on scikit-learn's digits
(a real offline dataset, 1797 8x8 images), quantized with `shipyard quantize` for ONNX
(onnxruntime, QOperator u8s8) and TFLite (full int8), evaluated on the held-out test set.

Targets: test accuracy within 1 point of float, file size <= 0.3x, latency <= float.
Run: PYTHONPATH=src python benchmarks/quantize_accuracy.py   (about 2 minutes on 2 cores)
"""
from __future__ import annotations

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


def load_data():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]  # 8x8x1 in [0, 1]
    return train_test_split(x, digits.target.astype("int64"), test_size=0.3, random_state=0, stratify=digits.target)


def build_and_train(x_train, y_train):
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1), name="image")
    x = inp
    for width in (32, 64):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=0.9)(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(128, 3, padding="same", activation="relu")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    out = keras.layers.Dense(10, name="logits")(x)
    model = keras.Model(inp, out)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=20, batch_size=64, verbose=0)
    return model


def main() -> None:
    from shipyard.quantize import Request, quantize_model

    x_train, x_test, y_train, y_test = load_data()
    model = build_and_train(x_train, y_train)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        calib = d / "calib.npz"
        np.savez(calib, image=x_train[:200], labels=y_train[:200])
        keras_path = d / "digits.keras"
        model.save(keras_path)
        float_onnx = keras_to_onnx(model, d / "digits.onnx", batch=1)
        req = Request("static", str(calib), samples=200, latency_runs=0, layers=False)
        quantize_model(float_onnx, d / "digits_int8.onnx", req)
        quantize_model(keras_path, d / "digits_int8.tflite", req)
        import tensorflow as tf

        with contextlib.redirect_stdout(io.StringIO()):  # Keras prints the traced signature
            (d / "digits.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())

        def onnx_eval(path):
            sess = ort_session(path)
            name = sess.get_inputs()[0].name
            preds = np.array([sess.run(None, {name: x_test[i : i + 1]})[0].argmax() for i in range(len(x_test))])
            return float(np.mean(preds == y_test)), median_ms(lambda: sess.run(None, {name: x_test[:1]}), 300)

        def tflite_eval(path):
            interp = tflite_interpreter(path)
            preds = np.array([tflite_predict(interp, x_test[i : i + 1]).argmax() for i in range(len(x_test))])
            return float(np.mean(preds == y_test)), median_ms(lambda: tflite_predict(interp, x_test[:1]), 300)

        for engine, f_path, q_path, evaluate in (
            ("onnxruntime (QOperator u8s8)", float_onnx, d / "digits_int8.onnx", onnx_eval),
            ("LiteRT (full int8)", d / "digits.tflite", d / "digits_int8.tflite", tflite_eval),
        ):
            f_acc, f_ms = evaluate(f_path)
            q_acc, q_ms = evaluate(q_path)
            size_ratio = q_path.stat().st_size / f_path.stat().st_size
            rows.append([engine, f"{100 * f_acc:.2f}", f"{100 * q_acc:.2f}", f"{100 * (q_acc - f_acc):+.2f}",
                         f"{f_path.stat().st_size // 1024} KB", f"{q_path.stat().st_size // 1024} KB", f"{size_ratio:.2f}x",
                         f"{f_ms:.3f}", f"{q_ms:.3f}", f"{f_ms / q_ms:.2f}x"])
    print(f"digits CNN, {len(x_test)} test images, batch 1, 2 threads, median of 300 runs")
    print(table(rows, ["engine", "float acc %", "int8 acc %", "delta", "float size", "int8 size", "size ratio",
                       "float ms", "int8 ms", "speed-up"]))


if __name__ == "__main__":
    main()
