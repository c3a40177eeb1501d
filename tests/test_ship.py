"""ship: the whole pipeline on a real model, its manifest and report, and a failing step."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_clean_error, cli_inprocess


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digits CNN, trained briefly, in the TF1 layout, with calibration and labelled test data."""
    from shipyard import examples

    work = tmp_path_factory.mktemp("digits")
    model, accuracy, (x_test, y_test) = examples.train_digits(epochs=8)
    tf1 = examples.export_digits_tf1(model, work / "tf1")
    model.save(work / "digits.keras")
    np.savez(work / "calib.npz", image=examples.digits_data()[0][:64])
    np.savez(work / "test.npz", image=x_test[:96], labels=y_test[:96])
    return work, tf1, accuracy


def test_ship_tf1_graph_with_int8(digits, tmp_path, capsys):
    work, tf1, _ = digits
    dist = tmp_path / "dist"
    proc = cli_inprocess(capsys, "ship", tf1["graph"], "--checkpoint", tf1["directory"], "-o", dist, "--mode", "static",
                   "--calibration", work / "calib.npz", "--inputs", work / "test.npz", "--runs", "5", "--json")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    assert manifest["complete"] and manifest["failed"] is None
    assert [s["step"] for s in manifest["steps"]] == ["inspect", "freeze", "optimise", "convert", "quantize", "verify",
                                                      "bench", "ops", "package"]
    names = {a["name"]: a for a in manifest["artifacts"]}
    assert set(names) == {"graphdef", "onnx", "tflite", "tfjs", "onnx-int8", "tflite-int8", "tfjs-uint8"}
    reference = manifest["reference"]["accuracy"]
    assert reference > 0.8 and manifest["reference"]["labelled"]
    for name, art in names.items():
        path = dist / art["path"]
        assert path.exists(), name
        if path.is_file():
            assert hashlib.sha256(path.read_bytes()).hexdigest() == art["sha256"]
        assert art["latency_ms"]["p50"] > 0 and art["signature"]["inputs"]
        assert art["accuracy"] >= reference - 0.03, (name, art["accuracy"])  # int8 keeps accuracy
        if art["quantization"] == "float32":
            assert art["verification"]["passed"], name
    assert names["onnx-int8"]["size_bytes"] < 0.5 * names["onnx"]["size_bytes"]
    assert "training output" in json.dumps(manifest["steps"][1])  # the loss was left out
    assert (dist / names["onnx"]["ops_file"]).read_text().strip()
    # an ops list per artifact whose format an `ops --for` target reads (the registry's ops_target)
    assert {n: Path(a["ops_file"]).name for n, a in names.items() if a.get("ops_file")} == {
        "graphdef": "graphdef.ops_to_register.h", "onnx": "onnx.required_operators.config",
        "onnx-int8": "onnx-int8.required_operators.config", "tflite": "tflite.tflite_ops.txt",
        "tflite-int8": "tflite-int8.tflite_ops.txt"}
    assert (dist / "serving" / "digits_onnx_int8" / "1" / "model.onnx").is_file() or \
        any((dist / "serving").glob("*_onnx_int8/1/model.onnx"))
    page = (dist / "report.html").read_text()
    assert "<svg" in page and "onnx-int8" in page
    # real data: no warning; the environment that produced the figures is recorded
    assert manifest["warnings"] == [] and "warning:" not in page
    assert manifest["environment"]["packages"]["onnxruntime"] and "Environment" in page


def test_ship_keras_to_every_target_without_quantization(digits, tmp_path, capsys):
    work, _, _ = digits
    proc = cli_inprocess(capsys, "ship", work / "digits.keras", "-o", tmp_path / "d", "--targets", "onnx,tflite,tfjs",
                   "--runs", "3", "--inputs", work / "test.npz")
    assert proc.returncode == 0, proc.stderr
    assert "onnx" in proc.stdout and "report:" in proc.stdout


def test_random_data_is_a_warning_in_the_manifest_and_the_report(keras_paths, tmp_path, capsys):
    """No --inputs and no --calibration: the figures only compare artifacts with each other, and the
    int8 ranges were fitted to noise; both are said where a reader of the report will see them."""
    out = tmp_path / "r"
    assert_clean_error(cli_inprocess(capsys, "ship", keras_paths["keras"], "-o", out, "--runs", "0"), "--runs must be")
    proc = cli_inprocess(capsys, "ship", keras_paths["keras"], "-o", out, "--targets", "onnx", "--mode", "static",
                         "--runs", "2")
    assert proc.returncode in (0, 1), proc.stderr  # the int8 artifact may miss the budget on noise
    manifest = json.loads((out / "manifest.json").read_text())
    assert any("evaluated on random data" in w for w in manifest["warnings"])
    assert any("int8 calibrated on random data" in w for w in manifest["warnings"])
    assert (out / "report.html").read_text().count("warning:") == 2


def test_a_failing_step_keeps_what_was_made(keras_paths, tmp_path, capsys):
    dist = tmp_path / "dist"
    proc = cli_inprocess(capsys, "ship", keras_paths["onnx"], "-o", dist, "--targets", "onnx,torchscript", "--runs", "3")  # no ONNX -> TorchScript converter
    assert_clean_error(proc, "ship stopped at 'convert'", "manifest.json")
    manifest = json.loads((dist / "manifest.json").read_text())
    assert manifest["complete"] is False and manifest["failed"]["step"] == "convert"
    assert_clean_error(cli_inprocess(capsys, "ship", keras_paths["onnx"], "-o", tmp_path / "x", "--quantize", "int4"), "unknown --mode 'int4'",
                       "--quantize in ship is deprecated; use --mode MODE")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("keep")
    assert_clean_error(cli_inprocess(capsys, "ship", keras_paths["onnx"], "-o", tmp_path / "busy", "--targets", "onnx"), "refusing")
    assert (tmp_path / "busy" / "thesis.tex").read_text() == "keep"


@pytest.mark.slow
def test_quantized_artifacts_outside_the_budget_are_not_shipped(digits, tmp_path, capsys):
    """An impossible budget: the int8 artifact is rejected (exit 1, not in the distribution, the
    manifest says why); --allow-degraded ships it marked 'degraded'."""
    work, _, _ = digits
    dist = tmp_path / "dist"
    args = ("ship", work / "digits.keras", "-o", dist, "--targets", "onnx", "--mode", "static",
            "--calibration", work / "calib.npz", "--inputs", work / "test.npz", "--runs", "3",
            "--accuracy-budget", "cosine=1,top1=100%,drop=0")
    proc = cli_inprocess(capsys, *args)
    assert_clean_error(proc, "missed the accuracy budget and were not shipped: onnx-int8", code=1)
    manifest = json.loads((dist / "manifest.json").read_text())
    assert [a["name"] for a in manifest["rejected"]] == ["onnx-int8"]
    assert manifest["rejected"][0]["failures"] and manifest["budget"]["min_cosine"] == 1.0
    assert {a["name"] for a in manifest["artifacts"]} == {"graphdef", "onnx"}
    assert not list(dist.glob("*int8*")) and not list((dist / "serving").glob("*int8*"))
    assert "NOT SHIPPED" in proc.stdout
    # every output of every float artifact was checked exactly
    for art in manifest["artifacts"]:
        assert art["verification"]["criterion"]["kind"] == "exact" and art["verification"]["outputs"]
    proc = cli_inprocess(capsys, *args, "--allow-degraded", "-o", tmp_path / "degraded")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "degraded" / "manifest.json").read_text())
    degraded = {a["name"]: a for a in manifest["artifacts"]}["onnx-int8"]
    assert degraded["status"] == "degraded" and degraded["failures"]
    assert (tmp_path / "degraded" / degraded["path"]).is_file()


def test_ship_records_which_layers_quantization_hurts_most(capsys, keras_paths, tmp_path):
    """manifest.json and report.html name the top nodes of each quantized artifact and what each
    costs: the search's sensitivity at the outputs when int8 misses the budget (here a budget no
    int8 model meets, so the artifact is rejected and the figures say why), otherwise the noise
    each layer adds."""
    from shipyard.ship.sensitivity import MEASURES

    dist = tmp_path / "strict"
    proc = cli_inprocess(capsys, "ship", keras_paths["onnx"], "-o", dist, "--targets", "onnx", "--mode", "static",
                         "--runs", "3", "--accuracy-budget", "cosine=0.99999999")
    assert proc.returncode == 1, proc.stderr
    manifest = json.loads((dist / "manifest.json").read_text())
    rejected = {a["name"]: a for a in manifest["rejected"]}
    s = rejected["onnx-int8"]["sensitivity"]
    assert s["measure"] == "outputs" and s["unit"] == MEASURES["outputs"][0] and s["nodes"]
    costs = [n["cost"] for n in s["nodes"]]
    assert costs == sorted(costs, reverse=True) and all(n["node"] and n["op"] for n in s["nodes"])
    page = (dist / "report.html").read_text()
    assert "Quantization sensitivity" in page and s["nodes"][0]["node"] in page

    dist = tmp_path / "default"
    proc = cli_inprocess(capsys, "ship", keras_paths["onnx"], "-o", dist, "--targets", "onnx", "--mode", "static",
                         "--runs", "3")
    assert proc.returncode == 0, proc.stderr
    arts = {a["name"]: a for a in json.loads((dist / "manifest.json").read_text())["artifacts"]}
    assert arts["onnx"]["sensitivity"] is None  # float: nothing quantized
    s = arts["onnx-int8"]["sensitivity"]
    assert s["measure"] in MEASURES and s["nodes"] and all(isinstance(n["cost"], float) for n in s["nodes"])
