"""Contain native crashes: the CLI does its work in a forked child process.

Runtimes and converters are C++; a corrupt model can make them abort or segfault, which
would kill the CLI with no message. The parent process stays tiny (only the standard
library is imported when it forks, so forking is safe and costs about a millisecond),
waits for the child, and turns death by a signal into one clear line naming what the child
was doing. Temporary output files the child announced are removed, so nothing half-written
is left behind.
"""
from __future__ import annotations

import os
import select
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

_channel: int | None = None  # write end of the pipe to the parent, in the child only


def _send(kind: str, text: str) -> None:
    if _channel is not None:
        try:
            os.write(_channel, f"{kind}\t{text}\n".encode("utf-8", "replace"))
        except OSError:
            pass


def stage(text: str) -> None:
    """Say what the process is about to do (reported if it crashes natively, and shown by the
    terminal spinner when it takes a while)."""
    _send("stage", text)
    from shipyard import progress

    progress.stage(text)


def register_temp(path: Path) -> None:
    _send("tmp", str(path))


def run_guarded(work: Callable[[], int]) -> int:
    """Run ``work`` in a child process and return its exit code (3 on a native crash)."""
    if not hasattr(os, "fork") or os.environ.get("SHIPYARD_NO_FORK") == "1":
        return work()
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # child
        die_with(parent)
        os.close(read_end)
        global _channel
        _channel = write_end
        signal.signal(signal.SIGINT, interrupt_handler)
        code = 1
        try:
            code = work()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
            if not isinstance(exc.code, (int, type(None))):
                print(exc.code, file=sys.stderr)
        except KeyboardInterrupt:
            code = 130
        except BaseException:  # noqa: BLE001 - SHIPYARD_DEBUG=1 re-raises: show it before os._exit
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(write_end)
    # A service manager stops the CLI with SIGTERM to this (parent) process: pass it on, so the
    # child (e.g. `shipyard serve`) can finish its work gracefully instead of being orphaned.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(pid, signal.SIGTERM))
    # SIGINT is blocked here and read with its sender (see _forward_interrupts).
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        messages = _collect(read_end, pid)
        _, status = _wait(pid)
    finally:
        while signal.sigtimedwait({signal.SIGINT}, 0) is not None:
            pass  # the child has ended: an interrupt still pending here was meant for it
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signal.signal(signal.SIGTERM, previous)
    if os.WIFSIGNALED(status):
        return _report_crash(os.WTERMSIG(status), messages)
    return os.WEXITSTATUS(status)


def die_with(parent: int) -> None:
    """Let the kernel kill the child when the CLI process dies (SIGKILL of its PID included):
    an orphaned child would go on and write its output seconds after the user stopped it."""
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


_INTERRUPT_REPEAT_S = 1.0
_last_interrupt = -_INTERRUPT_REPEAT_S


def repeated_interrupt() -> bool:
    """Note a SIGINT; True when it is the same interrupt arriving a second time.

    A sender that signals the whole process group reaches the worker child directly and again
    through the parent, which forwards what is sent to its PID (see _forward_interrupts). A
    copy within a second is not a second request; acting on it twice would cut the clean-up
    of the first short (uvicorn reads it as "force quit")."""
    global _last_interrupt
    now = time.monotonic()
    repeated = now - _last_interrupt < _INTERRUPT_REPEAT_S
    if not repeated:
        _last_interrupt = now
    return repeated


def interrupt_handler(signum: int, frame: object) -> None:
    """The worker child's SIGINT handler: KeyboardInterrupt, once per interrupt."""
    if not repeated_interrupt():
        raise KeyboardInterrupt


def _forward_interrupts(pid: int) -> None:
    """Pass on a SIGINT that a process sent to the CLI's PID alone (``kill -INT PID``, a
    supervisor): only the parent gets it, and ignoring it would let the run finish and exit 0.
    A terminal's Ctrl-C (sent by the kernel, si_pid 0) already reached the child through the
    process group, so it is not forwarded."""
    while True:
        info = signal.sigtimedwait({signal.SIGINT}, 0)
        if info is None:
            return
        if info.si_code <= 0 and info.si_pid != 0:  # SI_USER, SI_QUEUE, SI_TKILL: a process sent it
            try:
                os.kill(pid, signal.SIGINT)
            except ProcessLookupError:
                return


def _collect(fd: int, pid: int) -> list[tuple[str, str]]:
    chunks = []
    while True:
        _forward_interrupts(pid)
        readable, _, _ = select.select([fd], [], [], 0.05)
        if not readable:
            continue
        try:
            data = os.read(fd, 65536)
        except KeyboardInterrupt:
            continue  # a SIGINT that arrived before it was blocked: the child has it too
        if not data:
            break
        chunks.append(data)
    os.close(fd)
    lines = b"".join(chunks).decode("utf-8", "replace").splitlines()
    return [tuple(line.split("\t", 1)) for line in lines if "\t" in line]  # type: ignore[misc]


def _wait(pid: int):
    while True:
        try:
            return os.waitpid(pid, 0)
        except KeyboardInterrupt:
            continue
        except ChildProcessError:
            return pid, 0


def _report_crash(sig: int, messages: list[tuple[str, str]]) -> int:
    stages = [text for kind, text in messages if kind == "stage"]
    for kind, text in messages:
        if kind == "tmp":
            _remove(Path(text))
    name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
    doing = stages[-1] if stages else "working"
    if sig == signal.SIGINT:
        print("shipyard: interrupted", file=sys.stderr)
        return 130
    if sig == signal.SIGTERM:
        print("shipyard: terminated", file=sys.stderr)
        return 143
    print(
        f"shipyard: a native library crashed ({name}) while {doing}.\n"
        "  hint: the model is probably corrupt or uses something this runtime does not support; "
        "try another --backend, or re-export the model",
        file=sys.stderr,
    )
    return 3


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()
