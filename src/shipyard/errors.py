"""One exception tree for everything shipyard reports to a user.

Every error carries a message that says what went wrong and where, and optionally a hint
saying what to do. The CLI prints ``shipyard: <message>`` (plus the hint) and exits with
``exit_code``; it never shows a traceback for these.
"""
from __future__ import annotations


class ShipyardError(Exception):
    """Base class: a problem the user can act on."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ModelFormatError(ShipyardError):
    """The file is not a model shipyard recognises, or it is damaged."""


class ModelLoadError(ShipyardError):
    """A recognised model could not be loaded by its runtime."""


class ModelRunError(ShipyardError):
    """The engine loaded the model but failed while running it on the given inputs."""


class InputError(ShipyardError):
    """Inputs given to a model do not match its signature (name, dtype, rank, shape)."""


class UsageError(ShipyardError):
    """Command-line arguments that do not fit together."""


class MissingDependencyError(ShipyardError):
    """An optional framework is needed but not installed."""

    def __init__(self, package: str, extra: str, purpose: str):
        super().__init__(
            f"{purpose} needs the '{package}' package, which is not installed",
            hint=f"pip install 'shipyard[{extra}]'",
        )
        self.package = package
        self.extra = extra


class UnsupportedError(ShipyardError):
    """The request is understood but shipyard cannot do it for this model or format."""


class OutputPathError(ShipyardError):
    """An output path that cannot or must not be written."""


class NativeCrashError(ShipyardError):
    """A native library (a runtime or converter) crashed while working on the model."""

    exit_code = 3


class ConversionError(ShipyardError):
    """A converter failed on a model it should handle."""


def engine_message(exc: BaseException, max_lines: int = 12, max_chars: int = 1500) -> str:
    """What an engine (TensorFlow, torch, onnxruntime, LiteRT, a converter) said, whole but
    without its stack frames: the user needs the cause ("size of tensor a (512) must match ...
    at dimension 1"), which often comes after the first line ("The following operation failed
    in the TorchScript interpreter."), not the frames that lead to it.

    Frames are dropped: ``File "..."`` lines with the source lines indented under them, and the
    ``Traceback ... (most recent call last)`` lines that introduce them. TensorFlow's
    ``OpError.message`` is used (it leaves out where the op was created in Python). Continuation
    lines are indented so the CLI prints them under ``shipyard:``."""
    text = getattr(exc, "message", None) if not isinstance(exc, ShipyardError) else exc.message
    text = (text if isinstance(text, str) and text.strip() else str(exc)).strip()
    kept: list[str] = []
    in_frames = False
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith('File "') or "(most recent call last)" in stripped:
            in_frames = True
            continue
        if in_frames and line[:1] in (" ", "\t"):
            continue  # the source line (and its ^^^ marker) under a frame
        in_frames = False
        if stripped not in kept:  # engines repeat the cause at several levels
            kept.append(stripped)
    if not kept:
        return type(exc).__name__
    if len(kept) > max_lines:
        kept = kept[:max_lines - 1] + [f"... ({len(kept) - max_lines + 1} more lines)"]
    message = "\n  ".join(kept)
    return message if len(message) <= max_chars else message[:max_chars - 3] + "..."
