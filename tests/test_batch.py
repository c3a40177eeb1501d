"""`shipyard batch`: sharded TFRecord (written by TensorFlow's own TFRecordWriter), Parquet
(written by pyarrow) and .npy/.npz through a real ONNX model, locally and on Ray; resume after a
killed run; bad inputs. Every prediction is compared with running the model directly."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import assert_clean_error, cli_inprocess


@pytest.fixture(scope="module")
def mlp(tmp_path_factory) -> Path:
    from shipyard import examples

    path = tmp_path_factory.mktemp("batch_model") / "mlp.onnx"
    examples.onnx_mlp(path, seed=4)
    return path


def direct(model: Path, x: np.ndarray) -> np.ndarray:
    """The model run directly on all examples at once: what every batch output must equal."""
    from shipyard.runtimes import open_runner

    with open_runner(model, threads=1) as runner:
        return runner.run({"x": x})["y"]


def write_tfrecords(folder: Path, shards: list[np.ndarray], gzip_last: bool = True) -> list[Path]:
    import tensorflow as tf

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, x in enumerate(shards):
        gz = gzip_last and i == len(shards) - 1
        path = folder / (f"part-{i}.tfrecord" + (".gz" if gz else ""))
        with tf.io.TFRecordWriter(str(path), options="GZIP" if gz else None) as writer:
            for j, row in enumerate(x):
                feature = {"features": tf.train.Feature(float_list=tf.train.FloatList(value=row.tolist())),
                           "id": tf.train.Feature(int64_list=tf.train.Int64List(value=[j]))}
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
        paths.append(path)
    return paths


def write_parquet(folder: Path, shards: list[np.ndarray]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, x in enumerate(shards):
        path = folder / f"part-{i}.parquet"
        column = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
        pq.write_table(pa.table({"x": column, "label": pa.array(np.arange(len(x)) % 4)}), path)
        paths.append(path)
    return paths


def data(seed: int, sizes: list[int]) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, 16)).astype("float32") for n in sizes]


def outputs_of(out: Path) -> dict[str, dict[str, np.ndarray]]:
    from shipyard.batch import output

    manifest = json.loads((out / "manifest.json").read_text())
    return {Path(p).name: output.read(out / e["output"]) for p, e in manifest["shards"].items()}


@pytest.fixture(scope="module")
def tfrecords(tmp_path_factory) -> tuple[list[Path], list[np.ndarray]]:
    shards = data(0, [37, 64, 5])
    return write_tfrecords(tmp_path_factory.mktemp("tfrec"), shards), shards


def test_tfrecord_shards_match_the_model_run_directly(capsys, tmp_path, mlp, tfrecords):
    paths, shards = tfrecords
    out = tmp_path / "out"
    proc = cli_inprocess(capsys, "batch", mlp, "--inputs", str(paths[0].parent / "part-*"), "--map", "features=x",
                         "--batch-size", "16", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "3/3 shards, 106 examples, complete" in proc.stdout
    got = outputs_of(out)
    assert sorted(got) == ["part-0.tfrecord", "part-1.tfrecord", "part-2.tfrecord.gz"]
    for path, x in zip(paths, shards):
        result = got[path.name]
        np.testing.assert_array_equal(result["example_index"], np.arange(len(x)))
        np.testing.assert_array_equal(result["y"], direct(mlp, x))
    manifest = json.loads((out / "manifest.json").read_text())
    from shipyard.ship.manifest import sha256

    assert manifest["model"]["sha256"] == sha256(mlp)
    for path in paths:
        entry = manifest["shards"][str(path)]
        assert entry["input_sha256"] == sha256(path) and entry["input_size"] == path.stat().st_size
        assert entry["sha256"] == sha256(out / entry["output"])
    assert manifest["counts"] == {"inputs": 3, "done": 3, "failed": 0, "examples": 106} and manifest["complete"]
    # a second run finds every shard done and does nothing
    again = cli_inprocess(capsys, "batch", mlp, "--inputs", str(paths[0].parent / "part-*"), "--map", "features=x",
                          "-o", out, "--json")
    summary = json.loads(again.stdout)
    assert summary["run"]["skipped"] == 3 and summary["run"]["shards"] == 0
    assert [s["status"] for s in summary["shards"]] == ["skipped"] * 3


def test_parquet_two_workers_same_files_as_one(capsys, tmp_path, mlp):
    shards = data(1, [50, 20, 33, 8])
    paths = write_parquet(tmp_path / "pq", shards)
    outs = {}
    for workers in (1, 2):
        outs[workers] = tmp_path / f"out{workers}"
        proc = cli_inprocess(capsys, "batch", mlp, "--inputs", str(tmp_path / "pq" / "*.parquet"),
                             "--workers", workers, "--batch-size", "7", "-o", outs[workers])
        assert proc.returncode == 0, proc.stderr
    manifest2 = json.loads((outs[2] / "manifest.json").read_text())
    workers_seen = {e["worker"] for e in manifest2["shards"].values()}
    # Worker processes, not this one; both usually take shards, but on a loaded machine the first
    # one up may take all four before the second has loaded its runner (seen with -n 3).
    assert 1 <= len(workers_seen) <= 2 and not any(w.endswith(f":{os.getpid()}") for w in workers_seen)
    assert manifest2["timings"]["runs"][-1]["workers"] == 2
    for path, x in zip(paths, shards):
        name = path.stem + ".parquet"
        assert (outs[1] / name).read_bytes() == (outs[2] / name).read_bytes()
        from shipyard.batch import output

        np.testing.assert_array_equal(output.read(outs[1] / name)["y"], direct(mlp, x))


def test_npy_npz_inputs_and_npz_outputs(capsys, tmp_path, mlp):
    x0, x1 = data(2, [9, 4])
    np.save(tmp_path / "a.npy", x0)
    np.save(tmp_path / "b.npy", x1)
    out = tmp_path / "out"
    proc = cli_inprocess(capsys, "batch", mlp, "--inputs", str(tmp_path / "*.npy"), "--format", "npz", "-o", out)
    assert proc.returncode == 0, proc.stderr
    with np.load(out / "a.npz") as a, np.load(out / "b.npz") as b:
        np.testing.assert_array_equal(a["y"], direct(mlp, x0))
        np.testing.assert_array_equal(b["y"], direct(mlp, x1))
    from shipyard.batch import read_outputs

    np.testing.assert_array_equal(read_outputs(out)["y"], direct(mlp, np.concatenate([x0, x1])))
    np.savez(tmp_path / "c.npz", x=x1, labels=np.zeros(4))  # labels ride along and are not fed
    proc = cli_inprocess(capsys, "batch", mlp, "--inputs", str(tmp_path / "c.npz"), "-o", tmp_path / "out2")
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(outputs_of(tmp_path / "out2")["c.npz"]["y"], direct(mlp, x1))
    proc = cli_inprocess(capsys, "batch", mlp, "--inputs", str(tmp_path / "a.npy"), "--inputs", str(tmp_path / "c.npz"),
                         "-o", tmp_path / "out3")
    assert_clean_error(proc, "mixed schemas")


# -- bad input: a clear error before any work, nothing written --------------------------------


def test_glob_matching_nothing(capsys, tmp_path, mlp):
    proc = cli_inprocess(capsys, "batch", mlp, "--inputs", str(tmp_path / "nope-*.tfrecord"), "-o", tmp_path / "out")
    assert_clean_error(proc, "matches no file")
    assert not (tmp_path / "out").exists()


def test_mixed_schemas_refused_before_work(capsys, tmp_path, mlp):
    write_parquet(tmp_path / "pq", data(3, [4]))
    pq.write_table(pa.table({"z": pa.array(np.zeros(3, "float32"))}), tmp_path / "pq" / "other.parquet")
    proc = cli_inprocess(capsys, "batch", mlp, "--inputs", str(tmp_path / "pq" / "*"), "-o", tmp_path / "out")
    assert_clean_error(proc, "mixed schemas", "other.parquet")
    assert not (tmp_path / "out").exists()


def test_no_feature_for_an_input_refused_before_work(capsys, tmp_path, mlp, tfrecords):
    paths, _ = tfrecords
    proc = cli_inprocess(capsys, "batch", mlp, "--inputs", str(paths[0]), "-o", tmp_path / "out")
    assert_clean_error(proc, "no feature feeds input(s) x", "--map FEATURE=INPUT")
    proc = cli_inprocess(capsys, "batch", mlp, "--inputs", str(paths[0]), "--map", "pixels=x", "-o", tmp_path / "out")
    assert_clean_error(proc, "no feature 'pixels'")
    assert not (tmp_path / "out").exists()


def test_feature_missing_from_some_examples_fails_that_shard_only(capsys, tmp_path, mlp):
    from shipyard.records import write_records
    from shipyard.tf_example import encode

    good, bad = data(5, [6, 6])
    folder = tmp_path / "rec"
    folder.mkdir()
    write_records(folder / "good.tfrecord", (encode({"x": r, "k": np.array([1])}) for r in good))
    rows = [encode({"x": r, "k": np.array([1])}) if i != 3 else encode({"k": np.array([1])}) for i, r in enumerate(bad)]
    write_records(folder / "bad.tfrecord", rows)
    out = tmp_path / "out"
    proc = cli_inprocess(capsys, "batch", mlp, "--inputs", str(folder / "*.tfrecord"), "-o", out)
    assert_clean_error(proc, "1 of 2 shard(s) failed")
    assert "feature 'x' is missing from 1 of 6 records (first: record 3)" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["shards"]) == [str(folder / "good.tfrecord")] and not manifest["complete"]
    assert list(manifest["failed"]) == [str(folder / "bad.tfrecord")]
    assert sorted(p.name for p in out.iterdir()) == ["good.parquet", "manifest.json"]
    np.testing.assert_array_equal(outputs_of(out)["good.tfrecord"]["y"], direct(mlp, good))


def test_another_jobs_output_directory_is_refused(capsys, tmp_path, mlp):
    from shipyard import examples

    np.save(tmp_path / "a.npy", data(6, [5])[0])
    out = tmp_path / "out"
    assert cli_inprocess(capsys, "batch", mlp, "--inputs", str(tmp_path / "a.npy"), "-o", out).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other = tmp_path / "other.onnx"
    examples.onnx_mlp(other, seed=9)
    proc = cli_inprocess(capsys, "batch", other, "--inputs", str(tmp_path / "a.npy"), "-o", out)
    assert_clean_error(proc, "holds the manifest of another batch job")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing lost
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("mine")
    proc = cli_inprocess(capsys, "batch", mlp, "--inputs", str(tmp_path / "a.npy"), "-o", tmp_path / "stuff")
    assert_clean_error(proc, "not empty, but holds no batch manifest")


def test_unreachable_ray_address_fails_fast(capsys, tmp_path, mlp):
    import socket

    np.save(tmp_path / "a.npy", data(7, [3])[0])
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    proc = cli_inprocess(capsys, "batch", mlp, "--inputs", str(tmp_path / "a.npy"), "--ray", f"127.0.0.1:{port}",
                         "-o", tmp_path / "out")
    assert_clean_error(proc, "no Ray cluster answers there")
    assert time.perf_counter() - start < 15
    assert not (tmp_path / "out").exists()


# -- resume: kill a run mid-way, run again, every example once -------------------------------


def test_resume_after_killed_run_every_example_once(tmp_path, mlp):
    shards = data(8, [4000] * 8)
    write_parquet(tmp_path / "pq", shards)
    out = tmp_path / "out"
    argv = ["batch", str(mlp), "--inputs", str(tmp_path / "pq" / "*.parquet"), "--batch-size", "1", "--threads", "1",
            "-o", str(out), "--json"]
    code = "import sys; from shipyard.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    done: dict = {}
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            done = json.loads((out / "manifest.json").read_text())["shards"]
        except (OSError, ValueError):
            done = {}
        if len(done) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGKILL)  # no chance to clean up or to finish the shard in flight
    proc.wait()
    # the worker child dies with its parent (PR_SET_PDEATHSIG), but on a loaded machine not at once: wait
    # for the writers named in the temporaries to be gone, or the rerun rightly keeps a live writer's file
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(
            Path(f"/proc/{p.name.split('.tmp-')[1].split('-')[0]}").exists() for p in out.iterdir() if ".tmp-" in p.name):
        time.sleep(0.1)
    first = json.loads((out / "manifest.json").read_text())
    assert 2 <= len(first["shards"]) < 8 and not first["complete"]
    rerun = subprocess.run([sys.executable, "-c", code, *argv], check=False, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["run"]["skipped"] == len(first["shards"])
    assert summary["run"]["shards"] == 8 - len(first["shards"]) and summary["complete"]
    from shipyard.batch import read_outputs

    got = read_outputs(out)
    assert len(got["y"]) == 32000  # every example once: none lost, none twice
    np.testing.assert_array_equal(got["y"], direct(mlp, np.concatenate(shards)))
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]  # the killed writer's temporary is gone


# -- Ray: a two-node cluster on this machine, a worker killed mid-run --------------------------


@pytest.fixture(scope="module")
def two_nodes():
    import ray  # noqa: F401 - the ray extra, installed by scripts/setup: missing is a failure

    from ray_cluster import Cluster

    cluster = Cluster()
    try:
        cluster.start_head()
        cluster.add_node()
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.xdist_group("ray")
def test_ray_two_nodes_worker_killed_mid_run_same_files_as_local(tmp_path, mlp, two_nodes):
    shards = data(9, [3000] * 6)
    write_parquet(tmp_path / "pq", shards)
    code = "import sys; from shipyard.cli import main; sys.exit(main(sys.argv[1:]))"
    common = [str(mlp), "--inputs", str(tmp_path / "pq" / "*.parquet"), "--batch-size", "1", "--threads", "1", "--json"]
    ray_out = tmp_path / "ray"
    proc = subprocess.Popen([sys.executable, "-c", code, "batch", *common, "--ray", two_nodes.address,
                             "--workers", "2", "-o", str(ray_out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    killed = None
    deadline = time.monotonic() + 150
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        try:
            done = json.loads((ray_out / "manifest.json").read_text())["shards"]
        except (OSError, ValueError):
            done = {}
        if done:  # an actor has finished a shard and is working on the next: kill its process
            killed = int(next(iter(done.values()))["worker"].rsplit(":", 1)[1])
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=240)
    assert killed is not None, "the job ended before a worker could be killed"
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["complete"] and summary["counts"]["examples"] == 18000
    manifest = json.loads((ray_out / "manifest.json").read_text())
    nodes = {e["node"] for e in manifest["shards"].values()}
    workers = {e["worker"] for e in manifest["shards"].values()}
    assert len(nodes) == 2, nodes  # one CPU per node, two one-CPU actors: the job ran on both nodes
    # the killed actor had done shards; what it held in flight was redone by another actor (Ray's
    # retry: a new actor, or the surviving one, whichever Ray picks), so every example is there once
    assert any(w.endswith(f":{killed}") for w in workers) and len(workers) >= 2
    from shipyard.batch import read_outputs

    got = read_outputs(ray_out)
    assert len(got["y"]) == 18000  # every example once
    np.testing.assert_array_equal(got["y"], direct(mlp, np.concatenate(shards)))
    local_out = tmp_path / "local"
    local = subprocess.run([sys.executable, "-c", code, "batch", *common, "-o", str(local_out)], check=False,
                           capture_output=True,
                           text=True, timeout=300)
    assert local.returncode == 0, local.stderr
    for i in range(6):  # local mode and Ray mode write the same files
        assert (local_out / f"part-{i}.parquet").read_bytes() == (ray_out / f"part-{i}.parquet").read_bytes()
