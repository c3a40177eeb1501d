"""One number style for every report: terminal, HTML and the words around JSON figures.

- percentages: one decimal, ``99.4%`` (JSON keeps the fraction, 0.994);
- sizes: binary units, ``13.3 MB`` (JSON keeps bytes);
- errors (absolute/relative differences): ``1.23e-05``, and ``0`` when exact;
- other figures: four significant digits, never an exponent for 0.001 <= |x| < 1e9
  (``13630``, not ``1.363e+04``);
- counts with their noun in the right number (``1 tensor``, ``2 tensors``) and ``a``/``an``;
- colour only on a terminal, never with ``NO_COLOR`` set.
"""
from __future__ import annotations

import math
import os
import sys

_VOWEL_SOUNDS = ("a", "e", "i", "o", "u", "onnx", "fp", "f16", "mlp", "nhwc", "nchw", "rnn", "lstm", "svg", "html")


def percent(fraction: float | None) -> str:
    """A fraction (0..1) as a percentage with one decimal: ``0.9944`` -> ``99.4%``."""
    if fraction is None:
        return "-"
    if not math.isfinite(fraction):
        return str(fraction)
    return f"{fraction * 100:.1f}%"


def size(n: float | None) -> str:
    """Bytes in binary units: ``512 B``, ``13.3 KB``, ``4.0 MB``."""
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def count(n: float | None) -> str:
    """A large count with a decimal prefix: ``601.50 M`` (FLOPs, parameters)."""
    if n is None:
        return "unknown"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f}"


def error(x: float | None) -> str:
    """An error magnitude: ``1.23e-05``; ``0`` when exact."""
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return "0" if x == 0 else f"{x:.2e}"


def figure(x) -> str:
    """Any other number: integers as they are, floats to four significant digits without an
    exponent between 0.001 and 1e9 (exponents only where a plain number would mislead)."""
    if x is None:
        return "-"
    if isinstance(x, (bool, int)):
        return str(x)
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e9:
        digits = max(0, 3 - math.floor(math.log10(abs(x))))
        return f"{x:.{digits}f}"
    return f"{x:.3e}"


def plural(n: int, noun: str, plural_form: str | None = None) -> str:
    """``1 tensor``, ``2 tensors`` (``plural_form`` for irregular nouns)."""
    return f"{n} {noun if n == 1 else (plural_form or noun + 's')}"


def article(word: str) -> str:
    """``a`` or ``an`` for ``word`` as it is read aloud: ``an ONNX model``, ``a TFLite model``."""
    w = word.lower()
    return "an" if w.startswith(_VOWEL_SOUNDS) and not w.startswith(("uni", "use", "one")) else "a"


def a(word: str) -> str:
    """``word`` with its article: ``an onnx``."""
    return f"{article(word)} {word}"


# -- colour ------------------------------------------------------------------------------

_CODES = {"ok": "32", "fail": "1;31", "warn": "33", "dim": "2", "bold": "1"}


def colour_on(stream=None) -> bool:
    """Colour only on a terminal, and never with ``NO_COLOR`` set (https://no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    stream = sys.stdout if stream is None else stream
    try:
        return bool(stream.isatty()) and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


def paint(text: str, style: str, stream=None) -> str:
    """``text`` in ``style`` (ok, fail, warn, dim, bold) when :func:`colour_on`, else as it is."""
    if not colour_on(stream):
        return text
    return f"\033[{_CODES[style]}m{text}\033[0m"


def verdict(passed: bool, stream=None, ok: str = "PASS", bad: str = "FAIL") -> str:
    return paint(ok, "ok", stream) if passed else paint(bad, "fail", stream)
