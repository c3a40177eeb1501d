"""A spinner on the terminal for steps without a count: the stage (what ``guard.stage`` says the
process is doing) and its elapsed time, drawn once a stage has run for 2 s.

Only when stderr is a terminal (``SHIPYARD_PROGRESS=0`` turns it off, ``=1`` forces it); the
counted steps (bench's runs) have tqdm bars instead. Anything the process prints clears the
spinner's line first, so output never lands in the middle of it; the server turns it off once
it is up (a stage that never ends is not progress).
"""
from __future__ import annotations

import os
import sys
import threading
import time

_FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
DELAY_S = 2.0
_lock = threading.Lock()
_state: dict = {"text": None, "since": 0.0, "drawn": False, "thread": None, "off": False, "err": None}


def enabled() -> bool:
    setting = os.environ.get("SHIPYARD_PROGRESS")
    if setting in ("0", "1"):
        return setting == "1"
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _Clearing:
    """A text stream that erases the spinner's line before anything is written to it."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        with _lock:
            _clear()
            return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _clear() -> None:
    if _state["drawn"]:
        _state["err"].write("\r\x1b[2K")
        _state["err"].flush()
        _state["drawn"] = False


def _spin() -> None:
    frame = 0
    while True:
        time.sleep(0.1)
        with _lock:
            if _state["off"]:
                _clear()
                return
            text = _state["text"]
            elapsed = time.monotonic() - _state["since"]
            if text is None or elapsed < DELAY_S:
                continue
            _state["err"].write(f"\r\x1b[2K{_FRAMES[frame % len(_FRAMES)]} {text[:100]} · {elapsed:.0f} s")
            _state["err"].flush()
            _state["drawn"] = True
            frame += 1


def stage(text: str) -> None:
    """A new step began: the spinner shows it after ``DELAY_S``."""
    if _state["off"] or not enabled():
        return
    with _lock:
        _clear()
        _state["text"], _state["since"] = text, time.monotonic()
        if _state["thread"] is None:
            _state["err"] = sys.stderr
            sys.stdout, sys.stderr = _Clearing(sys.stdout), _Clearing(sys.stderr)
            _state["thread"] = threading.Thread(target=_spin, name="shipyard-progress", daemon=True)
            _state["thread"].start()


def off() -> None:
    """No more spinner in this process (a server that is up, an interactive session)."""
    with _lock:
        _state["off"] = True
        _state["text"] = None
        if _state["err"] is not None:
            _clear()
