"""Keras models (``.keras`` zip archives and legacy ``.h5``), loaded with Keras itself."""
from __future__ import annotations

from functools import lru_cache

from shipyard.deps import require
from shipyard.errors import ModelLoadError, ShipyardError
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
        detail = str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__
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


def summarize(model: Model) -> Summary:
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
        from shipyard.formats.tf_flops import frozen_flops

        tally = frozen_flops(model, keras_model=keras_model)
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
