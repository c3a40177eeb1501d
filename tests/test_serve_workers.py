"""serve --workers N: several processes on the same ports, all answering, clean shutdown."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import requests

from test_serve import Server


def test_two_workers_share_the_ports(keras_example, tmp_path):
    _, paths, x, ref = keras_example
    repo = tmp_path / "repo"
    (repo / "cnn" / "1").mkdir(parents=True)
    shutil.copy(paths["tflite"], repo / "cnn" / "1" / "model.tflite")
    server = Server(repo, "--workers", "2", "--share-weights")
    try:
        info = json.loads(server.ready_file.read_text())
        assert info["workers"] == 2 and len(info["pids"]) == 2
        assert all(os.path.exists(f"/proc/{pid}") for pid in info["pids"])
        server.wait_for(lambda: requests.get(f"{server.rest}/v2/models/cnn/ready").status_code == 200)
        name = requests.get(f"{server.rest}/v2/models/cnn").json()["inputs"][0]["name"]
        body = {"inputs": [{"name": name, "shape": [1, 12, 12, 3], "datatype": "FP32", "data": x[0].ravel().tolist()}]}
        for _ in range(12):  # new connections: the kernel spreads them over both workers
            reply = requests.post(f"{server.rest}/v2/models/cnn/infer", json=body, timeout=30,
                                  headers={"Connection": "close"})
            assert reply.status_code == 200, reply.text
            got = np.asarray(reply.json()["outputs"][0]["data"], dtype=np.float32)
            np.testing.assert_allclose(got, ref[0], rtol=1e-4, atol=1e-5)
    finally:
        assert server.stop() == 0
    assert not any(os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z"
                   for pid in info["pids"])


def test_ctrl_c_stops_workers_while_starting_and_when_up(tmp_path):
    """Ctrl-C reaches the supervisor and every worker (one process group): whether the workers
    are still loading or serving, the command ends promptly; once up, with exit 0."""
    import signal
    import subprocess
    import sys
    import time

    from shipyard import examples
    from test_serve import SERVE

    repo = tmp_path / "repo"
    examples.onnx_mlp(repo / "mlp" / "1" / "model.onnx")
    for wait_until_up in (False, True):
        ready = tmp_path / f"ready-{wait_until_up}.json"
        proc = subprocess.Popen([sys.executable, "-c", SERVE, "serve", str(repo), "--workers", "2", "--rest-port", "0",
                                 "--grpc-port", "0", "--ready-file", str(ready)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        deadline = time.time() + 60
        while wait_until_up and not ready.exists():
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.05)
        if not wait_until_up:
            time.sleep(1.0)  # the workers are importing and loading
        os.killpg(proc.pid, signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("serve --workers did not stop on Ctrl-C") from None
        assert "Traceback" not in out, out
        if wait_until_up:
            assert proc.returncode == 0, out
