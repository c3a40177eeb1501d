"""The suite's own parallelism: tests marked with one ``xdist_group`` must share a worker (the
fixed-port docs pages, the Ray clusters, the one libtorch build). pytest 9.2 with pytest-xdist 3.8
dropped the grouping silently (xdist renames ``item._nodeid``, which pytest 9.2 no longer reads)."""
from __future__ import annotations

import re
import subprocess
import sys

_GROUPED = """
import os, pytest
G = pytest.mark.xdist_group("together")
@G
def test_a(): print("worker", os.environ["PYTEST_XDIST_WORKER"])
@G
def test_b(): print("worker", os.environ["PYTEST_XDIST_WORKER"])
@G
def test_c(): print("worker", os.environ["PYTEST_XDIST_WORKER"])
@G
def test_d(): print("worker", os.environ["PYTEST_XDIST_WORKER"])
def test_e(): pass
def test_f(): pass
"""


def test_a_group_runs_on_one_worker(tmp_path):
    (tmp_path / "test_grouped.py").write_text(_GROUPED)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-v", "-p", "no:cacheprovider",
                           "-p", "no:randomly", "-rA", str(tmp_path / "test_grouped.py")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    workers = {m.group(1) for m in re.finditer(r"\[(gw\d)\] .*PASSED .*test_[abcd]@together", proc.stdout)}
    assert len(workers) == 1, proc.stdout
