"""TorchScript/PyTorch -> ONNX keeps the batch and the axes named with --dynamic dynamic, and the
verification proves it on a second input shape."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import assert_clean_error, run_cli
from shipyard.convert.api import convert_model
from shipyard.convert.options import ConvertOptions
from shipyard.errors import UsageError
from shipyard.verify import VerificationError


def onnx_dims(path) -> list:
    import onnx

    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_param or d.dim_value for d in dims]


def test_named_axes_stay_dynamic_and_are_verified_on_two_shapes(torch_example, tmp_path):
    import onnxruntime as ort

    module, paths, _, _ = torch_example
    out = tmp_path / "dyn.onnx"
    proc = run_cli("convert", paths["torchscript"], "--to", "onnx", "-o", out, "--input-shape", "1,3,12,12",
                   "--dynamic", "2,3")
    assert proc.returncode == 0, proc.stderr
    assert "verified on a second input shape too: input [2, 3, 24, 24]" in proc.stdout
    assert onnx_dims(out) == ["batch", 3, "input_dim2", "input_dim3"]
    x = np.random.default_rng(0).standard_normal((3, 3, 20, 28)).astype(np.float32)  # a shape never traced
    got = ort.InferenceSession(str(out)).run(None, {"input": x})[0]
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-4)


def test_without_dynamic_only_the_batch_is_dynamic(torch_example, tmp_path):
    _, paths, _, _ = torch_example
    out = tmp_path / "fixed.onnx"
    result = convert_model(str(paths["torchscript"]), "onnx", out, ConvertOptions(input_shape={"input": (1, 3, 12, 12)}))
    assert onnx_dims(out) == ["batch", 3, 12, 12]
    assert any("second input shape too: input [2, 3, 12, 12]" in n for n in result.notes)


class FixedSize(torch.nn.Module):
    """Flatten + Linear: only 8x8 images fit, so H and W cannot be dynamic."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 8 * 8, 4)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_a_wrong_dynamic_claim_fails_verification(tmp_path):
    traced = torch.jit.trace(FixedSize().eval(), torch.randn(1, 3, 8, 8))
    traced.save(str(tmp_path / "fixed.pt"))
    opts = ConvertOptions(input_shape={"input": (1, 3, 8, 8)}, dynamic={"x": (2, 3)})
    with pytest.raises(VerificationError, match=r"second input shape \(x \[2, 3, 16, 16\]\)"):
        convert_model(str(tmp_path / "fixed.pt"), "onnx", tmp_path / "fixed.onnx", opts)
    with pytest.raises(UsageError, match="'y' is not a tensor input"):
        convert_model(str(tmp_path / "fixed.pt"), "onnx", tmp_path / "f2.onnx",
                      ConvertOptions(input_shape={"input": (1, 3, 8, 8)}, dynamic={"y": (2,)}))
    assert_clean_error(run_cli("convert", tmp_path / "fixed.pt", "--to", "onnx", "-o", tmp_path / "f3.onnx",
                               "--input-shape", "1,3,8,8", "--dynamic", "x:7"), "axis 7 is out of range")
    assert not (tmp_path / "f2.onnx").exists() and not (tmp_path / "f3.onnx").exists()
