"""PyTorch -> TFLite directly with litert-torch (its own environment, a subprocess), .pt2 ->
ONNX/TFLite, and the dynamo ONNX exporter as the default with the TorchScript one as fallback.

Models: the CNN / transformer block / LSTM+GRU built here (tests/torch_factories.py) and a real
trained one, Silero VAD 16 kHz, whose weights silero-vad ships as safetensors (its architecture
ported to PyTorch there and checked against the package's own TorchScript model). Every artifact
is run here by LiteRT or onnxruntime against PyTorch by hand, besides shipyard's verification.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import torch_factories
from conftest import assert_clean_error, run_cli
from corpus import tone
from shipyard.convert import torch_tflite
from shipyard.convert.api import convert_model
from shipyard.convert.options import ConvertOptions
from shipyard.convert.planner import plan
from shipyard.errors import ConversionError, UnsupportedError

TESTS = Path(__file__).resolve().parent


def silero_data() -> Path:
    spec = importlib.util.find_spec("silero_vad")
    assert spec is not None, "silero-vad is installed by scripts/setup.d/50-real-models.sh"
    return Path(spec.submodule_search_locations[0]) / "data"


def litert(path: Path, **feeds: np.ndarray) -> dict[str, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(str(path)).get_signature_runner()(**feeds)


def test_the_converter_environment_is_set_up():
    python = torch_tflite.converter_python()
    assert python is not None, "scripts/setup.d/65-litert-torch.sh creates it"
    assert plan("torch-module", "tflite")[0].tool == "litert-torch"  # the default when installed
    assert [e.dst for e in plan("torch-module", "tflite", "onnx2tf")] == ["onnx", "tflite"]


def test_cnn_factory_to_tflite_by_litert_torch(tmp_path):
    out = tmp_path / "cnn.tflite"
    result = convert_model("torch_factories:cnn", "tflite", out,
                           ConvertOptions(input_shape={"x": (1, 3, 32, 32)}, via="litert-torch"))
    assert result.path == ["torch-module", "tflite"] and result.verification.passed
    assert any("litert-torch 0.10.0 in its own environment" in n for n in result.notes)
    x = np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype(np.float32)
    got = litert(out, x=x)["output"]  # the source's names, the PyTorch (NCHW) layout
    with torch.no_grad():
        ref = torch_factories.cnn()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("factory,shape", [("block", (1, 6, 16)), ("recurrent", (1, 4, 8))])
def test_transformer_block_and_lstm_gru_by_litert_torch(tmp_path, factory, shape):
    out = tmp_path / f"{factory}.tflite"
    result = convert_model(f"torch_factories:{factory}", "tflite", out,
                           ConvertOptions(input_shape={"x": shape}, via="litert-torch"))
    assert result.verification.passed
    assert max(d.max_abs for d in result.verification.outputs) < 1e-4
    from shipyard.ops import tflite_ops
    from shipyard.sniff import open_model

    ops = tflite_ops(open_model(out)).ops
    assert not ops.get("custom"), ops  # builtins only: stock LiteRT runs it
    if factory == "block":
        assert "GELU" in ops["builtin"]  # exact GELU as one builtin op (onnx2tf rebuilds Erf from several)


def test_real_silero_vad_port_matches_the_packaged_torchscript_model():
    """The port is the package's model: with the TorchScript model's own weights it computes
    what that model computes, on a real 440 Hz tone with 64 samples of context."""
    scripted = torch.jit.load(str(silero_data() / "silero_vad.jit"))._model
    port = torch_factories.silero_vad_16k()
    port.load_state_dict(dict(zip(port.state_dict(), scripted.state_dict().values())))
    x = torch.from_numpy(np.concatenate([np.zeros(64, np.float32), tone(69, 512, 16000)])[None])
    state = torch.zeros(2, 1, 128)
    with torch.no_grad():
        for a, b in zip(port(x, state), scripted(x, state)):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.fixture(scope="module")
def silero_chunks() -> list[np.ndarray]:
    audio = np.concatenate([np.zeros(64, np.float32), tone(69, 4 * 512, 16000)]).astype(np.float32)
    return [audio[i * 512:i * 512 + 576][None] for i in range(4)]


def test_real_silero_vad_weights_stream_through_tflite(tmp_path, silero_chunks):
    """The shipped safetensors loaded with --weights, converted by litert-torch, then streamed:
    four consecutive chunks, the LSTM state fed back, LiteRT against PyTorch at every step.
    (The ONNX route cannot take this model: both ONNX exporters make axis 0 of every input the
    batch, and the state's axis 0 is its (h, c) pair, see test_real_silero_vad_onnx_route_says_why.)"""
    weights = silero_data() / "silero_vad_16k.safetensors"
    out = tmp_path / "vad.tflite"
    proc = run_cli("convert", "torch_factories:silero_vad_16k", "--weights", weights, "--to", "tflite", "-o", out,
                   "--via", "litert-torch", "--input-shape", "x=1,576", "--input-shape", "state=2,1,128", cwd=TESTS)
    assert proc.returncode == 0, proc.stderr
    assert "verified   yes" in proc.stdout
    module = torch_factories.silero_vad_16k()
    from safetensors.torch import load_file

    module.load_state_dict(load_file(str(weights)))
    state_t, state_l = torch.zeros(2, 1, 128), np.zeros((2, 1, 128), np.float32)
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(str(out))
    runner = interp.get_signature_runner()
    names = interp.get_signature_list()["serving_default"]["outputs"]
    for chunk in silero_chunks:
        with torch.no_grad():
            prob_t, state_t = module(torch.from_numpy(chunk), state_t)
        got = runner(x=chunk, state=state_l)
        prob_l, state_l = (got[names[0]], got[names[1]]) if got[names[0]].size == 1 else (got[names[1]], got[names[0]])
        np.testing.assert_allclose(prob_l, prob_t.numpy(), atol=1e-5)
        np.testing.assert_allclose(state_l, state_t.numpy(), atol=1e-4)


def test_real_silero_vad_onnx_route_says_why(tmp_path):
    out = tmp_path / "vad.onnx"
    proc = run_cli("convert", "torch_factories:silero_vad_16k", "--to", "onnx", "-o", out,
                   "--input-shape", "x=1,576", "--input-shape", "state=2,1,128", cwd=TESTS)
    assert_clean_error(proc, "torch.onnx.export failed", "this was the TorchScript exporter: the dynamo exporter failed (")
    assert not out.exists()


def test_pt2_to_onnx_keeps_its_dynamic_batch_and_to_tflite(tmp_path):
    import onnxruntime as ort

    module = torch_factories.block()
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(module, (torch.randn(2, 6, 16),), dynamic_shapes=({0: batch},))
    pt2 = tmp_path / "block.pt2"
    torch.export.save(program, str(pt2))
    onnx_out = tmp_path / "block.onnx"
    result = convert_model(str(pt2), "onnx", onnx_out)
    assert result.verification.passed
    assert any("dynamo exporter" in n for n in result.notes)
    x = np.random.default_rng(1).standard_normal((5, 6, 16)).astype(np.float32)  # a batch never exported
    sess = ort.InferenceSession(str(onnx_out))
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, module(torch.from_numpy(x)).numpy(), atol=1e-5, rtol=1e-4)
    tfl = tmp_path / "block.tflite"
    result = convert_model(str(pt2), "tflite", tfl)
    assert result.path == ["torch-export", "tflite"] and result.verification.passed


def test_dynamo_exporter_is_the_default(tmp_path):
    import onnx

    out = tmp_path / "cnn.onnx"
    result = convert_model("torch_factories:cnn", "onnx", out, ConvertOptions(input_shape={"x": (1, 3, 8, 8)}))
    assert "exported by the dynamo exporter (torch.export, opset 18)" in result.notes
    assert onnx.load(str(out)).opset_import[0].version == 18


def test_falls_back_to_the_torchscript_exporter_and_says_why(tmp_path):
    out = tmp_path / "guarded.onnx"
    result = convert_model("torch_factories:guarded", "onnx", out, ConvertOptions(input_shape={"x": (2, 8)}))
    assert result.verification.passed
    note = next(n for n in result.notes if n.startswith("exported by the TorchScript exporter"))
    assert "the dynamo exporter failed (" in note and "data" in note.lower(), note


def test_torchscript_source_uses_the_torchscript_exporter(torch_example, tmp_path):
    _, paths, _, _ = torch_example
    result = convert_model(str(paths["torchscript"]), "onnx", tmp_path / "m.onnx",
                           ConvertOptions(input_shape={"input": (1, 3, 12, 12)}))
    assert any("does not take TorchScript (ScriptModule)" in n for n in result.notes)


def test_missing_environment_is_one_clear_line_and_the_default_goes_through_onnx(tmp_path, monkeypatch):
    out = tmp_path / "m.tflite"
    proc = run_cli("convert", "torch_factories:cnn", "--to", "tflite", "-o", out, "--via", "litert-torch",
                   "--input-shape", "1,3,8,8", cwd=TESTS, env={"SHIPYARD_LITERT_TORCH_PYTHON": str(tmp_path / "none")})
    assert_clean_error(proc, "litert-torch converter environment is missing")
    assert "65-litert-torch.sh" in proc.stderr and not out.exists()
    monkeypatch.setenv("SHIPYARD_LITERT_TORCH_PYTHON", str(tmp_path / "none"))
    assert [e.dst for e in plan("torch-module", "tflite")] == ["onnx", "tflite"]


def test_a_route_that_does_not_reach_the_target_is_refused():
    with pytest.raises(UnsupportedError, match="no conversion from torchscript to tflite through litert-torch"):
        plan("torchscript", "tflite", "litert-torch")


def test_a_module_torch_export_cannot_capture_fails_whole_and_writes_nothing(tmp_path):
    out = tmp_path / "g.tflite"
    with pytest.raises(ConversionError, match="torch.export could not capture") as info:
        convert_model("torch_factories:guarded", "tflite", out,
                      ConvertOptions(input_shape={"x": (2, 8)}, via="litert-torch"))
    assert "\n" in info.value.message  # the exporter's whole explanation, not its first line
    assert not out.exists()


def test_an_op_litert_torch_cannot_lower_comes_back_with_its_message(tmp_path):
    out = tmp_path / "inv.tflite"
    proc = run_cli("convert", "torch_factories:inverse", "--to", "tflite", "-o", out, "--input-shape", "1,4,4",
                   cwd=TESTS)
    assert_clean_error(proc, "litert-torch could not convert torch_factories:inverse:", "--via onnx2tf")
    assert "AssertionError: " in proc.stderr  # the converter's own words, on the lines under the first
    assert not out.exists()
