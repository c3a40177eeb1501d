"""Model inputs: generated from the signature, or read from ``.npy``/``.npz`` files."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from shipyard.data.arrays import load_array
from shipyard.errors import InputError
from shipyard.model import Signature, tensor_name


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
    """``--map FEATURE=INPUT`` values (comma-separated or repeated) -> {feature: input}."""
    mapping = {}
    for item in (part.strip() for value in items for part in value.split(",") if part.strip()):
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
