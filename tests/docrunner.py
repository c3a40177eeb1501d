"""Run a docs page the way a reader would: every code block, in order, in one shell, in a copy
of the example folder (``python -m shipyard.example_folder``).

- ```` ```bash ````: each command must exit 0. A server started in the foreground (``shipyard
  serve``, ``shipyard view``, ``ship --serve``) must come up and stop cleanly on Ctrl-C.
- ```` ```console ````: ``$ command`` lines are run and what they print must match the lines
  under them. Decimal numbers match any number (timings and errors vary from run to run),
  integers and words must be equal, ``...`` matches anything: a whole line of ``...`` any run of
  lines, ``...`` inside a line any text.
- ```` ```python ````: run with the project's interpreter; must exit 0.
- A block right after ``<!-- not run: WHY -->`` is skipped; every other block tagged otherwise
  (json, text, none) is shown output or file content and must not hold ``$`` command lines.

``python tests/docrunner.py [--update] docs/PAGE.md`` runs a page by hand and shows what each
command printed; ``--update`` writes what transcript commands printed into the page (review the
diff: volatile integers such as ports then need a ``...``).
"""
from __future__ import annotations

import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from warmcli import WarmCli, enabled

#: The working directory the pages show; the real (temporary) one is replaced by it.
SHOWN_DIR = "/home/you/examples"
EMPTY_FOLDER = "<!-- docs: run in an empty folder -->"
BLOCK = re.compile(r"(<!--\s*not run:(?P<why>.*?)-->\s*\n)?```(?P<lang>[\w-]*)\n(?P<body>.*?)```", re.DOTALL)
SERVER = re.compile(r"^shipyard\s+(serve|view)\b|^shipyard\s+ship\b.*\s--serve\b")
READY = re.compile(r'"event": "listening"|Netron is serving|serving .* on http://')
FLOAT = r"\d+\.\d+(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+"
# Printed figures group thousands ("1,829.2"): a shown decimal matches those too.
ANY_NUMBER = r"(?:[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?nan|[-+]?inf)"
LINE_TOKENS = re.compile(rf"(?P<space>\s+)|(?P<ellipsis>\.\.\.)|(?P<float>[-+]?(?:{FLOAT}))|(?P<char>.)")


@dataclass
class Step:
    kind: str            # "run", "server", "transcript", "python"
    text: str            # the command (or the Python source)
    expected: list[str]  # transcript output lines
    line: int            # where it is in the page (1-based)
    span: int = 1        # lines the command itself takes


class PageError(AssertionError):
    pass


# -- reading a page ---------------------------------------------------------------------------

def steps(page_text: str) -> list[Step]:
    """The executable steps of a page, in order; raises PageError for a hidden transcript."""
    out: list[Step] = []
    for match in BLOCK.finditer(page_text):
        lang, body = match["lang"], match["body"]
        line = page_text.count("\n", 0, match.start("body")) + 1
        if match["why"] is not None:
            if not match["why"].strip():
                raise PageError(f"line {line}: '<!-- not run: -->' needs a reason")
            continue
        if lang in ("bash", "sh"):
            for text, offset in _commands(body):
                foreground_server = SERVER.match(text) and shlex.split(text, comments=True)[-1] != "&"
                out.append(Step("server" if foreground_server else "run", text, [], line + offset))
        elif lang == "console":
            out.extend(_transcript(body, line))
        elif lang == "python":
            out.append(Step("python", body, [], line))
        elif re.search(r"^\$ ", body, re.MULTILINE):
            raise PageError(f"line {line}: a block with '$ ' command lines must be tagged console (or marked not run)")
    return out


def _commands(body: str) -> list[tuple[str, int]]:
    """Split a bash block into complete commands: continuation lines, quotes that span lines
    and here-documents are kept together; blank and comment-only lines dropped."""
    lines, out, i = body.splitlines(), [], 0
    while i < len(lines):
        start, text = i, lines[i]
        i += 1
        while text.endswith("\\") or not _complete(text):
            if i >= len(lines):
                break
            text += "\n" + lines[i]
            i += 1
        heredoc = re.search(r"<<-?\s*'?(\w+)'?", text)
        if heredoc:
            while i < len(lines) and lines[i].strip() != heredoc[1]:
                text += "\n" + lines[i]
                i += 1
            text += "\n" + (lines[i] if i < len(lines) else "")
            i += 1
        if text.strip() and not text.lstrip().startswith("#"):
            out.append((text, start))
    return out


def _complete(text: str) -> bool:
    try:
        shlex.split(text, comments=True)
        return True
    except ValueError:
        return False


def _transcript(body: str, line: int) -> list[Step]:
    out: list[Step] = []
    lines = body.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            raise PageError(f"line {line + i}: a console block starts each command with '$ ': {lines[i]!r}")
        start, text = i, lines[i][2:]
        i += 1
        while (text.endswith("\\") or not _complete(text)) and i < len(lines):
            text += "\n" + lines[i]
            i += 1
        expected = []
        while i < len(lines) and not lines[i].startswith("$ "):
            expected.append(lines[i])
            i += 1
        out.append(Step("transcript", text, expected, line + start, text.count("\n") + 1))
    return out


# -- matching output --------------------------------------------------------------------------

@cache
def _line_pattern(expected: str) -> re.Pattern:
    parts = []
    for token in LINE_TOKENS.finditer(expected.strip()):
        kind = token.lastgroup
        parts.append({"space": r"\s+", "ellipsis": ".*?", "float": ANY_NUMBER}.get(kind) or re.escape(token[0]))
    return re.compile("".join(parts))


def mismatch(expected: list[str], actual: list[str]) -> str | None:
    """None when ``actual`` matches ``expected`` (see the module docstring), else a report."""
    expected = _trim(expected)
    actual = _trim(actual)

    @cache
    def fits(i: int, j: int) -> bool:
        if i == len(expected):
            return j == len(actual)
        if expected[i].strip() == "...":
            return any(fits(i + 1, k) for k in range(j, len(actual) + 1))
        return j < len(actual) and bool(_line_pattern(expected[i]).fullmatch(actual[j].strip())) and fits(i + 1, j + 1)

    if fits(0, 0):
        return None
    return "expected:\n" + "\n".join(f"  | {e}" for e in expected) + "\ngot:\n" + "\n".join(f"  | {a}" for a in actual)


def _trim(lines: list[str]) -> list[str]:
    lines = list(lines)
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


# -- running ----------------------------------------------------------------------------------

def _lines_of(proc: subprocess.Popen) -> queue.Queue[str | None]:
    """A queue fed with the process's output lines by a reader thread (None at the end), so
    that reads can time out."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


class Shell:
    """One bash for a whole page, so that variables, ``cd`` and background jobs carry over."""

    def __init__(self, cwd: Path, env: dict[str, str]):
        self.cwd, self.env = cwd, env
        self.proc = subprocess.Popen(["bash", "--noprofile", "--norc"], cwd=cwd, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.lines = _lines_of(self.proc)

    def run(self, command: str, timeout: float) -> tuple[int, list[str]]:
        marker = f"__docrunner_{uuid.uuid4().hex}"
        self.proc.stdin.write(f"{command}\n__rc=$?; printf '\\n{marker} %d\\n' \"$__rc\"; (exit $__rc)\n")
        self.proc.stdin.flush()
        out: list[str] = []
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise PageError(f"`{command}` did not finish in {timeout:.0f} s; it printed:\n" + "".join(out[-40:])) from None
            if line is None:
                raise PageError(f"the shell died running `{command}`:\n" + "".join(out[-40:]))
            if line.startswith(marker):
                if out and out[-1] == "\n":
                    out.pop()
                elif out:
                    out[-1] = out[-1].removesuffix("\n")
                text = "".join(out).replace(str(self.cwd), SHOWN_DIR)
                return int(line.split()[1]), text.split("\n") if text else []
            out.append(line)

    def close(self) -> None:
        """Stop what the page left running in the background, then the shell."""
        try:
            self.proc.stdin.write("kill -INT $(jobs -p) 2>/dev/null; wait\nexit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def run_server(command: str, cwd: Path, env: dict[str, str], timeout: float) -> None:
    """A server run in the foreground: it must report that it listens, then stop cleanly on
    Ctrl-C (SIGINT to its process group, as a terminal sends it)."""
    proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    lines = _lines_of(proc)
    seen: list[str] = []
    try:
        while True:
            line = lines.get(timeout=timeout)
            if line is None:
                raise PageError(f"`{command}` ended (exit {proc.wait()}) before serving:\n" + "".join(seen[-40:]))
            seen.append(line)
            # With --workers every worker logs its own listening line; the supervisor's comes last.
            if READY.search(line) and ("--workers" not in command or '"workers"' in line):
                break
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=60)
    except queue.Empty:
        raise PageError(f"`{command}` was not serving after {timeout:.0f} s:\n" + "".join(seen[-40:])) from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if code != 0:
        raise PageError(f"`{command}` exited {code} on Ctrl-C:\n" + "".join(seen[-40:]))


def run_page(page: Path, folder: Path, workdir: Path, timeout: float = 600,
             show: bool = False, update: bool = False, warm: WarmCli | None = None) -> None:
    """Copy ``folder`` to ``workdir`` and run every step of ``page`` there; raises PageError.
    A page that says ``<!-- docs: run in an empty folder -->`` makes its own files instead.
    With ``update``, transcripts are not checked but rewritten with what was printed; with
    ``warm``, ``shipyard`` commands fork from its warm process (see warmcli)."""
    if EMPTY_FOLDER in page.read_text():
        workdir.mkdir(parents=True)
    else:
        shutil.copytree(folder, workdir)
    # What a reader's terminal has: no TF_CPP_MIN_LOG_LEVEL, so native chatter shows (and fails).
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", PYTHONUNBUFFERED="1",
               KERAS_HOME=str(workdir / ".keras"), COLUMNS="100", NO_COLOR="1")
    if warm is not None:
        env = warm.env(env)
    shell = Shell(workdir, env)
    printed: list[tuple[Step, list[str]]] = []
    began = time.perf_counter()  # with ``show``, each step's seconds follow it
    try:
        for n, step in enumerate(steps(page.read_text())):
            where = f"{page.name}:{step.line}"
            if show:
                if n:
                    print(f"    ({time.perf_counter() - began:.1f} s)", flush=True)
                print(f"--- {where} [{step.kind}] {step.text.splitlines()[0][:100]}", flush=True)
                began = time.perf_counter()
            if step.kind == "server":
                run_server(step.text, workdir, env, timeout)
                continue
            if step.kind == "python":
                script = workdir / f".docs_block_{n}.py"
                script.write_text(step.text)
                code, out = shell.run(f"python {script.name}", timeout)
            else:
                code, out = shell.run(step.text, timeout)
            if show and step.kind == "transcript":
                print("\n".join(out), flush=True)
            if step.kind == "transcript" and update:
                printed.append((step, out))
            elif step.kind == "transcript":
                problem = mismatch(step.expected, out)
                if problem:
                    raise PageError(f"{where}: `$ {step.text}` printed something else\n{problem}")
            elif code != 0:
                raise PageError(f"{where}: `{step.text}` exited {code}:\n" + "\n".join(out[-40:]))
        if show:
            print(f"    ({time.perf_counter() - began:.1f} s)", flush=True)
    finally:
        shell.close()
        if printed:
            _rewrite(page, printed)


def _rewrite(page: Path, printed: list[tuple[Step, list[str]]]) -> None:
    """Put what each transcript command printed under it (``--update``)."""
    lines = page.read_text().split("\n")
    for step, out in reversed(printed):
        start = step.line - 1 + step.span
        lines[start:start + len(_trim(step.expected))] = _trim(out)
    page.write_text("\n".join(lines))


if __name__ == "__main__":  # python tests/docrunner.py docs/PAGE.md [...]: run pages by hand
    import tempfile

    ROOT = Path(__file__).resolve().parents[1]
    cached = ROOT / ".cache" / "example-folder"
    if not cached.is_dir():
        subprocess.run([sys.executable, "-m", "shipyard.example_folder", str(cached)], check=True)
    update = "--update" in sys.argv
    with tempfile.TemporaryDirectory() as warm_dir:
        warm = WarmCli(Path(warm_dir)) if enabled() else None
        try:
            for name in [a for a in sys.argv[1:] if a != "--update"]:
                with tempfile.TemporaryDirectory() as tmp:
                    try:
                        run_page(Path(name), cached, Path(tmp) / "examples", show=True, update=update, warm=warm)
                        print(f"=== {name}: ok")
                    except PageError as exc:
                        print(f"=== {name}: FAILED\n{exc}")
        finally:
            if warm is not None:
                warm.close()
