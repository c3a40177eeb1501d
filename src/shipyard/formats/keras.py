"""Keras models (``.keras`` zip archives and legacy ``.h5``), loaded with Keras itself."""
from __future__ import annotations

from functools import lru_cache

from shipyard.deps import require
from shipyard.errors import ModelLoadError, ShipyardError, engine_message
from shipyard.model import Model, Signature, TensorSpec
from shipyard.summary import Summary, add_param, histogram


@lru_cache(maxsize=4)
def load(model: Model):
    """The Keras model object (cached: loading twice in one command is wasted seconds)."""
    keras = require("keras", "Loading a Keras model")
    try:
        data = model.in_memory()
        if data is not None:
            return _load_from_memory(keras, data)
        return keras.saving.load_model(str(model.path), compile=False)
    except Exception as exc:  # Keras raises many unrelated types (KeyError, OSError, ValueError...) for bad files
        detail = engine_message(exc)
        hint = None
        if model.path.suffix == ".h5" and "model_config" in str(exc).lower() or "No model config" in str(exc):
            hint = "this HDF5 file holds weights only; save the whole model with model.save()"
        raise ModelLoadError(f"{model.path}: Keras cannot load this model ({detail})", hint=hint) from exc


def _load_from_memory(keras, data: bytes):
    """Decrypted models never touch the disk: Keras v3 archives load from a file object, and
    legacy HDF5 through h5py's in-memory file (Keras' public API takes only paths for those)."""
    import io

    if data[:4] == b"PK\x03\x04":
        from keras.src.saving import saving_lib

        return saving_lib.load_model(io.BytesIO(data), compile=False)
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(io.BytesIO(data), "r") as h5:
        return legacy_h5_format.load_model_from_hdf5(h5, compile=False)


def _tensor_spec(tensor, name: str) -> TensorSpec:
    dtype = tensor.dtype if isinstance(tensor.dtype, str) else getattr(tensor.dtype, "name", str(tensor.dtype))
    shape = tuple(-1 if d is None else int(d) for d in tensor.shape)
    return TensorSpec(name, dtype, shape)


def signature_of(keras_model) -> Signature:
    in_names = [getattr(t, "name", f"input_{i}") for i, t in enumerate(keras_model.inputs)]
    in_names = [layer.name for layer in keras_model._input_layers] if hasattr(keras_model, "_input_layers") else in_names
    out_names = list(getattr(keras_model, "output_names", None) or [f"output_{i}" for i in range(len(keras_model.outputs))])
    return Signature(
        tuple(_tensor_spec(t, n) for t, n in zip(keras_model.inputs, in_names)),
        tuple(_tensor_spec(t, n) for t, n in zip(keras_model.outputs, out_names)),
    )


def signature(model: Model) -> Signature:
    return signature_of(load(model))


# Inputs declaring more elements per sample than this are not built to be inspected: building
# (and tracing for FLOPs) a [None, 1e5, 1e5, 3] input has crashed TensorFlow natively.
MAX_BUILD_ELEMENTS = 2**28


def _config_and_weights(model: Model):
    """(model config dict, h5py.File of the weights) read from the file without Keras."""
    import io
    import json
    import zipfile

    import h5py

    data = model.in_memory()
    source = io.BytesIO(data) if data is not None else str(model.path)
    try:
        if zipfile.is_zipfile(source):
            with zipfile.ZipFile(source) as archive:
                config = json.loads(archive.read("config.json"))
                weights = h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")
            return config, weights
        h5 = h5py.File(source, "r")
        raw = h5.attrs.get("model_config")
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw) if raw is not None else None
        return config, h5.get("model_weights", h5)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelLoadError(f"{model.path}: not a readable Keras file ({exc})") from exc


def _declared_inputs(config: dict | None) -> list[TensorSpec]:
    """The InputLayers of a model config (Keras 3 ``batch_shape``, Keras 2 ``batch_input_shape``)."""
    specs = []
    layers = ((config or {}).get("config") or {}).get("layers") or []
    for layer in layers if isinstance(layers, list) else []:
        if not isinstance(layer, dict) or layer.get("class_name") != "InputLayer":
            continue
        c = layer.get("config") or {}
        shape = c.get("batch_shape") or c.get("batch_input_shape")
        if isinstance(shape, list):
            dtype = c.get("dtype")
            dtype = dtype if isinstance(dtype, str) else (dtype or {}).get("config", {}).get("name", "float32")
            specs.append(TensorSpec(str(c.get("name", "input")), dtype,
                                    tuple(-1 if d is None else int(d) for d in shape)))
    return specs


def _too_large_to_build(specs: list[TensorSpec]) -> bool:
    import math

    return any(math.prod(d for d in (s.shape or ()) if d > 0) > MAX_BUILD_ELEMENTS for s in specs)


def _summary_from_config(model: Model, config: dict, weights, inputs: list[TensorSpec]) -> Summary:
    """What the file says, without building the model: inputs, layers, parameters by dtype."""
    import h5py

    param_bytes: dict[str, int] = {}
    params = 0

    def visit(_name, item):
        nonlocal params
        if isinstance(item, h5py.Dataset):
            params += int(item.size)
            add_param(param_bytes, item.dtype.name, int(item.size * item.dtype.itemsize))

    weights.visititems(visit)
    layers = [layer for layer in (config.get("config") or {}).get("layers") or [] if isinstance(layer, dict)]
    shapes = ", ".join(f"{s.name} {list(s.shape)}" for s in inputs)
    return Summary(
        format="keras", path=str(model.path), size_bytes=model.path.stat().st_size, inputs=inputs, outputs=[],
        ops=histogram(str(layer.get("class_name")) for layer in layers), params=params, param_bytes=param_bytes,
        flops=None, flops_by_op={}, producer="Keras (read from the file, not built)",
        version="legacy HDF5" if model.path.suffix in (".h5", ".hdf5") else "Keras v3 archive",
        details={"not_built": f"the inputs declare more than {MAX_BUILD_ELEMENTS} elements per sample ({shapes}): "
                              "the model was read, not built, so outputs and FLOPs are not known"},
    )


def summarize(model: Model) -> Summary:
    config, weights = _config_and_weights(model)
    try:
        declared = _declared_inputs(config)
        if config is not None and _too_large_to_build(declared):
            return _summary_from_config(model, config, weights, declared)
    finally:
        weights.file.close()
    keras_model = load(model)
    sig = signature_of(keras_model)
    param_bytes: dict[str, int] = {}
    for w in keras_model.weights:
        add_param(param_bytes, w.dtype if isinstance(w.dtype, str) else w.dtype.name, int(w.numpy().nbytes))
    details = {
        "layers": len(keras_model.layers),
        "trainable_params": int(sum(w.numpy().size for w in keras_model.trainable_weights)),
    }
    flops, by_op = None, {}
    try:
        from shipyard.formats.tf_freeze import frozen_flops

        tally = frozen_flops(frozen_graph_def(model, batch=1, keras_model=keras_model, named=False))
        flops, by_op = tally.total, tally.sorted_by_op()
        details["flops_uncounted_ops"] = tally.uncounted
    except ShipyardError as exc:
        details["flops_unavailable"] = exc.message
    keras = require("keras", "Loading a Keras model")
    return Summary(
        format="keras",
        path=str(model.path),
        size_bytes=model.path.stat().st_size,
        inputs=list(sig.inputs),
        outputs=list(sig.outputs),
        ops=histogram(layer.__class__.__name__ for layer in keras_model.layers),
        params=int(keras_model.count_params()),
        param_bytes=param_bytes,
        flops=flops,
        flops_by_op=by_op,
        producer=f"Keras (loaded with {keras.__version__})",
        version="legacy HDF5" if model.path.suffix in (".h5", ".hdf5") else "Keras v3 archive",
        details=details,
    )


def frozen_graph_def(model: Model, batch: int | None = None, keras_model=None, named: bool = True):
    """The model's inference function as a frozen GraphDef (TensorBoard proto), its inputs named
    after the model's and (``named``) its output nodes after the model's output names."""
    from shipyard.formats import tf_freeze

    keras_model = keras_model if keras_model is not None else load(model)
    concrete = tf_freeze.keras_concrete_function(keras_model, batch=batch)
    graph_def = tf_freeze.to_tb(tf_freeze.freeze_concrete_function(concrete))
    if not named:
        return graph_def
    names = [s.name for s in signature_of(keras_model).outputs]
    return tf_freeze.name_outputs(graph_def, tf_freeze.output_names(concrete, names))


def graph_def(model: Model):
    """The GraphDef (with its function library) that op tools read (``formats.registry``: ``graph``)."""
    return frozen_graph_def(model, named=False)
