"""shipyard quantize: ONNX through onnxruntime, Keras -> TFLite, GraphDef weights; calibration sources; bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_clean_error, run_cli
from test_transform import paddle_style_model


def _ops(path: Path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.fixture(scope="module")
def torch_calibration(torch_example, tmp_path_factory):
    """Calibration samples drawn like the inputs, saved as .npz with the model's labels (its own argmax)."""
    module = torch_example[0]
    import torch

    x = np.random.default_rng(3).standard_normal((24, 3, 12, 12)).astype("float32")
    with torch.no_grad():
        labels = module(torch.from_numpy(x)).numpy().argmax(-1)
    path = tmp_path_factory.mktemp("calib") / "calib.npz"
    np.savez(path, input=x, labels=labels)
    return path, x


def test_onnx_static_qoperator_report(torch_example, torch_calibration, tmp_path):
    _, paths, _, _ = torch_example
    calib, _ = torch_calibration
    out = tmp_path / "int8.onnx"
    # --runs 0: on this toy int8 runs slower than float, which is refused (test_real_quantize covers it)
    proc = run_cli("quantize", paths["onnx"], "--mode", "static", "--calibration", calib, "-o", out, "--per-channel",
                   "--runs", "0", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert "QLinearConv" in _ops(out)
    assert report["settings"]["format"] == "QOperator" and report["settings"]["activations"] == "uint8"
    assert report["calibration"]["samples"] == 24 and report["calibration"]["measured"] is True
    assert report["outputs"][0]["cosine"] > 0.98
    assert report["accuracy"]["float"] == 1.0 and report["accuracy"]["quantized"] >= 0.75
    assert report["layers"] and {"node", "op", "sqnr_db"} <= set(report["layers"][0])
    assert not report["warnings"]


def test_exclude_keeps_a_layer_float_and_qdq_form(torch_example, torch_calibration, tmp_path):
    import onnx

    _, paths, _, _ = torch_example
    calib, _ = torch_calibration
    conv = next(n.name for n in onnx.load(str(paths["onnx"])).graph.node if n.op_type == "Conv")
    out = tmp_path / "qdq.onnx"
    proc = run_cli("quantize", paths["onnx"], "--mode", "static", "--format", "qdq", "--method", "percentile",
                   "--calibration", calib, "--exclude", conv, "-o", out, "--runs", "0", "--no-layers")
    assert proc.returncode == 0, proc.stderr
    model = onnx.load(str(out))
    kept = [n for n in model.graph.node if n.name == conv]
    assert kept and kept[0].op_type == "Conv"
    assert "QuantizeLinear" in _ops(out) and "layers with" not in proc.stdout


def test_paddle_style_constant_weights_quantize(tmp_path):
    src = paddle_style_model(tmp_path / "paddle.onnx")
    x = np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype("float32")
    np.save(tmp_path / "calib.npy", x)
    out = tmp_path / "paddle_int8.onnx"
    proc = run_cli("quantize", src, "--mode", "static", "--calibration", tmp_path / "calib.npy", "-o", out, "--runs", "0", "--json")
    assert proc.returncode == 0, proc.stderr
    ops = _ops(out)
    assert "QLinearConv" in ops and "Constant" not in ops
    assert json.loads(proc.stdout)["outputs"][0]["cosine"] > 0.98


@pytest.mark.parametrize("mode, op", [("dynamic", "ConvInteger"), ("weights", "Cast"), ("float16", None)])
def test_onnx_other_modes(torch_example, tmp_path, mode, op):
    _, paths, _, _ = torch_example
    out = tmp_path / f"{mode}.onnx"
    proc = run_cli("quantize", paths["onnx"], "--mode", mode, "-o", out, "--minimum-size", "16", "--runs", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["outputs"][0]["cosine"] > 0.99
    assert any("random data" in w for w in report["warnings"])
    if op:
        assert op in _ops(out)
    if mode == "dynamic":
        assert any("ConvInteger" in w for w in report["warnings"])


def test_image_folder_calibration(torch_example, tmp_path):
    from PIL import Image

    _, paths, _, _ = torch_example
    rng = np.random.default_rng(0)
    def images(start: int, count: int) -> None:
        for cls in ("cat", "dog"):
            (tmp_path / "images" / cls).mkdir(parents=True, exist_ok=True)
            for i in range(start, start + count):
                Image.fromarray(rng.integers(0, 255, (20, 16, 3), dtype=np.uint8)).save(tmp_path / "images" / cls / f"{i}.png")

    images(0, 4)
    out = tmp_path / "img.onnx"
    args = ("quantize", paths["onnx"], "--mode", "static", "--calibration", tmp_path / "images", "--mean", "0.5",
            "--std", "0.25", "-o", out, "--runs", "0", "--no-layers", "--json")
    # eight samples cannot judge an accuracy budget: a clear error, nothing written
    assert_clean_error(run_cli(*args), "8 sample(s)", "needs at least 16")
    assert not out.exists()
    images(4, 4)
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["calibration"]["samples"] == 16 and "16 images" in report["calibration"]["source"]
    assert report["accuracy"]["samples"] == 16  # sub-folders are classes
    assert report["verification"]["passed"] and abs(report["accuracy"]["float"] - report["accuracy"]["quantized"]) <= 0.01


def test_keras_to_tflite_int8(keras_example, tmp_path):
    _, paths, _, _ = keras_example
    x = np.random.default_rng(5).standard_normal((16, 12, 12, 3)).astype("float32")
    np.save(tmp_path / "calib.npy", x)
    out = tmp_path / "model_int8.tflite"
    proc = run_cli("quantize", paths["keras"], "--mode", "static", "--int8-io", "--calibration", tmp_path / "calib.npy",
                   "-o", out, "--runs", "0", "--json")  # a 0.02 ms toy: its latency on a loaded CPU is noise
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    from shipyard.formats.tflite import TFLiteFile

    sig = TFLiteFile(out).signature()
    assert sig.inputs[0].dtype == "int8" and sig.outputs[0].dtype == "int8"
    assert report["outputs"][0]["cosine"] > 0.98 and report["settings"]["io"] == "int8"
    # TensorFlow's quantization debugger names the noisiest layers; --exclude keeps one in float
    layer = report["layers"][0]["node"]
    assert report["layers"][0]["rmse_per_step"] > 0
    kept = tmp_path / "kept_float.tflite"
    proc = run_cli("quantize", paths["keras"], "--mode", "static", "--calibration", tmp_path / "calib.npy",
                   "--exclude", layer, "-o", kept, "--runs", "0", "--json")
    assert proc.returncode == 0, proc.stderr
    from shipyard.inspection import inspect_model

    assert "DEQUANTIZE" in inspect_model(kept).ops
    assert_clean_error(run_cli("quantize", paths["keras"], "--mode", "static", "--exclude", "no/such/layer", "-o",
                               tmp_path / "x.tflite"), "no quantized TFLite layer named no/such/layer")


def test_graphdef_weights(keras_paths, tmp_path):
    out = tmp_path / "w.pb"
    proc = run_cli("quantize", keras_paths["pb"], "--mode", "weights", "--minimum-size", "16", "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["outputs"][0]["cosine"] > 0.99
    assert b"Dequantize" in out.read_bytes()
    assert_clean_error(run_cli("quantize", keras_paths["pb"], "--mode", "static", "-o", tmp_path / "s.pb"), "--mode weights")


def test_weights_that_would_change_nothing_are_refused(keras_paths, tmp_path, capsys):
    """No weight reaches minimum_size: an error naming the largest weight, not a 1.00x 'result'."""
    from conftest import cli_inprocess

    for src, out in ((keras_paths["pb"], tmp_path / "w.pb"), (keras_paths["onnx"], tmp_path / "w.onnx")):
        proc = cli_inprocess(capsys, "quantize", src, "--mode", "weights", "--runs", "0", "-o", out)
        assert_clean_error(proc, "no float weight has minimum_size=1024 elements or more (the largest has 216)",
                           "--minimum-size 216")
        assert not out.exists()
    proc = cli_inprocess(capsys, "transform", keras_paths["pb"], "-t", "quantize_weights", "-o", tmp_path / "t.pb")
    assert_clean_error(proc, "nothing would be quantized", "quantize_weights(minimum_size=216)")


def test_frozen_graph_static_int8_tflite_in_one_command(keras_example, tmp_path, capsys):
    """``quantize frozen.pb --mode static -o x.tflite``: converted and quantized in one step, judged
    against the frozen graph's own outputs (the hint once sent the user round in a circle)."""
    from conftest import cli_inprocess
    from shipyard.formats.tflite import ops_by_output
    from shipyard.runtimes import open_runner

    model, paths, _, _ = keras_example
    x = np.random.default_rng(7).standard_normal((16, 12, 12, 3)).astype("float32")
    np.save(tmp_path / "calib.npy", x)
    out = tmp_path / "frozen_int8.tflite"
    proc = cli_inprocess(capsys, "quantize", paths["pb"], "--mode", "static", "--calibration", tmp_path / "calib.npy",
                         "-o", out, "--runs", "0", "--no-layers", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["mode"] == "static"
    int8_ops = ops_by_output(out.read_bytes(), ("int8",))
    assert len(int8_ops) >= 3, int8_ops  # convolutions and the dense layer compute in int8
    with open_runner(out) as runner:
        got = runner.run({runner.signature.inputs[0].name: x[:4]})
    ref = np.asarray(model(x[:4], training=False))
    y = next(iter(got.values()))
    assert np.argmax(y, -1).tolist() == np.argmax(ref, -1).tolist()
    assert_clean_error(cli_inprocess(capsys, "quantize", out, "--mode", "static", "-o", tmp_path / "again.tflite"),
                       "already converted", "frozen.pb")


# ---------------------------------------------------------------- bad input

def test_bad_calibration_sets(torch_example, tmp_path):
    _, paths, _, _ = torch_example
    out = tmp_path / "out" / "q.onnx"
    out.parent.mkdir()
    np.save(tmp_path / "shape.npy", np.zeros((4, 3, 10, 10), np.float32))
    np.save(tmp_path / "dtype.npy", np.zeros((4, 3, 12, 12), np.int64))
    np.save(tmp_path / "empty.npy", np.zeros((0, 3, 12, 12), np.float32))
    (tmp_path / "noimages").mkdir()
    cases = [("shape.npy", ["sample 0", "dimension 2 must be 12"]), ("dtype.npy", ["expected dtype float32"]),
             ("empty.npy", ["calibration set is empty"]), ("noimages", ["no images found"]),
             ("missing.npz", ["no such calibration file"])]
    for name, fragments in cases:
        proc = run_cli("quantize", paths["onnx"], "--mode", "static", "--calibration", tmp_path / name, "-o", out)
        assert_clean_error(proc, *fragments)
        assert not list(out.parent.iterdir())


def test_already_quantized_and_bad_exclude(torch_example, tmp_path):
    _, paths, _, _ = torch_example
    first = tmp_path / "w.onnx"
    assert run_cli("quantize", paths["onnx"], "--mode", "weights", "--minimum-size", "16", "-o", first, "--runs", "0").returncode == 0
    proc = run_cli("quantize", first, "--mode", "static", "-o", tmp_path / "again.onnx")
    assert_clean_error(proc, "already quantized", "int8 weights cast to float")
    proc = run_cli("quantize", paths["onnx"], "--mode", "static", "--exclude", "no_such_node", "-o", tmp_path / "x.onnx")
    assert_clean_error(proc, "no node named no_such_node")
    assert_clean_error(run_cli("quantize", paths["onnx"], "--mode", "static", "-o", paths["onnx"]), "overwrite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.onnx"]
