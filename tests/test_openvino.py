"""OpenVINO as a third engine: the runner against onnxruntime and LiteRT on the same files, a real
corpus model, NNCF int8, and `ship --optimize` choosing among every engine, serving its choice."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import assert_clean_error, cli_inprocess, run_cli
from shipyard.runtimes import open_runner
from shipyard.verify import diff

pytest.importorskip("openvino", reason="the openvino extra is not installed")


def _outputs(path, backend, feeds, **options):
    with open_runner(path, backend=backend, threads=1, **options) as runner:
        return runner.signature, runner.run(feeds)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(3).standard_normal((4, 12, 12, 3)).astype("float32")


@pytest.mark.parametrize("fmt, peer", [("onnx", "onnxruntime"), ("tflite", "litert"), ("savedmodel", "tensorflow"),
                                       ("pb", "tensorflow")])
def test_openvino_computes_what_the_format_own_engine_computes(keras_example, images, fmt, peer):
    model, paths, _, _ = keras_example
    reference = np.asarray(model(images, training=False))
    sig, got = _outputs(paths[fmt], "openvino", {"image": images} if fmt != "tflite" else {"serving_default_image:0": images})
    _, theirs = _outputs(paths[fmt], peer, {spec.name: images for spec in sig.inputs})
    assert [s.name for s in sig.outputs] == list(theirs), "OpenVINO keeps the names the format's own engine reports"
    assert sig.inputs[0].shape == (-1, 12, 12, 3) and sig.inputs[0].dtype == "float32"
    ours, peers = next(iter(got.values())), next(iter(theirs.values()))
    assert ours.shape == (4, 10)
    # float32 inference (not the bfloat16 the CPU plugin picks by itself on this CPU): exact
    assert diff("probs", peers, ours, atol=1e-5, rtol=1e-4).passed, np.abs(ours - peers).max()
    assert np.abs(ours - reference).max() < 1e-5


def test_bfloat16_is_asked_for_not_taken(keras_paths, images):
    _, exact = _outputs(keras_paths["onnx"], "openvino", {"image:0": images})
    _, bf16 = _outputs(keras_paths["onnx"], "openvino", {"image:0": images}, precision="bf16")
    a, b = next(iter(exact.values())), next(iter(bf16.values()))
    cosine = float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))
    assert cosine > 0.999 and (a.argmax(1) == b.argmax(1)).all()


def test_compare_and_bench_accept_openvino_with_profile(keras_paths, tmp_path, capsys):
    proc = cli_inprocess(capsys, "compare", keras_paths["tflite"], "--backend", "litert,openvino", "--random", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    out = doc["candidates"][0]["outputs"] if "candidates" in doc else doc["outputs"]
    figures = next(iter(out.values())) if isinstance(out, dict) else out[0]
    assert figures["max_abs"] < 1e-5
    proc = cli_inprocess(capsys, "bench", keras_paths["onnx"], "--backend", "onnxruntime,openvino", "--threads", "1",
                   "--runs", "10", "--profile", "--json")
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)["results"]
    assert [r["backend"] for r in results] == ["onnxruntime", "openvino"]
    ov = results[1]
    assert ov["latency_ms"]["p50"] > 0 and ov["profile"], ov.get("profile_note")
    assert {"Convolution", "GroupConvolution"} & {row["op"] for row in ov["profile"]}


def test_a_real_corpus_detector_on_openvino_and_one_it_cannot_read(capsys):
    from corpus import CORPUS, nudenet_check, nudenet_inputs

    detector = CORPUS["nudenet-yolov8n-onnx"]
    feeds = nudenet_inputs()
    _, got = _outputs(detector.path, "openvino", feeds)
    _, ref = _outputs(detector.path, "onnxruntime", feeds)
    measures = nudenet_check(got)  # finds the astronaut's face on OpenVINO's outputs, as on onnxruntime's
    assert measures
    (name, ours), (_, theirs) = next(iter(got.items())), next(iter(ref.items()))
    assert diff(name, theirs, ours).cosine > 0.99999
    # silero-vad keeps its network in If branches whose ranks OpenVINO cannot infer: a clean load error
    proc = cli_inprocess(capsys, "run", CORPUS["silero-vad-onnx"].path, "--backend", "openvino", "--random")
    assert_clean_error(proc, "OpenVINO cannot load the model", "unsupported: Conv")


def test_missing_openvino_names_the_extra(keras_paths, tmp_path):
    blocker = tmp_path / "blocked"
    blocker.mkdir()
    (blocker / "openvino.py").write_text("raise ImportError(\"No module named 'openvino'\", name='openvino')\n")
    proc = run_cli("run", keras_paths["onnx"], "--backend", "openvino", "--random", env={"PYTHONPATH": str(blocker)})
    assert_clean_error(proc, "needs the 'openvino' package", "shipyard[openvino]")
    assert len(proc.stderr.strip().splitlines()) <= 2


def test_nncf_int8_inside_the_budget_and_faster_form_for_openvino(keras_paths, tmp_path, capsys):
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(5).standard_normal((32, 12, 12, 3)).astype("float32"))
    out = tmp_path / "int8.onnx"
    proc = cli_inprocess(capsys, "quantize", keras_paths["onnx"], "--mode", "static", "--engine", "nncf", "--calibration", calib,
                   "-o", out, "--runs", "5", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["verification"]["passed"] and report["settings"]["engine"] == "nncf"
    import onnx

    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # NNCF's QDQ form
    x = np.load(calib)[:8]
    _, q = _outputs(out, "openvino", {"image:0": x})
    _, f = _outputs(keras_paths["onnx"], "onnxruntime", {"image:0": x})
    a, b = next(iter(f.values())), next(iter(q.values()))
    assert 0 < np.abs(a - b).max() < 0.05  # quantized: close, not identical
    assert_clean_error(cli_inprocess(capsys, "quantize", keras_paths["keras"], "--mode", "static", "--engine", "nncf",
                               "-o", tmp_path / "k.onnx"), "the nncf engine quantizes ONNX models")
    assert_clean_error(cli_inprocess(capsys, "quantize", keras_paths["onnx"], "--mode", "dynamic", "--engine", "nncf",
                               "-o", tmp_path / "d.onnx"), "static (calibrated) int8 only")
    assert not (tmp_path / "k.onnx").exists() and not (tmp_path / "d.onnx").exists()


def test_nncf_writes_an_openvino_ir_for_an_xml_output_from_onnx_and_tflite(keras_paths, tmp_path, capsys, monkeypatch):
    """``-o model.xml``: NNCF's OpenVINO backend on the model as OpenVINO reads it, written as an
    IR (.xml + .bin), judged on OpenVINO; from ONNX and from TFLite (whose input OpenVINO names its
    own way: the calibration feeds are paired by the verification core's rule)."""
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(9).standard_normal((32, 12, 12, 3)).astype("float32"))
    x = np.load(calib)[:8]
    _, f = _outputs(keras_paths["onnx"], "onnxruntime", {"image:0": x})
    for source in (keras_paths["onnx"], keras_paths["tflite"]):
        out = tmp_path / f"{source.suffix[1:]}_int8.xml"
        proc = cli_inprocess(capsys, "quantize", source, "--mode", "static", "--engine", "nncf", "--calibration", calib,
                             "-o", out, "--runs", "5", "--json")
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["verification"]["passed"] and report["settings"]["format"] == "OpenVINO IR (int8)"
        weights = out.with_suffix(".bin")
        assert weights.is_file() and report["size_after"] == out.stat().st_size + weights.stat().st_size
        _, q = _outputs(out, "openvino", {"image:0": x})
        a, b = next(iter(f.values())), next(iter(q.values()))
        assert 0 < np.abs(a - b).max() < 0.05, np.abs(a - b).max()  # quantized: close, not identical
    proc = cli_inprocess(capsys, "inspect", out, "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["format"] == "openvino-ir" and summary["producer"] == "NNCF + OpenVINO"
    assert summary["ops"]["FakeQuantize"] >= 3 and summary["param_bytes"]["i8"] > 0  # int8 weights in the .bin
    assert summary["size_bytes"] == report["size_after"]

    # bad inputs: a clear error, exit 2, nothing written
    assert_clean_error(cli_inprocess(capsys, "quantize", keras_paths["keras"], "--mode", "static", "--engine", "nncf",
                                     "-o", tmp_path / "k.xml"), "OpenVINO does not read Keras models")
    assert_clean_error(cli_inprocess(capsys, "quantize", out, "--mode", "static", "--engine", "nncf",
                                     "-o", tmp_path / "again.xml"), "already quantized")
    assert_clean_error(cli_inprocess(capsys, "quantize", keras_paths["onnx"], "--mode", "static", "--engine", "nncf",
                                     "--calibration", calib, "--accuracy-budget", "cosine=1", "--no-search",
                                     "-o", tmp_path / "tight.xml"), "does not match its source", code=1)
    written = {p.name for p in tmp_path.iterdir()}
    assert not written & {"k.xml", "k.bin", "again.xml", "again.bin", "tight.xml", "tight.bin"}, written
    alone = tmp_path / "alone" / "model.xml"
    alone.parent.mkdir()
    alone.write_bytes(out.read_bytes())  # its .bin not beside it
    assert_clean_error(cli_inprocess(capsys, "run", alone, "--random"), "bin file")
    (tmp_path / "alone" / "cut.xml").write_bytes(out.read_bytes()[:3000])
    assert_clean_error(cli_inprocess(capsys, "inspect", tmp_path / "alone" / "cut.xml"), "cannot read the IR")

    # encrypted: both files in one container, run from memory; decrypted: the two files again
    key = tmp_path / "k.key"
    assert cli_inprocess(capsys, "keygen", "-o", key).returncode == 0
    monkeypatch.setenv("SHIPYARD_MODEL_KEY_FILE", str(key))
    assert cli_inprocess(capsys, "encrypt", out, "-o", tmp_path / "ir.enc").returncode == 0
    _, secret = _outputs(tmp_path / "ir.enc", "openvino", {"image:0": x})
    np.testing.assert_array_equal(next(iter(secret.values())), b)
    proc = cli_inprocess(capsys, "decrypt", tmp_path / "ir.enc", "-o", tmp_path / "plain" / "m.xml")
    assert proc.returncode == 2 and "plain" in proc.stderr  # its folder does not exist: refused, not half-written
    (tmp_path / "plain").mkdir()
    assert cli_inprocess(capsys, "decrypt", tmp_path / "ir.enc", "-o", tmp_path / "plain" / "m.xml").returncode == 0
    assert (tmp_path / "plain" / "m.xml").read_bytes() == out.read_bytes()
    assert (tmp_path / "plain" / "m.bin").read_bytes() == out.with_suffix(".bin").read_bytes()
    monkeypatch.delenv("SHIPYARD_MODEL_KEY_FILE")

    # served from a model repository as model.xml + model.bin, on OpenVINO (its only engine)
    import shutil

    import requests

    from test_serve import Server

    version = tmp_path / "repo" / "ir" / "1"
    version.mkdir(parents=True)
    for path in (out, out.with_suffix(".bin")):
        shutil.copy(path, version / f"model{path.suffix}")
    server = Server(tmp_path / "repo")
    try:
        server.wait_for(lambda: requests.get(f"{server.rest}/v2/models/ir/ready").status_code == 200)
        meta = requests.get(f"{server.rest}/v2/models/ir").json()
        assert meta["platform"] == "openvino", meta
        name = meta["inputs"][0]["name"]
        body = {"inputs": [{"name": name, "shape": [1, 12, 12, 3], "datatype": "FP32", "data": x[:1].ravel().tolist()}]}
        reply = requests.post(f"{server.rest}/v2/models/ir/infer", json=body).json()
        _, direct = _outputs(out, "openvino", {name: x[:1]})
        np.testing.assert_allclose(np.asarray(reply["outputs"][0]["data"], np.float32),
                                   next(iter(direct.values())).ravel(), atol=1e-6)
    finally:
        assert server.stop() == 0


def test_convert_to_openvino_ir_from_keras_and_tflite(keras_example, tmp_path, capsys):
    """``convert --to openvino``: OpenVINO's converter, float32 weights, verified against the source;
    Keras goes through its frozen graph, TFLite is read by OpenVINO directly."""
    _, paths, x, expected = keras_example
    for source in (paths["keras"], paths["tflite"]):
        out = tmp_path / f"{source.suffix[1:]}.xml"
        proc = cli_inprocess(capsys, "convert", source, "--to", "openvino", "-o", out, "--json")
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        assert doc["artifact"]["format"] == "openvino-ir" and doc["verification"]["passed"]
        assert doc["path"][-1].endswith("openvino-ir")
        assert out.with_suffix(".bin").stat().st_size > 1000  # float32 weights beside it
        _, got = _outputs(out, "openvino", {"image": x})
        np.testing.assert_allclose(next(iter(got.values())), expected, atol=1e-5)
    assert_clean_error(cli_inprocess(capsys, "convert", paths["keras"], "--to", "openvino", "-o", paths["keras"]),
                       "would overwrite")


def test_ship_optimize_latency_chooses_measures_and_serves_its_choice(keras_paths, tmp_path, capsys):
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(6).standard_normal((32, 12, 12, 3)).astype("float32"))
    dist = tmp_path / "dist"
    proc = cli_inprocess(capsys, "ship", keras_paths["keras"], "-o", dist, "--optimize", "latency", "--threads", "1",
                   "--engines", "openvino,onnxruntime", "--calibration", calib, "--runs", "10")
    assert proc.returncode == 0, proc.stderr
    assert "optimize for latency" in proc.stdout and "chosen:" in proc.stdout
    manifest = json.loads((dist / "manifest.json").read_text())
    opt = manifest["optimize"]
    cands = opt["candidates"]
    engines = {c["engine"] for c in cands}
    assert engines == {"openvino", "onnxruntime"}  # --engines: no LiteRT, no TensorFlow rows
    measured = [c for c in cands if c["status"] == "measured"]
    assert {c["precision"] for c in measured} >= {"fp32", "int8"}
    assert any(c["artifact"] == "onnx-nncf-int8" and c["engine"] == "openvino" for c in measured)
    assert any(c["artifact"] == "openvino-int8" and c["format"] == "openvino-ir" for c in measured)  # NNCF's IR
    # onnxruntime's QOperator int8 uses ops OpenVINO does not read: listed with the reason, skipped
    skipped = [c for c in cands if c["status"] == "skipped"]
    assert all(c["reason"] for c in skipped)
    chosen = [c for c in cands if c["chosen"]]
    assert len(chosen) == 1 and chosen[0] == opt["chosen"]
    best = min(c["p50_ms"] for c in measured)
    close = [c for c in measured if c["paired_ms"]]
    if close:  # the close ones were decided by paired bursts: the fastest there, or tied with it
        assert chosen[0] in close and chosen[0]["paired_ratio"] == 1.0
        assert all(c["paired_ratio"] >= 1 / 1.03 - 1e-4 for c in close)
        assert chosen[0]["p50_ms"] <= best * 1.15 + 1e-9 and "median paired ratio" in opt["why"]
    else:
        assert chosen[0]["p50_ms"] <= best * 1.03 + 1e-9  # the fastest, or tied with it within noise
    assert "lowest median latency" in opt["why"]
    # the serving repository serves the chosen artifact on the chosen engine
    config = json.loads((dist / "serving" / "model" / "config.json").read_text())
    assert config["backend"] == chosen[0]["engine"] and config["threads"] == chosen[0]["threads"]
    chosen_path = dist / chosen[0]["path"]
    served = dist / "serving" / "model" / "1" / f"model{chosen_path.suffix}"
    assert served.read_bytes() == chosen_path.read_bytes()
    if chosen_path.suffix == ".xml":  # an IR is served with its weights
        assert (served.with_suffix(".bin")).read_bytes() == chosen_path.with_suffix(".bin").read_bytes()

    import requests

    from test_serve import Server

    server = Server(dist / "serving")
    try:
        server.wait_for(lambda: requests.get(f"{server.rest}/v2/health/ready").status_code == 200)
        meta = requests.get(f"{server.rest}/v2/models/model").json()
        assert meta["platform"] == {"openvino": "openvino", "onnxruntime": "onnxruntime_onnx"}[chosen[0]["engine"]]
        x = np.load(calib)[:1]
        name = meta["inputs"][0]["name"]
        body = {"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
        reply = requests.post(f"{server.rest}/v2/models/model/infer", json=body).json()
        served_out = np.asarray(reply["outputs"][0]["data"], np.float32)
        _, direct = _outputs(dist / chosen[0]["path"], chosen[0]["engine"], {name: x}, **chosen[0]["options"])
        np.testing.assert_allclose(served_out, next(iter(direct.values())).ravel(), atol=1e-6)
    finally:
        assert server.stop() == 0


def test_ship_optimize_with_no_candidate_inside_the_budget_exits_1_with_the_table(keras_paths, tmp_path, capsys):
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(7).standard_normal((16, 12, 12, 3)).astype("float32"))
    dist = tmp_path / "dist"
    proc = cli_inprocess(capsys, "ship", keras_paths["onnx"], "-o", dist, "--optimize", "size", "--targets", "onnx",
                   "--engines", "onnxruntime", "--precisions", "int8", "--accuracy-budget", "cosine=1",
                   "--calibration", calib, "--runs", "3")
    assert_clean_error(proc, "no candidate is inside the accuracy budget", code=1)
    assert "optimize for size" in proc.stdout and "rejected" in proc.stdout
    manifest = json.loads((dist / "manifest.json").read_text())
    assert manifest["optimize"]["chosen"] is None and manifest["optimize"]["candidates"]
    assert not (dist / "serving" / "model").exists()
    assert_clean_error(cli_inprocess(capsys, "ship", keras_paths["onnx"], "-o", tmp_path / "y", "--engines", "openvino"),
                       "need --optimize")
    assert_clean_error(cli_inprocess(capsys, "ship", keras_paths["onnx"], "-o", tmp_path / "z", "--optimize", "latency",
                               "--precisions", "int4"), "unknown precision")


def test_ship_optimize_throughput_measures_batches_and_size_picks_the_smallest(keras_paths, tmp_path, capsys):
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(8).standard_normal((16, 12, 12, 3)).astype("float32"))
    proc = cli_inprocess(capsys, "ship", keras_paths["onnx"], "-o", tmp_path / "t", "--optimize", "throughput", "--targets", "onnx",
                   "--engines", "onnxruntime,openvino", "--precisions", "fp32", "--calibration", calib, "--runs", "5",
                   "--json")
    assert proc.returncode == 0, proc.stderr
    opt = json.loads(proc.stdout)["optimize"]
    assert {c["batch"] for c in opt["candidates"]} == {8}  # a dynamic batch dimension: throughput at batch 8
    best = max(c["throughput_per_s"] for c in opt["candidates"])
    assert opt["chosen"]["throughput_per_s"] >= 0.97 * best and "highest throughput at batch 8" in opt["why"]
    assert "Optimize for throughput" in (tmp_path / "t" / "report.html").read_text()


def test_serving_config_precision_is_for_openvino_only():
    from shipyard.errors import UsageError
    from shipyard.serve.repository import parse_config

    assert parse_config({"backend": "openvino", "precision": "bf16"}, "c.json").precision == "bf16"
    with pytest.raises(UsageError, match="applies to .backend.: .openvino. only"):
        parse_config({"backend": "onnxruntime", "precision": "bf16"}, "c.json")
    with pytest.raises(UsageError, match="applies to .backend.: .openvino. only"):
        parse_config({"backend": "openvino", "precision": "int4"}, "c.json")
