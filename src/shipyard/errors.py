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
