"""PyTorch checkpoints as they are really saved: state_dicts, training checkpoints, the legacy
(non-zip) torch.save format, .safetensors, tensors saved on a GPU, and hostile pickles."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import assert_clean_error, cli_inprocess, run_cli
from shipyard.errors import ModelFormatError, ModelLoadError
from shipyard.inspection import inspect_model
from shipyard.sniff import open_model


def small_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(),
                               torch.nn.Linear(8 * 6 * 6, 10))


EXPECTED = {"0.weight": ([8, 3, 3, 3], "float32"), "0.bias": ([8], "float32"), "1.weight": ([8], "float32"),
            "1.bias": ([8], "float32"), "1.running_mean": ([8], "float32"), "1.running_var": ([8], "float32"),
            "1.num_batches_tracked": ([], "int64"), "3.weight": ([10, 288], "float32"), "3.bias": ([10], "float32")}
PARAMS = 216 + 8 * 5 + 1 + 2880 + 10


def tensors(summary) -> dict:
    return {t["name"]: t for t in summary.details["tensors"]}


@pytest.mark.parametrize("how", ["zip", "legacy", "safetensors"])
def test_state_dict_lists_every_tensor(tmp_path, how):
    state = small_net().state_dict()
    if how == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "net.safetensors"
        save_file(state, str(path), metadata={"format": "pt"})
    else:
        path = tmp_path / ("net.pth" if how == "zip" else "net_legacy.bin")
        torch.save(state, path, _use_new_zipfile_serialization=how == "zip")
    assert open_model(path).format == "torch-checkpoint"
    s = inspect_model(path)
    got = tensors(s)
    assert {k: (v["shape"], v["dtype"]) for k, v in got.items()} == EXPECTED
    assert s.params == PARAMS and s.param_bytes == {"float32": (PARAMS - 1) * 4, "int64": 8}
    assert got["3.weight"]["bytes"] == 2880 * 4 and got["3.weight"]["numel"] == 2880
    if how != "safetensors":
        assert {t["device"] for t in got.values()} == {"cpu"}
    else:
        assert s.metadata == {"format": "pt"}


def test_training_checkpoint_names_nested_tensors(tmp_path):
    net = small_net()
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 7, "model": net.state_dict(), "optimizer": opt.state_dict()}, path)
    s = inspect_model(path)
    got = tensors(s)
    assert got["model.3.weight"]["shape"] == [10, 288]
    assert got["optimizer.state.0.exp_avg"]["shape"] == [8, 3, 3, 3]  # Adam's moments, named by their path
    assert s.details["other_entries"]["epoch"] == "7"


def test_device_each_tensor_was_saved_on(tmp_path):
    """A state_dict saved on a GPU machine: saved here with storages tagged 'cuda:0' (what
    torch.save records for CUDA tensors) in a separate interpreter, read without a GPU."""
    path = tmp_path / "net_gpu.pth"
    subprocess.run([sys.executable, "-c", f"""
import torch
torch.serialization.register_package(0, lambda s: "cuda:0" if s.nbytes() > 100 else None, lambda o, loc: None)
torch.manual_seed(0)
torch.save(torch.nn.Linear(64, 4).state_dict(), {str(path)!r})
"""], check=True, timeout=120)
    proc = run_cli("inspect", path, "--json")
    assert proc.returncode == 0, proc.stderr
    got = {t["name"]: t["device"] for t in json.loads(proc.stdout)["details"]["tensors"]}
    assert got == {"weight": "cuda:0", "bias": "cpu"}  # 1 KiB weight tagged cuda:0, 16-byte bias left on cpu
    text = run_cli("inspect", path).stdout
    rows = {line.split()[0]: line.split() for line in text.split("  tensors")[1].splitlines()[1:]}
    assert "(saved on cpu, cuda:0)" in text and rows["weight"][-4] == "cuda:0" and rows["bias"][-4] == "cpu"


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(2), "payload": Evil()}, path)
    assert not marker.exists()
    with pytest.raises(ModelLoadError, match="weights_only=True"):
        inspect_model(path)
    assert not marker.exists()
    assert_clean_error(cli_inprocess(capsys, "inspect", path), "refused", "system")
    assert_clean_error(cli_inprocess(capsys, "run", path, "--random"), "weights, not a program")  # never unpickled
    assert not marker.exists()


def test_bad_checkpoints(tmp_path, capsys):
    path = tmp_path / "net.pth"
    torch.save(small_net().state_dict(), path)
    data = path.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises((ModelFormatError, ModelLoadError)):
        inspect_model(tmp_path / "cut.pth")
    assert_clean_error(cli_inprocess(capsys, "inspect", tmp_path / "cut.pth"))
    assert_clean_error(cli_inprocess(capsys, "run", path, "--random"), "weights, not a program")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((10**6).to_bytes(8, "little") + b'{"a": 1}' + b"\0" * 30)  # header claims more than the file
    assert_clean_error(cli_inprocess(capsys, "inspect", bad))


FACTORIES = '''
import torch


def make():
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def wide():
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def broken():
    raise RuntimeError("CUDA is not available on this machine")
'''


def test_factory_plus_weights_is_a_source(tmp_path):
    import onnxruntime as ort

    (tmp_path / "mymodels.py").write_text(FACTORIES)
    torch.manual_seed(7)
    trained = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    torch.save({"epoch": 3, "model": trained.state_dict()}, tmp_path / "net.pth")  # a training checkpoint
    proc = run_cli("convert", "mymodels:make", "--weights", "net.pth", "--to", "onnx", "-o", "m.onnx",
                   "--input-shape", "2,4", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "verified   yes" in proc.stdout
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"input": x})[0]
    with torch.no_grad():
        want = trained(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)  # the checkpoint's weights, not the factory's fresh ones

    assert_clean_error(run_cli("convert", "net.pth", "--to", "onnx", "-o", "x.onnx", cwd=tmp_path),
                       "weights, not a program", "--weights net.pth")
    assert_clean_error(run_cli("convert", "mymodels:broken", "--to", "onnx", "-o", "x.onnx", "--input-shape", "1,4",
                               cwd=tmp_path), "mymodels:broken() raised RuntimeError: CUDA is not available")
    assert_clean_error(run_cli("convert", "mymodels:wide", "--weights", "net.pth", "--to", "onnx", "-o", "x.onnx",
                               "--input-shape", "1,4", cwd=tmp_path), "does not fit the module", "size mismatch")
    assert not (tmp_path / "x.onnx").exists()


def test_torch_export_program_inspects_and_runs(tmp_path, capsys):
    from shipyard.runtimes import open_runner

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 2)).eval()
    program = torch.export.export(net, (torch.randn(2, 3, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, tmp_path / "net.pt2")
    s = inspect_model(tmp_path / "net.pt2")
    assert s.format == "torch-export" and s.params == 4 * 27 + 4 + 288 + 2
    assert s.inputs[0].shape == (-1, 3, 8, 8) and s.ops == {"conv2d": 1, "flatten.using_ints": 1, "linear": 1, "relu": 1}
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)  # batch 3: the dynamic dim
    with open_runner(tmp_path / "net.pt2") as runner:
        got = next(iter(runner.run({"input": x}).values()))
    with torch.no_grad():
        np.testing.assert_allclose(got, net(torch.from_numpy(x)).numpy(), atol=1e-6)
    data = (tmp_path / "net.pt2").read_bytes()
    (tmp_path / "cut.pt2").write_bytes(data[: len(data) // 2])
    assert_clean_error(cli_inprocess(capsys, "run", tmp_path / "cut.pt2", "--random"))
