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
