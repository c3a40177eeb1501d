"""The docs cannot rot: the walkthrough is executed, and every shipyard command line in the
docs and the README must parse with the real CLI."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from shipyard.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
BLOCK = re.compile(r"```(bash|console|sh)\n(.*?)```", re.S)


def _blocks(page: Path, kinds=("bash", "console", "sh")) -> list[str]:
    return [body for kind, body in BLOCK.findall(page.read_text()) if kind in kinds]


def _command_lines(page: Path) -> list[str]:
    """Every ``shipyard ...`` line of the page's code blocks (continuations and quoted
    newlines joined, comments and environment assignments dropped)."""
    lines = []
    for block in _blocks(page):
        pending = ""
        for raw in block.replace("\\\n", " ").splitlines():
            pending = f"{pending} {raw.strip()}" if pending else raw.strip()
            try:
                shlex.split(pending)
            except ValueError:
                continue  # a quote spans lines
            line = re.sub(r"^(\w+=\S+\s+)+", "", pending.removeprefix("$ "))
            pending = ""
            if line.startswith("shipyard "):
                lines.append(line.split("  #")[0].split(" # ")[0].strip())
    return lines


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_documented_command_parses(page):
    parser = build_parser()
    for line in _command_lines(page):
        argv = shlex.split(line)[1:]
        if any("|" in a or "..." in a or a.endswith("..") for a in argv):
            continue  # a synopsis with alternatives, not a runnable line
        try:
            parser.parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"{page.name}: `{line}` does not parse (exit {exc.code})")


def test_documented_commands_cover_every_command():
    documented = {shlex.split(line)[1] for page in PAGES for line in _command_lines(page)}
    parser_commands = set(build_parser()._subparsers._group_actions[0].choices)
    missing = sorted(parser_commands - documented)
    assert not missing, f"commands without a documented example: {missing}"


@pytest.mark.slow
def test_walkthrough_runs(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "KERAS_HOME": str(tmp_path / ".keras"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    for block in _blocks(ROOT / "docs" / "walkthrough.md", ("bash",)):
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"block failed:\n{block}\n--- stdout\n{proc.stdout[-2000:]}\n--- stderr\n{proc.stderr[-2000:]}"
    assert (tmp_path / "dist" / "manifest.json").is_file()
    assert (tmp_path / "web_model" / "model.json").is_file() and (tmp_path / "digits_int8.tflite").is_file()
