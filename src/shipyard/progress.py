"""Progress on the terminal: what the process is doing (``guard.stage``) and for how long.

A step without a count gets a spinner with its stage and elapsed time; counted work (bench's
configurations, ship's steps, batch's shards, the quantization search's trials) gets a bar
with ``i/n``, its rate and the time left: ``⠹ ship model.keras  ████░░░░  4/9  0.21/s  eta 24 s``.
Either is drawn once a stage has run for 2 s. A stage text holding ``i/n`` (item i of n is
starting: ``measuring sensitivity at the outputs: 5/120``) counts as well, so modules that only
call ``guard.stage`` get a bar without knowing about this one.

Only when stderr is a terminal; ``SHIPYARD_PROGRESS=0`` or ``--quiet`` turns it off (``=1``
forces it). Anything the process prints clears the line first, so output never lands in the
middle of it; the server turns it off once it is up (a stage that never ends is not progress).
"""
from __future__ import annotations

import os
import re
import sys
import threading
import time

_FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
DELAY_S = 2.0
BAR_WIDTH = 12
# "i/n" as a word of a stage text: item i of n is starting (so i - 1 are done)
_COUNT = re.compile(r"(?:^|\s)(\d+)/(\d+)(?=$|[\s:,;)])")
_lock = threading.Lock()
# text/since: the current stage; outer: counted work announced with count() (kept while its
# items run their own stages, until done()); inner: a count read from a stage's "i/n"
_state: dict = {"text": None, "since": 0.0, "drawn": False, "thread": None, "off": False, "err": None,
                "outer": None, "inner": None}


def enabled() -> bool:
    setting = os.environ.get("SHIPYARD_PROGRESS")
    if setting in ("0", "1"):
        return setting == "1"
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _Clearing:
    """A text stream that erases the progress line before anything is written to it."""

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


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _rate(per_s: float) -> str:
    return f"{per_s:.0f}" if per_s >= 100 else f"{per_s:.1f}" if per_s >= 10 else f"{per_s:.2f}"


def line(frame: str, text: str | None, elapsed: float, counted: dict | None, now: float) -> str:
    """One progress line: the spinner's (stage, elapsed) or, for counted work, the bar's
    (stage, bar, i/n, rate, time left, what the current item is doing, elapsed)."""
    if counted is None:
        return f"{frame} {(text or '')[:100]} · {_duration(elapsed)}"
    done, total = counted["done"], counted["total"]
    filled = min(BAR_WIDTH, int(BAR_WIDTH * done / total)) if total else 0
    parts = [f"{frame} {counted['label'][:60]}", "█" * filled + "░" * (BAR_WIDTH - filled), f"{done}/{total}"]
    took, gained = now - counted["t0"], done - counted["done0"]
    unit = f" {counted['unit']}" if counted["unit"] else ""
    if gained > 0 and took > 0:
        per_s = gained / took
        parts.append(f"{_rate(per_s)}{unit}/s")
        if done < total:
            parts.append(f"eta {_duration((total - done) / per_s)}")
    else:
        parts.append(f"–{unit}/s")
    # an item's own stage (a bar from count()) says more than the item's name
    detail = text if text and counted.get("outer") else counted.get("detail")
    if detail:
        parts.append(detail[:60])
    return "  ".join(parts) + f" · {_duration(now - counted['t0'])}"


def _spin() -> None:
    frame = 0
    while True:
        time.sleep(0.1)
        with _lock:
            if _state["off"]:
                _clear()
                return
            counted = _state["inner"] or _state["outer"]
            text, now = _state["text"], time.monotonic()
            started = counted["t0"] if counted is not None else _state["since"]
            if (text is None and counted is None) or now - started < DELAY_S:
                continue
            _state["err"].write("\r\x1b[2K" + line(_FRAMES[frame % len(_FRAMES)], text, now - _state["since"],
                                                   counted, now))
            _state["err"].flush()
            _state["drawn"] = True
            frame += 1


def _start() -> None:
    if _state["thread"] is None:
        _state["err"] = sys.stderr
        sys.stdout, sys.stderr = _Clearing(sys.stdout), _Clearing(sys.stderr)
        _state["thread"] = threading.Thread(target=_spin, name="shipyard-progress", daemon=True)
        _state["thread"].start()


def _counted(previous: dict | None, label: str, done: int, total: int, unit: str, detail: str | None) -> dict:
    """The count's record; the rate runs from the first item of the same label and total."""
    now = time.monotonic()
    same = previous is not None and previous["label"] == label and previous["total"] == total \
        and done >= previous["done"]
    t0, done0 = (previous["t0"], previous["done0"]) if same else (now, done)
    return {"label": label, "done": done, "total": total, "unit": unit, "detail": detail, "t0": t0, "done0": done0}


def stage(text: str) -> None:
    """A new step began: the spinner shows it after ``DELAY_S`` (a bar when the text says ``i/n``;
    inside counted work, the bar of that work with this stage beside it)."""
    if _state["off"] or not enabled():
        return
    match = _COUNT.search(text)
    with _lock:
        _clear()
        if match and int(match[2]) > 0:
            label = text[: match.start()].rstrip(" :") or text
            detail = text[match.end():].strip(" :,;()") or None
            _state["inner"] = _counted(_state["inner"], label, int(match[1]) - 1, int(match[2]), "", detail)
        else:
            _state["inner"] = None
        _state["text"], _state["since"] = text, time.monotonic()
        _start()


def count(label: str, done: int, total: int, unit: str = "", detail: str | None = None) -> None:
    """Counted work: ``done`` of ``total`` items of ``label`` are finished (call it as each item
    starts, ``detail`` naming it). Its bar stays while the items run stages of their own, until
    :func:`done`; the rate is measured from the first call with this label and total."""
    if _state["off"] or not enabled():
        return
    with _lock:
        _state["outer"] = {**_counted(_state["outer"], label, done, total, unit, detail), "outer": True}
        _state["inner"], _state["text"], _state["since"] = None, None, time.monotonic()
        _start()


def inner(label: str, done: int, total: int, unit: str = "") -> None:
    """Counted work inside the current stage (a configuration's timed runs): its bar replaces the
    outer one until the next stage."""
    if _state["off"] or not enabled():
        return
    with _lock:
        _state["inner"] = _counted(_state["inner"], label, done, total, unit, None)
        _start()


def done() -> None:
    """The counted work is over: back to the spinner."""
    with _lock:
        _clear()
        _state["outer"] = None


def off() -> None:
    """No more progress in this process (a server that is up, an interactive session)."""
    with _lock:
        _state["off"] = True
        _state["text"] = _state["outer"] = _state["inner"] = None
        if _state["err"] is not None:
            _clear()
