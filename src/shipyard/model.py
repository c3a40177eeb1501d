"""The model handle and its signature types.

A :class:`Model` is only a (format, path) pair: sniffing reads a few bytes, and nothing is
parsed or imported until a summary, signature or runner is asked for.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Dim = int | str  # a static size, -1 for an unknown size, or a symbol such as "batch"


def tensor_name(name: str) -> str:
    """Canonical tensor name: ``"x:0"`` and ``"x"`` both mean output 0 of node ``x``."""
    return name.removesuffix(":0")


@dataclass(frozen=True)
class Quantization:
    """Affine quantization of an integer tensor: ``real = (q - zero_point) * scale``.

    One scale and zero point for the whole tensor, or one per channel along ``axis`` (TFLite's
    ``quantized_dimension``, ONNX's ``axis``). Engines report it per tensor (LiteRT's tensor
    details, the scale/zero-point inputs of ONNX's QuantizeLinear and QLinear* nodes); every
    figure shipyard computes on an int8/uint8 tensor is computed on :meth:`dequantize`'s values.
    """

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None = None  # the channel axis when there is one scale per channel

    @classmethod
    def of(cls, scale, zero_point=None, axis: int | None = None) -> Quantization | None:
        """From the arrays an engine reports; None when there is no usable scale (a float tensor)."""
        import numpy as np

        scales = np.asarray(scale if scale is not None else [], dtype=np.float64).ravel()
        if not scales.size or not np.all(np.isfinite(scales)) or not np.any(scales):
            return None
        zeros = np.asarray(zero_point if zero_point is not None else 0, dtype=np.int64).ravel()
        if zeros.size == 0:
            zeros = np.zeros(1, np.int64)
        if zeros.size not in (1, scales.size):
            return None
        per_channel = scales.size > 1 or zeros.size > 1
        return cls(tuple(float(v) for v in scales), tuple(int(v) for v in zeros), int(axis or 0) if per_channel else None)

    def _broadcast(self, values, data):
        """Scale and zero point shaped to broadcast against ``data`` (per channel along ``axis``)."""
        import numpy as np

        arr = np.asarray(values)
        if arr.size == 1:
            return arr.reshape(())
        axis = (self.axis or 0) % max(data.ndim, 1)
        if data.ndim == 0 or data.shape[axis] != arr.size:
            raise ValueError(f"{arr.size} quantization channels do not fit axis {axis} of shape {list(data.shape)}")
        shape = [1] * data.ndim
        shape[axis] = arr.size
        return arr.reshape(shape)

    def dequantize(self, data):
        """Real values (float32) of an integer tensor; anything that is not integer is returned as is."""
        import numpy as np

        data = np.asarray(data)
        if data.dtype.kind not in "iu":
            return data
        scale = self._broadcast(np.asarray(self.scale, np.float64), data)
        zero = self._broadcast(np.asarray(self.zero_point, np.float64), data)
        return ((data.astype(np.float64) - zero) * scale).astype(np.float32)

    def quantize(self, data, dtype: str):
        """Integer values (``dtype``) of real ones: round to the nearest step, saturate."""
        import numpy as np

        data = np.asarray(data, np.float64)
        info = np.iinfo(np.dtype(dtype))
        scale = self._broadcast(np.asarray(self.scale, np.float64), data)
        zero = self._broadcast(np.asarray(self.zero_point, np.float64), data)
        return np.clip(np.round(data / scale + zero), info.min, info.max).astype(dtype)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"scale": list(self.scale), "zero_point": list(self.zero_point)}
        if self.axis is not None:
            doc["axis"] = self.axis
        return doc

    def describe(self) -> str:
        if len(self.scale) == 1:
            return f"scale {self.scale[0]:.4g}, zero point {self.zero_point[0]}"
        return f"{len(self.scale)} scales along axis {self.axis}"


def dequantize(data, quantization: Quantization | None):
    """``data`` as real values: dequantized when it is an integer tensor with a quantization."""
    return data if quantization is None else quantization.dequantize(data)


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype (a numpy dtype name, or ``"string"``) and shape of one model input or output.

    ``shape`` is ``None`` when even the rank is unknown; dynamic dimensions are ``-1`` or a
    symbolic name. ``quantization`` is set by a runner whose engine reports the scale and zero
    point of an int8/uint8 input or output (LiteRT for a full-integer TFLite model).
    """

    name: str
    dtype: str
    shape: tuple[Dim, ...] | None
    quantization: Quantization | None = field(default=None, compare=False)

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) and d >= 0 for d in self.shape)

    def concrete_shape(self, fill: int = 1) -> tuple[int, ...]:
        """The shape with every dynamic dimension replaced by ``fill`` (used for generated inputs)."""
        if self.shape is None:
            raise ValueError(f"the rank of '{self.name}' is unknown")
        return tuple(d if isinstance(d, int) and d >= 0 else fill for d in self.shape)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": None if self.shape is None else list(self.shape)}

    def describe(self) -> str:
        shape = "?" if self.shape is None else "[" + ", ".join(str(d) for d in self.shape) + "]"
        return f"{self.name} {self.dtype}{shape}"


@dataclass(frozen=True)
class Signature:
    """The inputs and outputs of a model, in the order the model declares them."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec | None:
        return _find(self.inputs, name)

    def resolve_input(self, key: str) -> TensorSpec | None:
        """The input a user's name means: exact (``x`` = ``x:0``), else the one input whose name
        a converter prefixed (``image`` = TFLite's ``serving_default_image:0``)."""
        exact = _find(self.inputs, key)
        if exact is not None:
            return exact
        prefixed = [s for s in self.inputs if tensor_name(s.name).endswith("_" + tensor_name(key))]
        return prefixed[0] if len(prefixed) == 1 else None

    def output(self, name: str) -> TensorSpec | None:
        return _find(self.outputs, name)

    def to_json(self) -> dict[str, Any]:
        return {"inputs": [t.to_json() for t in self.inputs], "outputs": [t.to_json() for t in self.outputs]}


def _find(specs: tuple[TensorSpec, ...], name: str) -> TensorSpec | None:
    wanted = tensor_name(name)
    for spec in specs:
        if tensor_name(spec.name) == wanted:
            return spec
    return None


@dataclass(frozen=True)
class Model:
    """A model file (or directory) whose format is known.

    ``path`` is what the user named; for a TF1 checkpoint it is the checkpoint prefix, and
    ``extras`` holds companion paths (``meta`` graph, checkpoint directory) found next to it.
    """

    format: str
    path: Path
    extras: dict[str, Path] = field(default_factory=dict, compare=False)

    @property
    def display(self) -> str:
        return str(self.path)

    @property
    def encrypted(self) -> bool:
        return "encrypted" in self.extras

    def read_bytes(self) -> bytes:
        """The model file's bytes; for an encrypted model, the plaintext, decrypted in memory."""
        if self.encrypted:
            from shipyard.protect import decrypted

            return decrypted(self.path)[1]
        return self.path.read_bytes()

    def in_memory(self) -> bytes | None:
        """Plaintext bytes when the model must be loaded from memory (encrypted), else None."""
        return self.read_bytes() if self.encrypted else None
