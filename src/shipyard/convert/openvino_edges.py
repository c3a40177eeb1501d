"""Models OpenVINO reads -> OpenVINO IR (.xml + .bin), with OpenVINO's own converter.

``ov.convert_model`` (the Python side of OpenVINO's ``ovc`` tool, through
``formats.openvino_ir.graph_of``) reads ONNX, TFLite, SavedModel folders and frozen GraphDefs
itself; ``ov.save_model`` writes the IR. Weights stay float32 (``compress_to_fp16=False``): ``convert`` is
an exact step, checked against the source like every conversion; an int8 IR is what
``quantize --engine nncf -o model.xml`` makes.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from shipyard.convert.options import ConvertOptions
from shipyard.deps import require
from shipyard.model import Model


def to_ir(src: Model, out: Path, opts: ConvertOptions) -> Model:
    ov = require("openvino", "Converting to OpenVINO IR")
    from shipyard.formats import copy_model
    from shipyard.formats.openvino_ir import graph_of

    graph = graph_of(src)
    with tempfile.TemporaryDirectory(prefix="shipyard-ir-") as work:
        staged = Path(work) / "model.xml"
        ov.save_model(graph, str(staged), compress_to_fp16=False)
        copy_model(Model("openvino-ir", staged), out)
    return Model("openvino-ir", out)
