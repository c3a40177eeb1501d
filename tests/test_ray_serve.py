"""`shipyard serve REPO --ray`: the repository on Ray Serve replicas, spoken to by tritonclient
(HTTP) and compared answer for answer with `shipyard serve` on the same repository."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import ray  # noqa: F401 - the ray extra, installed by scripts/setup: missing is a failure
import requests

from conftest import assert_clean_error
from shipyard import examples

CLI = "import sys; from shipyard.cli import main; sys.exit(main(sys.argv[1:]))"
X = np.random.default_rng(11).standard_normal((3, 16)).astype("float32")


def add_version(repo: Path, version: int) -> None:
    staging = repo.parent / f".staging-{version}"
    shutil.rmtree(staging, ignore_errors=True)
    examples.onnx_mlp(staging / "model.onnx", seed=version)
    (repo / "mlp").mkdir(parents=True, exist_ok=True)
    staging.rename(repo / "mlp" / str(version))


class Served:
    def __init__(self, repo: Path, tag: str, *extra: str, timeout: float = 150):
        self.ready = repo.parent / f"ready-{tag}.json"
        self.log = open(repo.parent / f"{tag}.log", "w+")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-c", CLI, "serve", str(repo), "--rest-port", "0",
                                      "--ready-file", str(self.ready), "--poll-seconds", "1", *extra],
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, "RAY_AUTH_MODE": "disabled"})
        deadline = time.monotonic() + timeout
        while not self.ready.exists():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.output()[-4000:]
            time.sleep(0.1)
        self.port = json.loads(self.ready.read_text())["rest_port"]
        self.url = f"127.0.0.1:{self.port}"

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            code = None
        try:  # whatever of its process group is left (a local Ray's daemons)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.log.close()
        return code


def infer(url: str, x: np.ndarray, binary: bool) -> np.ndarray:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("y", binary_data=binary)
    return client.infer("mlp", [inp], outputs=[out]).as_numpy("y")


@pytest.mark.xdist_group("ray")
def test_ray_serve_answers_like_shipyard_serve_with_two_replicas_and_rolls_out_a_new_version(tmp_path):
    import tritonclient.http as httpclient

    repo = tmp_path / "repo"
    for v in (1, 2):
        add_version(repo, v)
    plain = Served(repo, "plain", "--grpc-port", "-1", "--no-access-log")
    on_ray = None
    try:
        on_ray = Served(repo, "ray", "--ray", "--replicas", "2")
        for binary in (False, True):  # KServe v2 JSON and the binary tensor extension
            expected = infer(plain.url, X, binary)
            np.testing.assert_array_equal(infer(on_ray.url, X, binary), expected)
        from shipyard.runtimes import open_runner

        with open_runner(repo / "mlp" / "2" / "model.onnx") as runner:
            np.testing.assert_allclose(expected, runner.run({"x": X})["y"], rtol=1e-6)
        meta = [httpclient.InferenceServerClient(u).get_model_metadata("mlp") for u in (plain.url, on_ray.url)]
        assert meta[0] == meta[1]
        assert httpclient.InferenceServerClient(on_ray.url).is_server_ready()
        for path in ("/v2/models/mlp/infer", "/v2/models/nope/infer"):  # errors are the same too
            body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
            answers = [requests.post(f"http://{u}{path}", json=body, timeout=30) for u in (plain.url, on_ray.url)]
            assert answers[0].status_code == answers[1].status_code and answers[0].status_code in (400, 404)
            assert answers[0].json() == answers[1].json()

        def one(i: int) -> str:
            body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": X[i % 3].tolist()}]}
            r = requests.post(f"http://{on_ray.url}/v2/models/mlp/infer", json=body, timeout=30)
            assert r.status_code == 200
            return r.headers["shipyard-replica"]

        with ThreadPoolExecutor(8) as pool:
            replicas = set(pool.map(one, range(48)))
        assert len(replicas) == 2, replicas  # both replicas answered

        add_version(repo, 3)  # hot reload: a new deployment version, rolled out by Ray Serve
        deadline = time.monotonic() + 120
        client = httpclient.InferenceServerClient(on_ray.url)
        while client.get_model_metadata("mlp")["versions"] != ["3"]:
            assert time.monotonic() < deadline, on_ray.output()[-3000:]
            time.sleep(0.5)
        with open_runner(repo / "mlp" / "3" / "model.onnx") as runner:
            np.testing.assert_allclose(infer(on_ray.url, X, True), runner.run({"x": X})["y"], rtol=1e-6)
    finally:
        codes = [s.stop() for s in (on_ray, plain) if s is not None]
    assert codes == [0, 0] if on_ray is not None else codes == [0]


def test_ray_serve_bad_arguments(tmp_path):
    repo = tmp_path / "repo"
    add_version(repo, 1)
    (repo / "mlp" / "ray.json").write_text('{"num_replicas": 2, "autoscaling_config": {"max_replicas": 3}}')
    proc = subprocess.run([sys.executable, "-c", CLI, "serve", str(repo), "--ray"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert_clean_error(proc, "give num_replicas or autoscaling_config, not both")
    (repo / "mlp" / "ray.json").unlink()
    proc = subprocess.run([sys.executable, "-c", CLI, "serve", str(repo), "--ray", "127.0.0.1:1"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert_clean_error(proc, "no Ray cluster answers there")
