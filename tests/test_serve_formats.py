"""One server, four formats: TFLite (LiteRT), SavedModel (TensorFlow), TorchScript (torch), ONNX."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import requests

from test_serve import Server


@pytest.mark.slow
def test_serves_tflite_savedmodel_torchscript_and_onnx(tmp_path, keras_example, torch_example):
    import tritonclient.http as httpclient

    _, kpaths, kx, kref = keras_example
    _, tpaths, tx, tref = torch_example
    repo = tmp_path / "repo"
    layout = {"cnn_tflite": kpaths["tflite"], "cnn_saved": kpaths["savedmodel"], "cnn_onnx": kpaths["onnx"],
              "torch_cnn": tpaths["torchscript"]}
    for name, src in layout.items():
        target = repo / name / "1" / src.name
        target.parent.mkdir(parents=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, target)
    server = Server(repo, "--no-access-log")
    try:
        server.wait_for(lambda: requests.get(f"{server.rest}/v2/health/ready").status_code == 200, timeout=120)
        client = httpclient.InferenceServerClient(server.rest.removeprefix("http://"))
        for name, x, ref in [("cnn_tflite", kx, kref), ("cnn_saved", kx, kref), ("cnn_onnx", kx, kref),
                             ("torch_cnn", tx, tref)]:
            meta = client.get_model_metadata(name)
            inp = meta["inputs"][0]
            batch = x[:1]
            tensor = httpclient.InferInput(inp["name"], list(batch.shape), "FP32")
            tensor.set_data_from_numpy(batch)
            result = client.infer(name, [tensor])
            out = result.as_numpy(meta["outputs"][0]["name"])
            np.testing.assert_allclose(out, ref[:1], rtol=1e-3, atol=1e-4, err_msg=name)
            platform = {"cnn_tflite": "tflite", "cnn_saved": "tensorflow_savedmodel", "cnn_onnx": "onnxruntime_onnx",
                        "torch_cnn": "pytorch_libtorch"}[name]  # Triton's names, by the model's format
            assert meta["platform"] == platform and client.get_model_config(name)["platform"] == platform
            assert client.get_model_config(name)["input"][0]["dims"] == inp["shape"]  # no batching configured: whole shapes
    finally:
        assert server.stop() == 0
