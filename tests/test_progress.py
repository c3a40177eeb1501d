"""The terminal spinner: shown for a long step on a terminal, cleared before any output, absent
when stderr is not a terminal or SHIPYARD_PROGRESS=0."""
from __future__ import annotations

import os
import pty
import re
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


def test_bench_shows_a_bar_of_configurations_with_rate_and_eta(keras_paths):
    """Each configuration runs in its own process; the parent's bar says which one of how many,
    how many per second and the time left."""
    code, out = _on_a_terminal("bench", keras_paths["pb"], keras_paths["onnx"], "--runs", "5", "--warmup", "1")
    assert code == 0, out
    bars = [line for line in out.split("\r") if "benchmarking  " in line and "1/2" in line]
    assert bars, out
    assert re.search(r"benchmarking  █*░+  1/2  \d+\.\d+ config/s  eta \d+ s  model\.onnx", bars[-1]), bars[-1]
    table = out.rsplit("\x1b[2K", 1)[1]
    assert table.startswith("latency in ms") and "benchmarking" not in table


def test_quiet_turns_the_bar_off(keras_paths):
    code, out = _on_a_terminal("bench", keras_paths["pb"], keras_paths["onnx"], "--runs", "5", "--warmup", "1",
                               "--quiet")
    assert code == 0 and "\x1b[2K" not in out and "benchmarking" not in out and "latency in ms" in out, out


def test_ship_steps_are_counted_with_the_current_stage_beside_them(keras_paths, tmp_path):
    code, out = _on_a_terminal("ship", keras_paths["keras"], "-o", tmp_path / "dist", "--targets", "onnx",
                               "--runs", "3")
    assert code == 0, out
    bars = [line for line in out.split("\r") if "shipping model.keras  " in line]
    assert any(re.search(r"  \d/9  (\d+\.\d+ step/s  eta \d+ s|– step/s)  \S", b) for b in bars), bars
    assert any("converting" in b for b in bars), bars  # the step's own stage beside the bar
    code, out = _on_a_terminal("ship", keras_paths["keras"], "-o", tmp_path / "quiet", "--targets", "onnx",
                               "--runs", "3", "-q")
    assert code == 0 and "\x1b[2K" not in out and "· inspect" not in out and "shipped" in out, out


_COUNTED = """
import os, sys, time
os.environ["SHIPYARD_PROGRESS"] = "1"
from shipyard import guard, progress
progress.DELAY_S = 0.2
for i in range(4):  # what the quantization search says as each trial starts (it knows nothing of bars)
    guard.stage(f"measuring sensitivity at the outputs: {i + 1}/4")
    time.sleep(0.5)
guard.stage("calibrating")
time.sleep(0.5)
print("done")
"""


def test_a_stage_that_says_i_of_n_gets_a_bar():
    """Modules that only call guard.stage (the quantization search: ``...: 5/120``) get a bar with
    a rate and the time left; the next plain stage is a spinner again."""
    proc = subprocess.run([sys.executable, "-c", _COUNTED], check=False, capture_output=True, timeout=60)
    err = proc.stderr.decode()  # bytes: text mode would turn the "\r" redraws into line ends
    assert proc.returncode == 0, err
    lines = [line for line in err.split("\r") if line.strip("\x1b[2K")]
    bars = [line for line in lines if "measuring sensitivity at the outputs  " in line]
    assert any(re.search(r"  [23]/4  \d\.\d\d/s  eta \d+ s · \d+ s", b) for b in bars), lines
    assert any("calibrating ·" in line and "/4" not in line for line in lines), lines
    assert proc.stdout == b"done\n"
