"""Model inputs: generated from the signature, or read from ``.npy``/``.npz`` files."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from shipyard.errors import InputError, UnsupportedError
from shipyard.model import Signature, TensorSpec, tensor_name

MAX_GENERATED_ELEMENTS = 2**28  # 1 GiB of float32: a declared shape above this is a damaged or a huge model


def random_array(spec: TensorSpec, rng: np.random.Generator, batch: int = 1, shape: tuple[int, ...] | None = None) -> np.ndarray:
    if shape is None:
        if spec.shape is None:
            raise InputError(
                f"the shape of input '{spec.name}' is unknown, so no input can be generated for it",
                hint=f"give it: --shape {spec.name}=1,3,224,224 (or --input {spec.name}=FILE.npy)",
            )
        dims = list(spec.shape)
        shape = tuple(
            d if isinstance(d, int) and d >= 0 else (batch if i == 0 else 1) for i, d in enumerate(dims)
        )
    count = int(np.prod([max(int(d), 0) for d in shape], dtype=object)) if shape else 1
    if count > MAX_GENERATED_ELEMENTS:
        raise InputError(
            f"input '{spec.name}' has shape {list(shape)} ({count:.3g} elements): too large to generate random "
            f"values for (the limit is {MAX_GENERATED_ELEMENTS:,} elements)",
            hint=f"give a smaller shape: --shape {spec.name}=D0,D1,.. (or --input {spec.name}=FILE.npy)",
        )
    dtype = np.dtype("float32") if spec.dtype in ("unknown",) else None
    if spec.dtype == "string":
        raise UnsupportedError(f"input '{spec.name}' is a string tensor; give it with --input {spec.name}=FILE.npy")
    dtype = dtype or np.dtype(spec.dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind in "iu":
        return rng.integers(0, 10, size=shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    raise UnsupportedError(f"cannot generate values of dtype {spec.dtype} for input '{spec.name}'")


def random_feeds(signature: Signature, seed: int = 0, batch: int = 1,
                 shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
    """Reproducible random inputs (dynamic batch dimension = ``batch``, other dynamic dims = 1)."""
    rng = np.random.default_rng(seed)
    shapes = {tensor_name(k): v for k, v in (shapes or {}).items()}
    return {s.name: random_array(s, rng, batch, shapes.get(tensor_name(s.name))) for s in signature.inputs}


def load_array(path: Path) -> np.ndarray:
    try:
        value = np.load(path, allow_pickle=False)
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such input file") from exc
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy/.npz array file ({exc})") from exc
    return value


def load_feeds(items: list[str], signature: Signature, mapping: dict[str, str] | None = None,
               limit: int | None = None) -> dict[str, np.ndarray]:
    """Parse ``--input`` values: ``NAME=FILE.npy``, ``NAME=NUMBER`` (a 0-d input), ``FILE.npz``
    (keys are input names), a TFRecord file of tf.train.Examples (features feed the inputs of the
    same name, or as ``mapping`` says), or a bare ``FILE.npy`` when the model has one input."""
    feeds: dict[str, np.ndarray] = {}
    for item in items:
        name, sep, file = item.partition("=")
        if not sep:
            name, file = "", item
            from shipyard import records

            if Path(file).is_file() and records.looks_like_tfrecord(Path(file)):
                from shipyard.data.tfrecord import RecordSource

                feeds.update(RecordSource(Path(file), mapping, limit).stacked(signature))
                continue
        literal = _number(file) if name and not Path(file).exists() else None
        value = np.asarray(literal) if literal is not None else load_array(Path(file))
        if isinstance(value, np.lib.npyio.NpzFile):
            from shipyard.data.arrays import LABEL_KEYS

            inputs = {tensor_name(spec.name) for spec in signature.inputs}
            with value:
                # A labels array rides along in evaluation data; it is not an input of the model.
                feeds.update({k: value[k] for k in value.files if k not in LABEL_KEYS or tensor_name(k) in inputs})
            continue
        if not name:
            if len(signature.inputs) != 1:
                raise InputError(
                    f"{file}: name the input it is for (NAME={file})",
                    hint="inputs: " + ", ".join(s.name for s in signature.inputs),
                )
            name = signature.inputs[0].name
        feeds[name] = value
    return feeds


def _number(text: str) -> int | float | None:
    """``16000`` or ``0.5`` given in place of a file: a 0-d input (sample rates, thresholds)."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            continue
    return None


def parse_mapping(items: list[str]) -> dict[str, str]:
    """``--map FEATURE=INPUT`` values -> {feature: input}."""
    mapping = {}
    for item in items:
        feature, sep, name = item.partition("=")
        if not sep or not feature or not name:
            raise InputError(f"--map {item!r}: expected FEATURE=INPUT")
        mapping[feature] = name
    return mapping


def parse_shapes(items: list[str]) -> dict[str, tuple[int, ...]]:
    """``NAME=1,3,224,224`` -> {NAME: (1, 3, 224, 224)}."""
    shapes = {}
    for item in items:
        name, sep, dims = item.partition("=")
        try:
            if not sep:
                raise ValueError
            shapes[name] = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
        except ValueError as exc:
            raise InputError(f"--shape {item!r}: expected NAME=D0,D1,... (for example image=1,224,224,3)") from exc
    return shapes
