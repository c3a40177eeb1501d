"""ONNX -> TFLite / SavedModel / TF.js through onnx2tf, and PyTorch -> TFLite through ONNX.

Each model is built here with torch, exported to ONNX, converted by the real onnx2tf, and
checked by the verification core (which moves NCHW feeds to the NHWC inputs onnx2tf writes);
the TFLite artifacts are also run here by LiteRT against onnxruntime by hand.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import socket

import numpy as np
import pytest
import torch

import test_tfjs_browser as browser
from conftest import assert_clean_error, run_cli
from corpus import CORPUS
from shipyard.convert.api import convert_model
from shipyard.convert.planner import plan
from shipyard.errors import UnsupportedError
from shipyard.verify import relayout, restore_layout

served = browser.served  # the HTTP server fixture of the TF.js browser test
# found, not imported: importing onnx2tf sets process globals (TF_USE_LEGACY_KERAS, op determinism)
# that shipyard puts back after each conversion, but not after a bare import at collection time
pytestmark = pytest.mark.skipif(importlib.util.find_spec("onnx2tf") is None and not os.environ.get("CI"),
                                reason="onnx2tf is installed by scripts/setup.d/60-onnx2tf.sh")


class CNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.c2 = torch.nn.Conv2d(8, 16, 3, stride=2)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.c1(x)))
        return torch.softmax(self.fc(torch.relu(self.c2(x)).mean((2, 3))), -1)


class FeatureMap(torch.nn.Module):
    """An NCHW output: the verifier must move onnx2tf's NHWC output back."""

    def __init__(self):
        super().__init__()
        self.c = torch.nn.Conv2d(3, 5, 3, padding=1)

    def forward(self, x):
        return torch.sigmoid(self.c(x))


class Block(torch.nn.Module):
    """A transformer encoder block: LayerNorm, MatMul attention, Softmax, exact (Erf) GELU."""

    def __init__(self, d: int = 16, heads: int = 2):
        super().__init__()
        self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.qkv, self.o = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
        self.f1, self.f2 = torch.nn.Linear(d, 4 * d), torch.nn.Linear(4 * d, d)
        self.heads = heads

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2) for z in self.qkv(self.ln1(x)).chunk(3, -1))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), -1) @ v
        x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
        return x + self.f2(torch.nn.functional.gelu(self.f1(self.ln2(x))))


class Recurrent(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(8, 16, batch_first=True)
        self.gru = torch.nn.GRU(16, 12, batch_first=True)
        self.fc = torch.nn.Linear(12, 4)

    def forward(self, x):
        y, _ = self.lstm(x)
        y, _ = self.gru(y)
        return self.fc(y[:, -1])


def export(module, shape, path):
    torch.manual_seed(0)
    module = module.eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    torch.onnx.export(module, (torch.randn(*shape),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=17, dynamo=False)
    return path


def litert_vs_ort(onnx_path, tflite_path, x):
    """(onnxruntime output, LiteRT output fed channels-last where the TFLite input is)."""
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    ref = ort.InferenceSession(str(onnx_path)).run(None, {"x": x})[0]
    interp = Interpreter(str(tflite_path))
    runner = interp.get_signature_runner()
    spec = interp.get_input_details()[0]["shape_signature"]
    got = runner(x=relayout(x, tuple(int(d) for d in spec)))
    return ref, restore_layout(ref, got["y"])


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test (onnx2tf would download sample images)."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:1]}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_cnn_to_tflite_nhwc_and_static_batch_offline(tmp_path, no_network):
    from tensorflow.python.framework import config

    onnx_path = export(CNN(), (2, 3, 32, 32), tmp_path / "cnn.onnx")
    legacy_keras = os.environ.get("TF_USE_LEGACY_KERAS")
    result = convert_model(str(onnx_path), "tflite", tmp_path / "cnn.tflite")
    assert result.path == ["onnx", "tflite"] and result.verification.passed
    # onnx2tf's process globals are put back: tf.keras stays Keras 3, TF ops stay non-deterministic
    assert os.environ.get("TF_USE_LEGACY_KERAS") == legacy_keras and not config.is_op_determinism_enabled()
    assert any("channels-last" in n for n in result.notes)
    x = np.random.default_rng(3).standard_normal((3, 3, 32, 32)).astype(np.float32)
    ref, got = litert_vs_ort(onnx_path, tmp_path / "cnn.tflite", x)
    assert got.shape == (3, 10) and np.abs(ref - got).max() < 1e-5 and np.abs(ref).max() > 0.05
    # a static batch of image-like inputs is where onnx2tf reaches for its web samples
    import onnx

    proto = onnx.load(str(onnx_path))
    for t in [*proto.graph.input, *proto.graph.output]:
        t.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(proto, str(tmp_path / "static.onnx"))
    result = convert_model(str(tmp_path / "static.onnx"), "tflite", tmp_path / "static.tflite")
    assert result.verification.passed


def test_nchw_output_comes_back_in_source_layout(tmp_path):
    onnx_path = export(FeatureMap(), (2, 3, 16, 16), tmp_path / "fm.onnx")
    result = convert_model(str(onnx_path), "tflite", tmp_path / "fm.tflite")
    d = result.verification.outputs[0]
    assert result.verification.passed and d.shape_ref == (2, 5, 16, 16) and d.max_abs < 1e-5


def test_cnn_to_savedmodel_and_tfjs(tmp_path):
    onnx_path = export(CNN(), (2, 3, 32, 32), tmp_path / "cnn.onnx")
    sm = convert_model(str(onnx_path), "savedmodel", tmp_path / "sm")
    assert sm.path == ["onnx", "tf-savedmodel"] and sm.verification.passed
    assert (tmp_path / "sm" / "saved_model.pb").is_file() and not list((tmp_path / "sm").glob("*.tflite"))
    js = convert_model(str(onnx_path), "tfjs", tmp_path / "web")
    assert js.path == ["onnx", "tf-savedmodel", "tf-graphdef", "tfjs"] and js.verification.passed
    assert (tmp_path / "web" / "model.json").is_file()


def test_transformer_block_runs_on_builtin_ops(tmp_path):
    from shipyard.ops import list_ops

    onnx_path = export(Block(), (2, 6, 16), tmp_path / "block.onnx")
    import onnx

    assert "Erf" in {n.op_type for n in onnx.load(str(onnx_path)).graph.node}
    result = convert_model(str(onnx_path), "tflite", tmp_path / "block.tflite")
    assert result.verification.passed
    report = list_ops(tmp_path / "block.tflite")
    assert not report.ops["custom"], report.ops  # no FlexErf
    x = np.random.default_rng(4).standard_normal((3, 6, 16)).astype(np.float32)
    ref, got = litert_vs_ort(onnx_path, tmp_path / "block.tflite", x)
    assert got.shape == (3, 6, 16) and np.abs(ref - got).max() < 1e-4  # a [B, T, D] input keeps its layout


def test_lstm_gru_model(tmp_path):
    onnx_path = export(Recurrent(), (2, 4, 8), tmp_path / "seq.onnx")
    result = convert_model(str(onnx_path), "tflite", tmp_path / "seq.tflite")
    assert result.verification.passed and any("unrolled" in n for n in result.notes)
    x = np.random.default_rng(5).standard_normal((2, 4, 8)).astype(np.float32)
    ref, got = litert_vs_ort(onnx_path, tmp_path / "seq.tflite", x)
    assert np.abs(ref - got).max() < 1e-5


def test_real_paddle_classifier_from_the_corpus(tmp_path):
    real = CORPUS["ocr-cls-onnx"]
    feeds = real.inputs()
    result = convert_model(str(real.path), "tflite", tmp_path / "cls.tflite", feeds=feeds)
    assert result.verification.passed, result.verification.failures
    from shipyard.runtimes import open_runner
    from shipyard.sniff import open_model
    from shipyard.verify import model_outputs

    with open_runner(open_model(real.path)) as source:
        sig, outputs = model_outputs(tmp_path / "cls.tflite", [feeds], reference=source.signature)
    assert sig.inputs[0].shape[-1] == 3  # NHWC on the phone
    real.check(outputs)  # still reads upside-down text lines right


def test_torchscript_to_tflite_through_onnx(torch_example, tmp_path):
    _, paths, _x, _ref = torch_example
    assert [e.dst for e in plan("torchscript", "tflite")] == ["onnx", "tflite"]
    proc = run_cli("convert", paths["torchscript"], "--to", "tflite", "-o", tmp_path / "m.tflite",
                   "--input-shape", "1,3,12,12")
    assert proc.returncode == 0, proc.stderr
    assert "torchscript -> onnx -> tflite" in proc.stdout and "verified   yes" in proc.stdout


def test_unsupported_op_is_named_with_its_node(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu0"),
         helper.make_node("CastLike", ["r", "like"], ["y"], name="castlike_node")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
              helper.make_tensor_value_info("like", TensorProto.DOUBLE, [1])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [1, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "cl.onnx"))
    out = tmp_path / "cl.tflite"
    with pytest.raises(UnsupportedError, match=r"CastLike \(nodes: castlike_node\)"):
        convert_model(str(tmp_path / "cl.onnx"), "tflite", out)
    assert not out.exists() and not list(tmp_path.glob(".cl.tflite*"))
    assert_clean_error(run_cli("convert", tmp_path / "cl.onnx", "--to", "tflite", "-o", out), "CastLike", "castlike_node")
    assert not out.exists()


def test_flex_op_in_a_tflite_is_refused(tmp_path):
    """The op-list check itself, on a TFLite model with a Flex op written by TF's converter."""
    import tensorflow as tf

    from shipyard.convert.onnx_tf import check_builtin_ops

    @tf.function(input_signature=[tf.TensorSpec([2], tf.float32)])
    def f(x):
        return tf.math.erf(x) + tf.raw_ops.Bincount(arr=tf.cast(x, tf.int32), size=3, weights=[])[0]

    conv = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    (tmp_path / "flex.tflite").write_bytes(conv.convert())
    with pytest.raises(UnsupportedError, match="Bincount"):
        check_builtin_ops(tmp_path / "flex.tflite")


@pytest.mark.skipif((browser.CHROMIUM is None or not browser.TFJS.is_file()) and not os.environ.get("CI"),
                    reason="needs Chromium and @tensorflow/tfjs (run scripts/setup)")
def test_onnx_cnn_as_tfjs_runs_in_chromium(served, tmp_path_factory):
    """ONNX -> TF.js graph model, loaded by the real @tensorflow/tfjs in headless Chromium, fed
    NHWC, and compared with onnxruntime on the NCHW source."""
    import onnxruntime as ort

    site, base = served
    onnx_path = export(CNN(), (2, 3, 32, 32), tmp_path_factory.mktemp("src") / "cnn.onnx")
    convert_model(str(onnx_path), "tfjs", site / "model")
    x = np.random.default_rng(6).standard_normal((2, 3, 32, 32)).astype(np.float32)
    ref = ort.InferenceSession(str(onnx_path)).run(None, {"x": x})[0]
    nhwc = x.transpose(0, 2, 3, 1)
    shutil.copy(browser.TFJS, site / "tf.min.js")
    (site / "index.html").write_text(browser.PAGE)
    (site / "input.json").write_text(json.dumps({"shape": list(nhwc.shape), "data": nhwc.ravel().tolist()}))
    result = browser._run_page(f"{base}/index.html", tmp_path_factory.mktemp("chromium-profile"))
    assert result["ok"], result
    got = np.array(result["data"], dtype=np.float32).reshape(result["shape"])
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
