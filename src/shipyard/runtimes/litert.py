"""LiteRT (TFLite) runner through ``ai_edge_litert``; dynamic dims are resized per call."""
from __future__ import annotations

import numpy as np

from shipyard.deps import native_output_silenced, require
from shipyard.errors import ModelLoadError, engine_message
from shipyard.formats.tflite import TFLiteFile
from shipyard.model import Model, Quantization, Signature
from shipyard.runtimes.base import BaseRunner, TensorInfo


class LiteRTRunner(BaseRunner):
    backend = "litert"
    intermediate_formats = frozenset({"tflite"})

    def __init__(self, model: Model, threads: int | None = None, model_bytes: bytes | None = None,
                 preserve_all_tensors: bool = False, xnnpack: bool = True, intermediates: bool = False):
        if intermediates:
            # Delegates (XNNPACK) fuse whole subgraphs and hide their intermediates: the builtin
            # kernels, with every tensor kept alive instead of the arena reusing its buffer.
            preserve_all_tensors, xnnpack = True, False
        # Parse (and bounds-check) the flatbuffer first: LiteRT trusts offsets and can crash on a bad file.
        model_bytes = model_bytes if model_bytes is not None else model.in_memory()
        parsed = TFLiteFile(model.path, model_bytes)
        signature: Signature = parsed.signature() if parsed else Signature((), ())
        interp_mod = require("ai_edge_litert.interpreter", "Running a TFLite model")
        kwargs = {"num_threads": threads} if threads else {}
        try:
            # LiteRT announces its XNNPACK delegate on stderr from C++; errors still arrive as exceptions.
            with native_output_silenced(2):
                if not xnnpack:
                    # The builtin kernels read weights in place from the memory-mapped file, so
                    # processes serving the same file share one copy; XNNPACK repacks them privately.
                    kwargs["experimental_op_resolver_type"] = interp_mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
                self._create(interp_mod, model, model_bytes, preserve_all_tensors, kwargs)
        except (ValueError, RuntimeError) as exc:
            first = engine_message(exc)
            hint = "ops from TensorFlow (Flex) need the select-TF-ops runtime" if "Flex" in str(exc) or "custom op" in str(exc).lower() else None
            raise ModelLoadError(f"{model.path}: LiteRT cannot load the model ({first})", hint=hint) from exc
        self._inputs = self.interpreter.get_input_details()
        self._outputs = self.interpreter.get_output_details()
        if not signature.inputs and not signature.outputs:
            from shipyard.model import TensorSpec

            def spec(d):
                return TensorSpec(d["name"], np.dtype(d["dtype"]).name, tuple(int(x) for x in d.get("shape_signature", d["shape"])))

            signature = Signature(tuple(spec(d) for d in self._inputs), tuple(spec(d) for d in self._outputs))
        super().__init__(model, _with_quantization(signature, self._inputs, self._outputs), threads)

    def _create(self, interp_mod, model: Model, model_bytes: bytes | None, preserve: bool, kwargs: dict) -> None:
        import warnings

        source = {"model_content": model_bytes} if model_bytes is not None else {"model_path": str(model.path)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "preserve_all_tensors is for debugging": that is its use here
            self.interpreter = interp_mod.Interpreter(**source, experimental_preserve_all_tensors=preserve, **kwargs)
        self.interpreter.allocate_tensors()

    # -- intermediates (opened with intermediates=True: every tensor preserved) ---------------

    def _details(self) -> tuple[dict[str, int], dict[str, Quantization], list[TensorInfo]]:
        if not hasattr(self, "_tensor_details"):
            details = self.interpreter.get_tensor_details()
            names = {d["index"]: d["name"] for d in details}
            index = {d["name"]: d["index"] for d in details}
            quant = {d["name"]: q for d in details
                     if np.dtype(d["dtype"]).kind in "iu" and (q := tflite_quantization(d)) is not None}
            tensors = [TensorInfo(names[i], op["op_name"], op["op_name"] + f"#{op['index']}")
                       for op in self.interpreter._get_ops_details() for i in op["outputs"] if i in names]
            self._tensor_details = (index, quant, tensors)
        return self._tensor_details

    def tensors(self) -> list[TensorInfo]:
        return self._details()[2]

    def quantization(self, name):
        return self._details()[1].get(name) or super().quantization(name)

    def _fetch(self, feeds, names):
        self._run(feeds)
        index = self._details()[0]
        return {n: np.array(self.interpreter.get_tensor(index[n])) for n in names}

    def _run(self, feeds):
        interp = self.interpreter
        resized = False
        for detail, spec in zip(self._inputs, self.signature.inputs):
            value = feeds[spec.name]
            if tuple(detail["shape"]) != value.shape:
                interp.resize_tensor_input(detail["index"], value.shape, strict=False)
                resized = True
        if resized:
            interp.allocate_tensors()
            self._inputs = interp.get_input_details()
            self._outputs = interp.get_output_details()
        for detail, spec in zip(self._inputs, self.signature.inputs):
            interp.set_tensor(detail["index"], feeds[spec.name])
        interp.invoke()
        return {spec.name: interp.get_tensor(d["index"]).copy() for d, spec in zip(self._outputs, self.signature.outputs)}


def tflite_quantization(detail: dict) -> Quantization | None:
    """The scale(s) and zero point(s) LiteRT reports for a tensor (None for a float tensor)."""
    params = detail.get("quantization_parameters") or {}
    scales = params.get("scales")
    if scales is not None and len(scales):
        return Quantization.of(scales, params.get("zero_points"), params.get("quantized_dimension", 0))
    scale, zero = detail.get("quantization", (0.0, 0))
    return Quantization.of([scale], [zero])


def _with_quantization(signature: Signature, inputs: list[dict], outputs: list[dict]) -> Signature:
    """The signature with the engine's quantization of each integer input and output attached."""
    import dataclasses

    def attach(specs, details):
        return tuple(dataclasses.replace(spec, quantization=tflite_quantization(d))
                     if np.dtype(d["dtype"]).kind in "iu" and tflite_quantization(d) else spec
                     for spec, d in zip(specs, details))

    if len(signature.inputs) != len(inputs) or len(signature.outputs) != len(outputs):
        return signature
    return Signature(attach(signature.inputs, inputs), attach(signature.outputs, outputs))
