"""The warm CLI (tests/warmcli.py) that most CLI tests and every docs page go through must
behave like the console script a user runs: same output, same exit codes."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import warm_cli


@pytest.mark.parametrize("args", [["--version"], ["inspect", "/no/such/model.onnx"], ["no-such-command"]])
def test_warm_and_fresh_cli_print_the_same(args, tmp_path):
    warm = warm_cli()
    if warm is None:
        pytest.skip("SHIPYARD_TEST_WARM_CLI=0")
    fresh = subprocess.run([warm.real, *args], check=False, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    forked = subprocess.run(["shipyard", *args], check=False, capture_output=True, text=True, cwd=tmp_path, timeout=120,
                            env=warm.env(dict(os.environ)))
    assert (forked.returncode, forked.stdout, forked.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)


def _children(pid: int) -> set[int]:
    try:
        return {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:
        return set()


def _descendants(pid: int) -> set[int]:
    found = _children(pid)
    for child in list(found):
        found |= _descendants(child)
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z":
                alive.add(pid)
        except OSError:
            pass
    return alive


def test_a_killed_caller_takes_its_command_with_it(tmp_path):
    """``kill -9`` of the stand-in must not leave the forked command running (a server would
    keep its port), and a stand-in without its warm process runs the real CLI."""
    import onnx
    from onnx import TensorProto, helper

    warm = warm_cli()
    if warm is None:
        pytest.skip("SHIPYARD_TEST_WARM_CLI=0")
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), tmp_path / "m.onnx")
    before = _children(warm.proc.pid)
    caller = subprocess.Popen(["shipyard", "bench", "m.onnx", "--runs", "100000000", "-q"], cwd=tmp_path,
                              env=warm.env(dict(os.environ)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not _children(warm.proc.pid) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    forked = _children(warm.proc.pid) - before
    assert forked, "the command was not forked from the warm process"
    deadline = time.monotonic() + 60  # the crash guard's worker, and bench's measurement process
    while len(_descendants(warm.proc.pid) - before) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    tree = _descendants(warm.proc.pid) - before
    assert len(tree) >= 3 and caller.poll() is None, "the command ended by itself: nothing to kill"
    caller.kill()
    caller.wait()
    deadline = time.monotonic() + 30
    while _alive(tree) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(tree), "the command (or a process it started) outlived its caller"

    gone = subprocess.run(["shipyard", "--version"], check=False, capture_output=True, text=True, timeout=60,
                          env={**warm.env(dict(os.environ)), "SHIPYARD_TEST_WARM_SOCKET": str(tmp_path / "none.sock")})
    assert gone.returncode == 0 and gone.stdout.startswith("shipyard ")


def test_a_different_interpreter_environment_gets_a_fresh_interpreter(tmp_path):
    """PYTHONPATH and friends act when an interpreter starts: a fork cannot take them on, so
    such a command runs the real console script (a blocked module must really be blocked)."""
    warm = warm_cli()
    if warm is None:
        pytest.skip("SHIPYARD_TEST_WARM_CLI=0")
    (tmp_path / "sitecustomize.py").write_text("print('fresh interpreter')\n")
    env = {**warm.env(dict(os.environ)), "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run(["shipyard", "--version"], check=False, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0 and proc.stdout.startswith("fresh interpreter\nshipyard "), proc.stdout
