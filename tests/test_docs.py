"""The docs cannot rot: every example on every page is run (``docrunner``), in a copy of the
example folder, and what a ``console`` block shows must be what the command prints; every
``shipyard`` line must also parse with the real CLI, and every command must have an example."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import docrunner
from conftest import warm_cli
from shipyard.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]


def _commands(page: Path) -> list[tuple[str, list[str]]]:
    """(text, argv after ``shipyard``) of every ``shipyard`` command the page runs; environment
    assignments, redirections, ``&`` and comments dropped."""
    out = []
    for step in docrunner.steps(page.read_text()):
        if step.kind == "python":
            continue
        words = shlex.split(step.text.replace("\\\n", " "), comments=True)
        while words and re.fullmatch(r"\w+=\S*", words[0]):
            words = words[1:]
        if words[:1] != ["shipyard"]:
            continue
        argv = []
        for word in words[1:]:
            if word in ("&", "&&", "|", "||", ";") or re.fullmatch(r"\d?>.*", word):
                break
            argv.append(word)
        out.append((step.text, argv))
    return out


def _shows_usage_error(page: Path, text: str) -> bool:
    """Whether the page shows this command being refused by the parser (docs/cli.md's "did you mean")."""
    return any(step.text == text and any(": error: " in line for line in step.expected)
               for step in docrunner.steps(page.read_text()))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_documented_command_parses(page):
    parser = build_parser()
    for text, argv in _commands(page):
        try:
            parser.parse_args(argv)
        except SystemExit as exc:
            if not _shows_usage_error(page, text):
                pytest.fail(f"{page.name}: `{text}` does not parse (exit {exc.code})")


def test_documented_commands_cover_every_command():
    documented = {argv[0] for page in PAGES for _, argv in _commands(page)}
    parser_commands = set(build_parser()._subparsers._group_actions[0].choices)
    missing = sorted(parser_commands - documented)
    assert not missing, f"commands without a documented example: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_page_has_examples_that_run(page):
    assert docrunner.steps(page.read_text()), f"{page.name} has no example the suite runs"


@pytest.fixture(scope="session")
def example_folder(tmp_path_factory) -> Path:
    """Built the way a reader builds it: in a fresh interpreter (graph names such as
    ``example_cnn_1/conv3_1`` count the models a process has traced before)."""
    folder = tmp_path_factory.mktemp("docs") / "examples"
    subprocess.run([sys.executable, "-m", "shipyard.example_folder", str(folder)], check=True,
                   capture_output=True, timeout=600)
    return folder


def _binds_fixed_ports(page: Path) -> bool:
    """Pages whose servers listen on the documented ports (8500/8501, Netron's): they run one at
    a time on one xdist worker, the rest in parallel."""
    return bool(re.search(r"shipyard (serve|view)|--serve\b", page.read_text()))


@pytest.mark.slow
@pytest.mark.parametrize("page", [pytest.param(p, marks=pytest.mark.xdist_group("fixed-ports")) if _binds_fixed_ports(p)
                                  else p for p in PAGES], ids=lambda p: p.name)
def test_page_examples_run(page, example_folder, tmp_path):
    try:
        docrunner.run_page(page, example_folder, tmp_path / "examples", timeout=600, warm=warm_cli())
        problem = None
    except docrunner.PageError as exc:
        problem = str(exc)
    if problem:
        pytest.fail(problem, pytrace=False)
    if page.name in AFTER:
        AFTER[page.name](tmp_path / "examples")


def _demo_figures(workdir: Path) -> None:
    """The README's first command, run by docs/demo.md (whose integers — predicted 0 for a digit
    labelled 0 — the page checks): what its decimals cannot say, read from the figures it keeps."""
    doc = json.loads((workdir / "demo-out" / "demo.json").read_text())
    assert doc["keras_accuracy"] > 0.95
    rows = {r["artifact"]: r for r in doc["rows"]}
    assert rows["onnx-int8"]["accuracy"] >= rows["onnx"]["accuracy"] - 0.01
    assert doc["request"]["predicted"] == doc["request"]["label"]
    assert (workdir / "demo-out" / "dist" / "report.html").is_file() and doc["report"].endswith("report.html")


# page -> checks on what its examples left behind, beyond what the page prints
AFTER = {"demo.md": _demo_figures}


@pytest.mark.slow
def test_a_page_prints_the_same_from_fresh_interpreters(example_folder, tmp_path):
    """The pages run through the warm CLI, whose process imported TensorFlow quietly already:
    a command that let TF's C++ start-up chatter reach the terminal would print it only in a
    fresh interpreter. One TensorFlow page runs that way, every command its own interpreter."""
    try:
        docrunner.run_page(ROOT / "docs" / "freeze.md", example_folder, tmp_path / "examples", timeout=600, warm=None)
        problem = None
    except docrunner.PageError as exc:
        problem = str(exc)
    if problem:
        pytest.fail(problem, pytrace=False)


# -- the runner itself ------------------------------------------------------------------------

def test_output_matching_rules():
    got = ["model.onnx -> /home/you/examples/x.onnx", "  latency 0.05 ms -> 0.04 ms (speed-up 1.25x)",
           "  kept 49 nodes", "a", "b", "tail"]
    assert docrunner.mismatch(["model.onnx -> /home/you/examples/x.onnx", "latency 0.061 ms -> 3e-05 ms (speed-up 0.9x)",
                               "kept 49 nodes", "...", "tail"], got) is None
    assert docrunner.mismatch(["model.onnx -> ...", "...", "tail"], got) is None
    assert docrunner.mismatch(["model.onnx -> ...", "...", "kept 48 nodes", "..."], got) is not None  # integers are exact
    assert docrunner.mismatch(["model.onnx -> ...", "...", "head"], got) is not None                  # words are exact
    assert docrunner.mismatch(["model.onnx -> ...", "latency ..."], got) is not None                   # lines are not dropped
    assert docrunner.mismatch([], []) is None and docrunner.mismatch([], ["printed"]) is not None
    assert docrunner.mismatch(["24 examples, 1500.0 examples/s"], ["24 examples, 1,829.2 examples/s"]) is None
    assert docrunner.mismatch(["24 examples, 1500.0 examples/s"], ["24 examples, 1;829.2 examples/s"]) is not None


def test_page_syntax_is_checked():
    steps = docrunner.steps("```bash\nshipyard inspect a.onnx \\\n  --json   # c\nshipyard serve r/\n"
                            "shipyard serve r/ > log 2>&1 &\ncat > f <<'EOF'\nx\nEOF\n```\n"
                            "```console\n$ shipyard run a.onnx\nout\n$ echo $?\n0\n```\n"
                            "<!-- not run: a benchmark -->\n```bash\nsleep 999\n```\n")
    assert [(s.kind, s.expected) for s in steps] == [("run", []), ("server", []), ("run", []), ("run", []),
                                                    ("transcript", ["out"]), ("transcript", ["0"])]
    with pytest.raises(docrunner.PageError, match="tagged console"):
        docrunner.steps("```\n$ shipyard run a.onnx\n```\n")
    with pytest.raises(docrunner.PageError, match="needs a reason"):
        docrunner.steps("<!-- not run: -->\n```bash\nls\n```\n")
