"""Encrypted models: every loader reads them with the key, in memory; tampering is detected."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from conftest import assert_clean_error, cli_inprocess, run_cli
from shipyard.inspection import inspect_model
from shipyard.protect import KEY_ENV, AuthenticationError, encrypt_model, generate_key, read_key
from shipyard.runtimes import open_runner

IN_MEMORY = ["onnx", "tflite", "pb", "keras", "h5", "tfjs"]


@pytest.fixture(scope="module")
def key_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "model.key"
    generate_key(path)
    return path


@pytest.fixture
def with_key(key_file, monkeypatch):
    monkeypatch.setenv(KEY_ENV, str(key_file))
    return key_file


def _encrypt(src, fmt, key_file, out):
    from shipyard.formats import model_files

    out.write_bytes(encrypt_model(src, fmt, read_key(key_file), model_files(src, fmt)))
    return out


def test_keygen_is_private_and_never_overwrites(tmp_path, capsys):
    key = generate_key(tmp_path / "k")
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert len(read_key(key)) == 32
    assert_clean_error(cli_inprocess(capsys, "keygen", "-o", key), "refusing to overwrite")


@pytest.mark.parametrize("name", IN_MEMORY)
def test_encrypted_model_inspects_and_runs_like_the_plaintext(keras_example, key_file, with_key, tmp_path, name):
    _, paths, x, ref = keras_example
    fmt = inspect_model(paths[name]).format
    enc = _encrypt(paths[name], fmt, key_file, tmp_path / "model.enc")
    assert paths[name].name.encode() not in enc.read_bytes()[200:]  # body is ciphertext
    plain, secret = inspect_model(paths[name]), inspect_model(enc)
    assert (secret.format, secret.ops, secret.params, secret.flops) == (plain.format, plain.ops, plain.params, plain.flops)
    with open_runner(enc) as runner:
        out = runner.run({runner.signature.inputs[0].name: x})
    np.testing.assert_allclose(next(iter(out.values())), ref, rtol=1e-4, atol=1e-5)


def test_torchscript_and_no_plaintext_on_disk(torch_example, key_file, tmp_path):
    _, paths, x, ref = torch_example
    enc = _encrypt(paths["torchscript"], "torchscript", key_file, tmp_path / "model.pt.enc")
    np.save(tmp_path / "x.npy", x)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {"TMPDIR": str(scratch), KEY_ENV: str(key_file)}
    proc = run_cli("run", enc, "--input", f"input={tmp_path / 'x.npy'}", "-o", tmp_path / "y.npz", env=env)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npz")["output"], ref, rtol=1e-4, atol=1e-5)
    assert list(scratch.iterdir()) == []
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    plaintext = paths["torchscript"].read_bytes()[:4096]
    assert not any(p.read_bytes()[:4096] == plaintext for p in written)


def test_every_flipped_byte_fails_authentication(keras_paths, key_file, tmp_path, capsys):
    enc = _encrypt(keras_paths["onnx"], "onnx", key_file, tmp_path / "m.enc")
    data = enc.read_bytes()
    for pos in (0, 5, 8, 9, 10, 15, 23, 25, 40, len(data) // 2, len(data) - 1):
        bad = bytearray(data)
        bad[pos] ^= 0x01
        enc.write_bytes(bytes(bad))
        with pytest.raises(AuthenticationError, match="authentication failed"):
            os.environ[KEY_ENV] = str(key_file)
            try:
                inspect_model(enc)
            finally:
                del os.environ[KEY_ENV]
    enc.write_bytes(data)
    other = generate_key(tmp_path / "other.key")
    assert_clean_error(cli_inprocess(capsys, "run", enc, "--key-file", other), "authentication failed")
    assert_clean_error(cli_inprocess(capsys, "inspect", enc), "encrypted: give its key")
    # encrypting without a key says so (it used to say the plaintext model was encrypted)
    assert KEY_ENV not in os.environ
    assert_clean_error(cli_inprocess(capsys, "encrypt", keras_paths["onnx"], "-o", tmp_path / "x.enc"), "encrypting needs a key")
    assert not (tmp_path / "x.enc").exists()


def test_savedmodel_says_it_cannot_load_from_memory(keras_paths, key_file, tmp_path, capsys):
    enc = _encrypt(keras_paths["savedmodel"], "tf-savedmodel", key_file, tmp_path / "sm.enc")
    proc = cli_inprocess(capsys, "inspect", enc, "--key-file", key_file, "--json")
    assert proc.returncode == 0, proc.stderr  # the signature is read from memory
    assert_clean_error(cli_inprocess(capsys, "run", enc, "--key-file", key_file), "cannot be run without writing the plaintext")


def test_decrypt_round_trip(keras_paths, key_file, tmp_path, capsys):
    for name in ("onnx", "tfjs"):
        enc = tmp_path / f"{name}.enc"
        proc = cli_inprocess(capsys, "encrypt", keras_paths[name], "-o", enc, "--key-file", key_file)
        assert proc.returncode == 0, proc.stderr
        out = tmp_path / f"{name}.plain"
        assert cli_inprocess(capsys, "decrypt", enc, "-o", out, "--key-file", key_file).returncode == 0
        if keras_paths[name].is_dir():
            assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in keras_paths[name].iterdir())
            assert (out / "model.json").read_bytes() == (keras_paths[name] / "model.json").read_bytes()
        else:
            assert out.read_bytes() == keras_paths[name].read_bytes()
    assert_clean_error(cli_inprocess(capsys, "encrypt", enc, "-o", tmp_path / "again", "--key-file", key_file), "already encrypted")


def test_serve_an_encrypted_model(key_file, tmp_path):
    """The server decrypts in memory too: same answers as the plaintext, no plaintext on disk."""
    import requests

    from shipyard import examples
    from test_serve import Server

    plain = tmp_path / "plain"
    weights = examples.onnx_mlp(plain / "model.onnx", seed=3)
    repo = tmp_path / "repo"
    (repo / "mlp" / "1").mkdir(parents=True)
    _encrypt(plain / "model.onnx", "onnx", key_file, repo / "mlp" / "1" / "model.onnx.enc")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    os.environ["TMPDIR"] = str(scratch)
    try:
        server = Server(repo, "--key-file", str(key_file))
    finally:
        del os.environ["TMPDIR"]
    try:
        server.wait_for(lambda: requests.get(f"{server.rest}/v2/models/mlp/ready").status_code == 200)
        x = np.random.default_rng(0).standard_normal((2, 16)).astype("float32")
        body = {"inputs": [{"name": "x", "shape": [2, 16], "datatype": "FP32", "data": x.ravel().tolist()}]}
        reply = requests.post(f"{server.rest}/v2/models/mlp/infer", json=body, timeout=30)
        assert reply.status_code == 200, reply.text
        got = np.asarray(reply.json()["outputs"][0]["data"], dtype=np.float32).reshape(2, -1)
        np.testing.assert_allclose(got, examples.mlp_reference(weights, x), rtol=1e-5, atol=1e-5)
        secret = (plain / "model.onnx").read_bytes()[-512:]  # weight bytes
        written = [p for p in list(scratch.rglob("*")) + list(repo.rglob("*")) if p.is_file()]
        assert not any(secret in p.read_bytes() for p in written)
    finally:
        assert server.stop() == 0
