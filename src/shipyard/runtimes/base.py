"""The Runner interface every engine implements, and the feed validation they share.

A runner is a context manager with a ``signature`` and ``run(feeds) -> {name: ndarray}``.
Opened with ``intermediates=True`` (engines that can), it also lists its intermediate tensors
in execution order (``tensors()``) and returns any subset of them (``fetch``), each engine in
its own way; ``dump`` and ``compare --layerwise`` are thin users of that.
Feeds are checked against the signature before they reach a native engine, so a wrong
name, dtype, rank or static dimension gets a message naming the input and both values. Real
(float) values fed to an int8/uint8 input whose quantization the runner reports are quantized
with its scale and zero point.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from shipyard.errors import InputError, ModelRunError, ShipyardError, UnsupportedError, engine_message
from shipyard.model import Model, Quantization, Signature, TensorSpec, dequantize, tensor_name
from shipyard.report.numbers import a as _a


@dataclass(frozen=True)
class TensorInfo:
    """An intermediate tensor an engine can return."""

    name: str
    op: str       # the producing op's type
    node: str     # the producing node/layer name


@runtime_checkable
class Runner(Protocol):
    backend: str
    model: Model
    signature: Signature

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def tensors(self) -> list[TensorInfo]: ...

    def fetch(self, feeds: Mapping[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]: ...

    def quantization(self, name: str) -> Quantization | None: ...

    def resolve(self, names: list[str]) -> list[str]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Runner: ...

    def __exit__(self, *exc) -> None: ...


class BaseRunner(ABC):
    """Shared plumbing: context management and validated feeds; engines implement ``_run``."""

    backend = "base"
    # The formats whose intermediate tensors this engine can return (open it with intermediates=True).
    intermediate_formats: frozenset[str] = frozenset()

    def __init__(self, model: Model, signature: Signature, threads: int | None = None):
        self.model = model
        self.signature = signature
        self.threads = threads

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the engine's resources; engines override when they hold any."""

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.run_checked(validate_feeds(self.signature, feeds))

    def run_checked(self, checked: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``run`` for feeds that already passed ``validate_feeds`` against this signature (the
        server validates each request once, before batching: checking again costs a tiny model
        ~10 % of its request)."""
        outputs = self._engine(self._run, checked)  # no closure: this is every served request's path
        return {name: value if type(value) is np.ndarray else np.asarray(value) for name, value in outputs.items()}

    def _engine(self, call: Callable[..., dict], *args: object) -> dict:
        """``call(*args)`` into the engine; its own exception types become a ModelRunError naming the model."""
        try:
            return call(*args)
        except ShipyardError:
            raise
        except Exception as exc:  # engines raise their own unrelated types (Fail, InvalidArgument, ValueError...)
            raise ModelRunError(f"{self.backend} failed while running {self.model.path}: {engine_message(exc)}") from exc

    # -- intermediate tensors (engines listed in intermediate_formats override the first two) --

    def tensors(self) -> list[TensorInfo]:
        """Every intermediate tensor this engine can return, in execution order."""
        raise no_intermediates(self.model.format, self.backend)

    def _fetch(self, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        raise no_intermediates(self.model.format, self.backend)

    def fetch(self, feeds: Mapping[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        """Run the model once and return the named intermediate tensors, as the engine holds them
        (int8 for a quantized tensor: see :meth:`quantization`)."""
        checked = validate_feeds(self.signature, feeds)
        return self._engine(self._fetch, checked, names)

    def quantization(self, name: str) -> Quantization | None:
        """The scale and zero point of an int8/uint8 tensor, as the engine reports them (None: a
        float tensor, or an engine that reports none). Base: the signature's inputs and outputs."""
        for spec in (*self.signature.inputs, *self.signature.outputs):
            if tensor_name(spec.name) == tensor_name(name):
                return spec.quantization
        return None

    def resolve(self, names: list[str]) -> list[str]:
        """User-given tensor names (with or without ``:0``) -> this engine's own names."""
        known = {tensor_name(t.name): t.name for t in self.tensors()}
        known.update({tensor_name(s.name): s.name for s in self.signature.outputs})
        missing = [n for n in names if tensor_name(n) not in known]
        if missing:
            sample = ", ".join(t.name for t in self.tensors()[:8])
            raise InputError(f"no tensor named {', '.join(missing)} in the model",
                             hint=f"tensors include: {sample} ... (see 'shipyard dump MODEL --list')")
        return [known[tensor_name(n)] for n in names]

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the engine on feeds already validated and keyed by the signature's names."""


def no_intermediates(fmt: str, backend: str) -> UnsupportedError:
    return UnsupportedError(
        f"intermediate tensors of {_a(fmt)} model on {backend} cannot be exposed",
        hint="convert it to ONNX, TFLite or a frozen GraphDef first (a SavedModel runs its "
             "signature as one function call)",
    )


def validate_feeds(signature: Signature, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Feeds keyed by the signature's own names, each checked for dtype, rank and static dims."""
    specs = signature.inputs
    if len(feeds) == len(specs):  # every input given by its own name (a server's request): no resolving
        values = []
        for spec in specs:
            value = feeds.get(spec.name)
            if value is None:
                break  # an unknown or missing name: the checks below, in their order
            values.append(value)
        else:
            return {spec.name: check_array(spec, value if type(value) is np.ndarray else np.asarray(value))
                    for spec, value in zip(specs, values)}
    resolved = {k: signature.resolve_input(k) for k in feeds}
    unknown = sorted(k for k, spec in resolved.items() if spec is None)
    if unknown:
        raise InputError(
            f"unknown input name(s): {', '.join(unknown)}",
            hint="the model's inputs are: " + ", ".join(s.describe() for s in signature.inputs),
        )
    given = {spec.name: k for k, spec in resolved.items()}
    out = {}
    for spec in signature.inputs:
        key = given.get(spec.name)
        if key is None:
            raise InputError(
                f"missing input '{spec.name}' (expected {spec.describe()})",
                hint="inputs: " + ", ".join(s.describe() for s in signature.inputs),
            )
        out[spec.name] = check_array(spec, np.asarray(feeds[key]))
    return out


def dequantize_outputs(signature: Signature, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs as real values: int8/uint8 outputs the runner reports a quantization for are
    dequantized with it (``(q - zero_point) * scale``); every other output is returned as is."""
    specs = {spec.name: spec for spec in signature.outputs}
    return {name: dequantize(value, getattr(specs.get(name), "quantization", None)) for name, value in outputs.items()}


_DTYPES = {name: np.dtype(name) for name in ("float16", "float32", "float64", "int8", "int16", "int32", "int64",
                                             "uint8", "uint16", "uint32", "uint64", "bool")}


def check_array(spec: TensorSpec, value: np.ndarray) -> np.ndarray:
    expected = spec.dtype
    if spec.quantization is not None and value.dtype.kind == "f" and expected not in ("unknown", "string") \
            and np.dtype(expected).kind in "iu":
        try:
            value = spec.quantization.quantize(value, expected)  # real values for an int8 input: quantize them
        except ValueError as exc:
            raise InputError(f"input '{spec.name}': cannot quantize the given values ({exc})") from exc
    # the identity test first: dtype.name is computed in Python on every access (numpy)
    if expected not in ("unknown", "string") and value.dtype is not _DTYPES.get(expected) and value.dtype.name != expected:
        if not np.can_cast(value.dtype, expected, casting="same_kind") or value.dtype.kind != np.dtype(expected).kind:
            raise InputError(f"input '{spec.name}': expected dtype {expected}, got {value.dtype.name}")
        value = value.astype(expected)
    if spec.shape is not None:
        if value.ndim != len(spec.shape):
            raise InputError(
                f"input '{spec.name}': expected rank {len(spec.shape)} (shape {list(spec.shape)}), "
                f"got rank {value.ndim} (shape {list(value.shape)})"
            )
        for axis, (want, got) in enumerate(zip(spec.shape, value.shape)):
            if isinstance(want, int) and want >= 0 and want != got:
                raise InputError(
                    f"input '{spec.name}': dimension {axis} must be {want}, got {got} "
                    f"(expected shape {list(spec.shape)}, given {list(value.shape)})"
                )
    return value
