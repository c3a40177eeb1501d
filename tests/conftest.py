"""Fixtures: real models built once per test session with the frameworks themselves."""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import warmcli

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="session", autouse=True)
def _keras_home(tmp_path_factory):
    os.environ["KERAS_HOME"] = str(tmp_path_factory.mktemp("keras_home"))


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def keras_example(models_dir):
    """(keras model, {format name: path}, input batch, reference output)."""
    from shipyard import examples

    model = examples.keras_cnn()
    paths = examples.save_keras_family(model, models_dir / "keras")
    x = np.random.default_rng(0).standard_normal((3, *examples.KERAS_INPUT_SHAPE)).astype("float32")
    return model, paths, x, np.asarray(model(x, training=False))


@pytest.fixture(scope="session")
def keras_paths(keras_example) -> dict[str, Path]:
    return keras_example[1]


@pytest.fixture(scope="session")
def tf1_graph(models_dir) -> dict[str, Path]:
    from shipyard import examples

    return examples.tf1_training_graph(models_dir / "tf1")


@pytest.fixture(scope="session")
def torch_example(models_dir):
    """(torch module, {format: path}, input batch, reference output)."""
    import torch

    from shipyard import examples

    module = examples.torch_cnn()
    paths = examples.save_torch_family(module, models_dir / "torch")
    x = np.random.default_rng(1).standard_normal((2, *examples.TORCH_INPUT_SHAPE)).astype("float32")
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    return module, paths, x, ref


_warm: warmcli.WarmCli | None = None


def warm_cli() -> warmcli.WarmCli | None:
    """This test process's warm CLI (tests/warmcli.py), started on first use; None when
    ``SHIPYARD_TEST_WARM_CLI=0``."""
    global _warm
    if _warm is None and warmcli.enabled():
        folder = Path(tempfile.mkdtemp(prefix="shipyard-warm-"))
        _warm = warmcli.WarmCli(folder)
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        atexit.register(_warm.close)
    return _warm


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real console entry point (``shipyard.cli.main``, fork guard included) in its own
    process: forked from the warm CLI, or a fresh interpreter with SHIPYARD_TEST_WARM_CLI=0."""
    full_env = {**os.environ, **(env or {})}
    warm = warm_cli()
    if warm is not None:
        command = [str(warm.bin / "shipyard"), *map(str, args)]
        full_env = warm.env(full_env)
    else:
        command = [sys.executable, "-c", "import sys; from shipyard.cli import main; sys.exit(main(sys.argv[1:]))",
                   *map(str, args)]
    return subprocess.run(command, check=False, capture_output=True, text=True, cwd=cwd, env=full_env, timeout=600)


def cli_inprocess(capsys, *args: str) -> subprocess.CompletedProcess:
    """The CLI in this process (``cli.run``): for tests of what a command prints and writes,
    not of crash containment; much cheaper than a fresh interpreter."""
    from shipyard.cli import run

    capsys.readouterr()
    code = run([str(a) for a in args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out, err)


def assert_clean_error(proc: subprocess.CompletedProcess, *fragments: str, code: int = 2) -> None:
    """A user error: the expected exit code, a 'shipyard:' line, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "shipyard:" in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, proc.stderr)
