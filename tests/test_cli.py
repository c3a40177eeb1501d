"""The console entry point end to end: run, outputs files, errors and crash containment."""
from __future__ import annotations

import json

import numpy as np

from conftest import assert_clean_error, cli_inprocess, run_cli
from shipyard.guard import run_guarded


def test_run_random_json_and_npz(keras_example, tmp_path):
    _, paths, _, _ = keras_example
    out = tmp_path / "out.npz"
    proc = run_cli("run", paths["onnx"], "--json", "--threads", "1", "-o", out)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["backend"] == "onnxruntime"
    stats = doc["outputs"]["Identity:0"]
    assert stats["shape"] == [1, 10] and abs(sum([stats["mean"] * 10]) - 1.0) < 1e-5
    saved = np.load(out)
    assert saved["Identity:0"].shape == (1, 10)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_run_with_input_file_matches_framework(keras_example, tmp_path):
    _, paths, x, ref = keras_example
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "y.npz"
    proc = run_cli("run", paths["tflite"], "--input", tmp_path / "x.npy", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "argmax" in proc.stdout
    np.testing.assert_allclose(next(iter(np.load(out).values())), ref, rtol=1e-4, atol=1e-5)


def test_run_torchscript_needs_and_takes_a_shape(torch_example):
    _, paths, _, _ = torch_example
    assert_clean_error(run_cli("run", paths["torchscript"]), "shape of input 'input' is unknown", "--shape")
    proc = run_cli("run", paths["torchscript"], "--shape", "input=2,3,12,12", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["outputs"]["output"]["shape"] == [2, 5]


def test_run_bad_inputs(keras_paths, tmp_path):
    np.save(tmp_path / "ints.npy", np.zeros((1, 12, 12, 3), "int64"))
    np.save(tmp_path / "small.npy", np.zeros((1, 6, 12, 3), "float32"))
    model = keras_paths["onnx"]
    assert_clean_error(run_cli("run", model, "--input", f"image:0={tmp_path / 'ints.npy'}"), "expected dtype float32")
    assert_clean_error(run_cli("run", model, "--input", f"image={tmp_path / 'small.npy'}"), "dimension 1 must be 12")
    assert_clean_error(run_cli("run", model, "--input", f"wrong={tmp_path / 'small.npy'}"), "unknown input name")
    assert_clean_error(run_cli("run", model, "--input", tmp_path / "absent.npy"), "no such input file")
    assert_clean_error(run_cli("run", model, "-o", tmp_path / "nodir" / "o.npz"), "does not exist")
    assert_clean_error(run_cli("run", model, "--backend", "litert"), "cannot run an onnx model")


def test_output_never_overwrites_the_model(keras_paths, tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(keras_paths["onnx"].read_bytes())
    assert_clean_error(run_cli("run", model, "-o", model), "overwrite")
    assert model.read_bytes() == keras_paths["onnx"].read_bytes()


def test_native_crash_is_contained(tmp_path, capfd):
    """A real segfault in the child becomes exit 3, a message, and no temp file left."""
    from shipyard import guard

    leftover = tmp_path / ".out.npz.tmp-1"

    def crash() -> int:
        import ctypes
        import faulthandler

        faulthandler.disable()  # pytest's handler would print a dump; the CLI has none

        leftover.write_bytes(b"half")
        guard.register_temp(leftover)
        guard.stage("loading crash.tflite with litert")
        ctypes.string_at(0)  # dereference NULL: SIGSEGV
        return 0

    code = run_guarded(crash)
    err = capfd.readouterr().err
    assert code == 3
    assert "crashed (SIGSEGV) while loading crash.tflite with litert" in err
    assert not leftover.exists()


def test_guard_passes_exit_codes_through():
    assert run_guarded(lambda: 0) == 0
    assert run_guarded(lambda: 2) == 2


def test_engine_errors_keep_their_cause(tmp_path, capsys, tf1_graph):
    """The engine's cause reaches the user, not only its first line: TorchScript's
    "The following operation failed ..." is followed by the RuntimeError that says why, and
    TensorFlow's "Graph execution error:" by the node and what it missed. No stack frames."""
    import torch

    class Reshape(torch.nn.Module):
        def forward(self, x):
            return x.view(-1, 512) * 2.0

    path = tmp_path / "reshape.pt"
    torch.jit.script(Reshape()).save(str(path))
    proc = cli_inprocess(capsys, "run", path, "--shape", "x=1,300")
    assert proc.returncode != 0
    assert "failed in the TorchScript interpreter" in proc.stderr, proc.stderr
    assert "shape '[-1, 512]' is invalid for input of size 300" in proc.stderr, proc.stderr
    assert 'File "' not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr

    proc = cli_inprocess(capsys, "session", tf1_graph["graph"], "--init", "--run", "train:2")
    assert proc.returncode == 2
    assert "running 'train' failed" in proc.stderr, proc.stderr
    assert "You must feed a value for placeholder tensor" in proc.stderr, proc.stderr  # x or y: TF's choice
