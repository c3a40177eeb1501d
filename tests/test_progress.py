"""The terminal spinner: shown for a long step on a terminal, cleared before any output, absent
when stderr is not a terminal or SHIPYARD_PROGRESS=0."""
from __future__ import annotations

import os
import pty
import select
import subprocess
import sys

from conftest import run_cli


def _on_a_terminal(*args: str, env: dict | None = None) -> tuple[int, str]:
    """The CLI with stdin/stdout/stderr on a pseudo-terminal, as a user's shell runs it."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "shipyard", *map(str, args)], stdin=slave, stdout=slave,
                            stderr=slave, env={**os.environ, **(env or {})}, close_fds=True)
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            out += data
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=600), out.decode("utf-8", "replace")


def test_spinner_on_a_terminal_for_a_long_step(keras_paths, tmp_path):
    code, out = _on_a_terminal("convert", keras_paths["keras"], "--to", "tflite", "-o", tmp_path / "m.tflite")
    assert code == 0, out
    spins = [line for line in out.split("\r") if "converting keras" in line and " s" in line]
    assert spins, out  # the stage and its elapsed seconds, redrawn in place
    last = out.rsplit("\x1b[2K", 1)[1]  # everything after the last erase is the command's own output
    assert last.startswith(str(keras_paths["keras"])) and "verified" in last and "converting" not in last


def test_no_spinner_off_a_terminal_or_when_turned_off(keras_paths, tmp_path):
    proc = run_cli("convert", keras_paths["keras"], "--to", "tflite", "-o", tmp_path / "a.tflite")
    assert proc.returncode == 0 and "\x1b[2K" not in proc.stderr + proc.stdout
    code, out = _on_a_terminal("convert", keras_paths["keras"], "--to", "tflite", "-o", tmp_path / "b.tflite",
                               env={"SHIPYARD_PROGRESS": "0"})
    assert code == 0 and "\x1b[2K" not in out and "converting keras" not in out


def test_bench_shows_which_configuration_of_how_many(keras_paths):
    """Each configuration runs in its own process; the parent's line says which one is running."""
    code, out = _on_a_terminal("bench", keras_paths["pb"], keras_paths["onnx"], "--runs", "5", "--warmup", "1")
    assert code == 0, out
    assert "benchmarking 1 of 2: frozen.pb" in out, out
    table = out.rsplit("\x1b[2K", 1)[1]
    assert table.startswith("latency in ms") and "benchmarking" not in table
