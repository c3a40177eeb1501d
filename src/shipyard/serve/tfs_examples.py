"""TF Serving's Classify, Regress and MultiInference: serialized ``tf.Example`` in, the
signature's ``classes``/``scores`` or ``outputs`` out.

Which signatures qualify is TF Serving's rule (servables/tensorflow/classifier.cc,
regressor.cc, multi_inference.cc, with the method-name check off as in TF2 exports): exactly
one input, keyed ``inputs``, holding the serialized Examples (a string tensor); classify needs
one or two outputs among ``classes`` (strings, [batch, classes]) and ``scores`` (float,
[batch, classes]); regress exactly one output ``outputs`` (float, [batch] or [batch, 1]).
Any engine's model qualifies by those names: the request runs through the same queue, batcher
and statistics as Predict. Error texts are TF Serving's, so clients see what they would there.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from shipyard.errors import InputError
from shipyard.model import Signature
from shipyard.serve.servable import SERVED

CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"


def signature_name(requested: str) -> str:
    """The signature a request names; none is ``serving_default`` (TF Serving's default key)."""
    return requested or SERVED


def check(signature: Signature, method: str) -> None:
    """Raise InputError (INVALID_ARGUMENT / 400) unless ``signature`` can do ``method``: TF
    Serving's text, then what the signature would need and what it has (clients see the
    message only)."""
    if method not in (CLASSIFY, REGRESS):
        raise InputError(f"Unsupported signature method_name: {method} (use {CLASSIFY} or {REGRESS})")
    inputs = {s.name: s for s in signature.inputs}
    outputs = {s.name for s in signature.outputs}
    what = "classification" if method == CLASSIFY else "regression"

    def refuse(text: str) -> InputError:
        need = ("outputs 'classes' (strings) and/or 'scores' (floats)" if method == CLASSIFY
                else "one float output 'outputs'")
        return InputError(f"{text} ({what} needs a signature with one string input 'inputs' holding serialized "
                          f"tf.Example and {need}; this signature takes "
                          f"{', '.join(s.describe() for s in signature.inputs)} and gives {', '.join(sorted(outputs))})")

    if len(inputs) != 1:
        raise refuse("Expected one input Tensor.")
    if "inputs" not in inputs:
        raise refuse(f"No {what} inputs found in SignatureDef")
    if inputs["inputs"].dtype not in ("string", "object", "unknown"):
        raise refuse(f"Expected the input 'inputs' to be a string tensor, got {inputs['inputs'].dtype}")
    if method == CLASSIFY:
        if len(outputs) not in (1, 2):
            raise refuse(f"Expected one or two output Tensors, found {len(outputs)}")
        if not outputs & {"classes", "scores"}:
            raise refuse('Expected classification signature outputs to contain at least one of "classes" or "scores"')
    else:
        if len(outputs) != 1:
            raise refuse("Expected one output Tensor.")
        if "outputs" not in outputs:
            raise refuse("No regression outputs found in SignatureDef")


def feeds(examples: list[bytes], context: bytes | None = None) -> dict[str, np.ndarray]:
    """The ``inputs`` tensor: one serialized Example per row. With a context, each row is the
    context followed by the example (TF Serving's rule: protobuf merging, the example's own
    features win over the context's)."""
    if not examples:
        raise InputError("Input is empty.")
    rows = [context + e for e in examples] if context else list(examples)
    return {"inputs": np.array(rows, dtype=object)}


def classifications(outputs: dict[str, np.ndarray], count: int) -> list[list[tuple[bytes | None, float | None]]]:
    """[[(label, score), ...] per example] from the ``classes``/``scores`` outputs."""
    classes, scores = outputs.get("classes"), outputs.get("scores")
    for name, arr, kind in (("classes", classes, "string"), ("scores", scores, "float")):
        if arr is None:
            continue
        if arr.ndim != 2:
            raise InputError(f"Expected Tensor shape: [batch_size num_classes] but got {list(arr.shape)} for '{name}'")
        if (kind == "string") != (arr.dtype == object or arr.dtype.kind in "SU"):
            raise InputError(f"Expected {name} Tensor of DT_{'STRING' if kind == 'string' else 'FLOAT'}. Got: {arr.dtype}")
        if arr.shape[0] != count:
            raise InputError(f"Expected {name} output batch size of {count}. Got: {arr.shape[0]}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise InputError(f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. {scores.shape[1]}")
    width = (classes if classes is not None else scores).shape[1]
    out = []
    for i in range(count):
        row = []
        for c in range(width):
            label = classes[i, c] if classes is not None else None
            if isinstance(label, str):
                label = label.encode()
            row.append((label, float(scores[i, c]) if scores is not None else None))
        out.append(row)
    return out


def regressions(outputs: dict[str, np.ndarray], count: int) -> list[float]:
    values = outputs["outputs"]
    if values.dtype.kind != "f":
        raise InputError(f"Expected output Tensor of DT_FLOAT.  Got: {values.dtype}")
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
        raise InputError(f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
                         f"{list(values.shape)}")
    if values.shape[0] != count:
        raise InputError(f"Input batch size did not match output batch size: {count} vs. {values.shape[0]}")
    return [float(v) for v in values.reshape(-1)]


def multi_inference(model_names: list[str], signature_names: list[str], methods: list[str]) -> None:
    """TF Serving's checks on a MultiInference request's tasks (one model, distinct signatures)."""
    if not methods:
        raise InputError("Found no tasks in the MultiInference request")
    if len(set(model_names)) != 1:
        raise InputError("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
    seen: set[str] = set()
    for name in signature_names:
        if name in seen:
            raise InputError(f"Duplicate evaluation of signature: {name}")
        seen.add(name)


def json_examples(body: Any) -> tuple[list[bytes], bytes | None, str]:
    """(serialized examples, serialized context or None, signature name) from TF Serving's REST
    ``:classify`` / ``:regress`` body: ``{"signature_name": ..., "context": {...}, "examples": [{...}]}``.
    Feature values: a number or list of numbers (integers -> int64_list, any decimal -> float_list),
    strings (bytes_list, UTF-8), ``{"b64": "..."}`` (bytes_list)."""
    from shipyard import tf_example
    from shipyard.serve.codec import _unb64

    if not isinstance(body, dict):
        raise InputError("the body must be a JSON object with 'examples'")
    unknown = set(body) - {"signature_name", "context", "examples"}
    if unknown:
        raise InputError(f"unknown key(s) {sorted(unknown)} in the body", hint="keys: signature_name, context, examples")
    name = body.get("signature_name", "")
    if not isinstance(name, str):
        raise InputError("'signature_name' must be a string")
    rows = body.get("examples")
    if not isinstance(rows, list):
        raise InputError("'examples' must be a list of objects (feature name -> values)")

    def encode(obj: Any, what: str) -> bytes:
        if not isinstance(obj, dict):
            raise InputError(f"{what} must be an object mapping feature names to values")
        features: dict[str, Any] = {}
        for key, value in obj.items():
            values = _unb64(value if isinstance(value, list) else [value])
            if any(isinstance(v, list) for v in values):
                raise InputError(f"{what}: feature '{key}' must be a value or a flat list of values")
            if all(isinstance(v, bytes) for v in values):
                features[key] = [bytes(v) for v in values] or np.zeros(0, np.float32)
            elif all(isinstance(v, str) for v in values):
                features[key] = [v.encode() for v in values]
            elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                features[key] = np.asarray(values, dtype=np.int64)
            elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                features[key] = np.asarray(values, dtype=np.float32)
            else:
                raise InputError(f"{what}: feature '{key}' mixes kinds of values (numbers, strings, booleans)")
        return tf_example.encode(features)

    examples = [encode(row, f"examples[{i}]") for i, row in enumerate(rows)]
    context = encode(body["context"], "context") if "context" in body else None
    return examples, context, name


def prepare(signature: Signature, method: str, examples: list[bytes], context: bytes | None) -> dict[str, np.ndarray]:
    """Check that the signature can do ``method``; the feeds for the examples."""
    check(signature, method)
    return feeds(examples, context)


def answer(method: str, outputs: dict[str, np.ndarray], count: int):
    """The classifications or regressions of ``count`` examples from the model's outputs."""
    return classifications(outputs, count) if method == CLASSIFY else regressions(outputs, count)


def json_answer(method: str, result) -> dict[str, Any]:
    """TF Serving's REST answer: ``{"results": [[[label, score], ...], ...]}`` or ``{"results": [value, ...]}``
    (the key its server writes; a missing label is "", a missing score 0, as in its JSON)."""
    if method == REGRESS:
        return {"results": result}
    return {"results": [[["" if label is None else label.decode("utf-8", "replace"), 0.0 if score is None else score]
                         for label, score in row] for row in result]}
