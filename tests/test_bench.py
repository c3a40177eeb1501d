"""bench: real engines, side by side; figures that must hold for any real measurement."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import assert_clean_error, cli_inprocess

LATENCY_KEYS = ("min", "p50", "p90", "p99", "max", "mean")


def _check_figures(doc):
    lat = doc["latency_ms"]
    assert set(LATENCY_KEYS) <= set(lat)
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"]
    assert doc["throughput_per_s"] == pytest.approx(doc["batch"] * 1e3 / lat["mean"], rel=1e-6)
    assert doc["flops"] > 0
    assert doc["gflops_per_s"] == pytest.approx(doc["flops"] / (lat["p50"] * 1e-3) / 1e9, rel=1e-6)
    assert 10 * 2**20 < doc["peak_rss_bytes"] < 4 * 2**30


def test_bench_json_single(keras_paths, capsys):
    proc = cli_inprocess(capsys, "bench", keras_paths["onnx"], "--runs", "20", "--warmup", "2", "--threads", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    _check_figures(doc)
    assert doc["backend"] == "onnxruntime" and doc["runs"] == 20 and doc["threads"] == 1


def test_bench_side_by_side_with_batches_and_profile(keras_paths, tmp_path, capsys):
    html = tmp_path / "bench.html"
    proc = cli_inprocess(capsys, "bench", keras_paths["onnx"], keras_paths["tflite"], "--batch", "1,4",
                   "--runs", "10", "--warmup", "1", "--profile", "--json", "--html", html)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)["results"]
    assert [(r["backend"], r["batch"]) for r in results] == [
        ("onnxruntime", 1), ("onnxruntime", 4), ("litert", 1), ("litert", 4)]
    for r in results:
        _check_figures(r)
    assert results[0]["ratio_p50"] == 1.0
    assert results[1]["flops"] == pytest.approx(4 * results[0]["flops"])
    ort_ops = {p["op"] for p in results[0]["profile"]}
    assert "Conv" in ort_ops and abs(sum(p["share"] for p in results[0]["profile"]) - 1) < 1e-6
    for r in results[2:]:  # LiteRT's own op profiler (libLiteRt's C API): XNNPACK's operators as they ran
        ops = {p["op"] for p in r["profile"]}
        assert any(op.startswith("Convolution (NHWC, F32)") for op in ops), ops
        assert abs(sum(p["share"] for p in r["profile"]) - 1) < 1e-3 and r["profile_note"] is None
    assert "INFO: [environment" not in proc.stderr  # LiteRT's accelerator log is kept off the terminal
    page = html.read_text()
    assert page.count("<svg") >= 3
    # one box per configuration (not histograms overlaid on one axis), p99 marked, FLOPs per row
    assert "Latency per configuration" in page and "p99" in page and "Latency histogram" not in page
    assert "FLOP/run" in page and page.count("<tr>") >= 1 + len(results)


def test_bench_tensorflow_step_stats_profile(keras_paths, capsys):
    proc = cli_inprocess(capsys, "bench", keras_paths["pb"], "--runs", "5", "--warmup", "1", "--profile", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    _check_figures(doc)
    ops = {p["op"] for p in doc["profile"]}
    assert {"Conv2D", "DepthwiseConv2dNative", "MatMul"} <= ops
    # Grappler fuses conv1+BiasAdd+Relu6 into one kernel named after the Relu6 node: one row naming
    # its parts, and no time charged to Relu6 (or to the constant-folded batch-norm Mul/Sub)
    fused = [op for op in ops if op.startswith("FusedConv2D (")]
    assert fused and "Conv2D" in fused[0] and fused[0].endswith("Relu6)"), ops
    assert "Relu6" not in ops and "Sub" not in ops


def test_bench_text_table(keras_paths, capsys):
    proc = cli_inprocess(capsys, "bench", keras_paths["onnx"], "--runs", "5", "--threads", "1,2")
    assert proc.returncode == 0, proc.stderr
    assert "p99" in proc.stdout and "onnxruntime 1t b1" in proc.stdout and "onnxruntime 2t b1" in proc.stdout


def test_bench_flops_per_model_and_per_configuration(keras_paths, capsys):
    """Each row carries its own FLOP/run: models count differently and batch 8 does 8x the work
    (one figure printed above the table used to stand for every row)."""
    from conftest import cli_inprocess

    proc = cli_inprocess(capsys, "bench", keras_paths["onnx"], keras_paths["pb"], "--runs", "3", "--warmup", "1",
                         "--batch", "1,8", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    rows = rows if isinstance(rows, list) else rows.get("results", rows)
    flops = {(Path(r["model"]).name, r["batch"]): r["flops"] for r in rows}
    for model in ("model.onnx", "frozen.pb"):
        assert flops[(model, 8)] == 8 * flops[(model, 1)] > 0
    assert flops[("model.onnx", 1)] != flops[("frozen.pb", 1)]  # each format's own graph is counted
    text = cli_inprocess(capsys, "bench", keras_paths["onnx"], "--runs", "3", "--warmup", "1", "--batch", "1,8").stdout
    head, first, second = text.splitlines()[1:4]
    flop_b1, flop_b8 = (" ".join(row.split()[-6:-4]) for row in (first, second))  # "100.59 K", "804.75 K"
    assert "FLOP/run" in head and flop_b1.endswith(" K") and flop_b1 != flop_b8


def test_bench_bad_arguments(keras_paths, tmp_path, capsys):
    assert_clean_error(cli_inprocess(capsys, "bench", keras_paths["onnx"], "--threads", "two"), "--threads")
    assert_clean_error(cli_inprocess(capsys, "bench", keras_paths["onnx"], "--backend", "litert"), "cannot run an onnx model")
    assert_clean_error(cli_inprocess(capsys, "bench", keras_paths["onnx"], "--html", "/proc/nope/r.html"), "does not exist")
    wrong = tmp_path / "x.npy"
    import numpy as np

    np.save(wrong, np.zeros((1, 3, 12, 12), np.float32))
    assert_clean_error(cli_inprocess(capsys, "bench", keras_paths["tflite"], "--inputs", wrong), "expected shape")


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_worker_crash_is_reported_not_fatal(keras_paths):
    """A native crash (SIGSEGV) of the engine's process ends in a clear message and exit 3."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from shipyard.cli import main; sys.exit(main(sys.argv[1:]))",
         "bench", str(keras_paths["onnx"]), "--runs", "100000000", "--warmup", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(), start_new_session=True)
    try:
        worker = None
        deadline = time.time() + 60
        while worker is None and time.time() < deadline:  # main -> guarded child -> bench worker
            for child in _children(proc.pid):
                workers = [g for g in _children(child) if "spawn_main" in _cmdline(g)]
                if workers:
                    worker = workers[0]
            time.sleep(0.2)
        assert worker is not None, "bench worker process not found"
        time.sleep(1.0)
        os.kill(worker, signal.SIGSEGV)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 3, (out, err)
    assert "crashed (SIGSEGV)" in err and "Traceback" not in err
