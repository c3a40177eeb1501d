"""Models OpenVINO reads -> OpenVINO IR (.xml + .bin), with OpenVINO's own converter.

``ov.convert_model`` (the Python side of OpenVINO's ``ovc`` tool) reads ONNX, TFLite, SavedModel
folders and frozen GraphDefs itself, and its front-end passes fold what a framework's export
leaves for run time (an ONNX Conv's bias brings 161 ShapeOf nodes into ResNet50 read as is);
``ov.save_model`` writes the IR. Weights stay float32 (``compress_to_fp16=False``): ``convert`` is
an exact step, checked against the source like every conversion; an int8 IR is what
``quantize --engine nncf -o model.xml`` makes.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from shipyard.convert.options import ConvertOptions
from shipyard.deps import all_output_silenced, require
from shipyard.errors import ConversionError, UnsupportedError
from shipyard.model import Model


def to_ir(src: Model, out: Path, opts: ConvertOptions) -> Model:
    ov = require("openvino", "Converting to OpenVINO IR")
    from shipyard.formats import copy_model
    from shipyard.formats.openvino_ir import first_reason

    if src.in_memory() is not None:
        raise UnsupportedError(f"{src.path}: OpenVINO's converter reads a model from a file, not an encrypted one",
                               hint="convert the unencrypted model, then encrypt the IR")
    try:
        with all_output_silenced():  # its front ends print warnings of their own
            graph = ov.convert_model(str(src.path))
    except Exception as exc:
        raise ConversionError(f"OpenVINO's converter could not convert {src.path}: {first_reason(exc)}") from exc
    with tempfile.TemporaryDirectory(prefix="shipyard-ir-") as work:
        staged = Path(work) / "model.xml"
        ov.save_model(graph, str(staged), compress_to_fp16=False)
        copy_model(Model("openvino-ir", staged), out)
    return Model("openvino-ir", out)
