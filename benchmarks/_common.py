"""Shared helpers for the quantization benchmarks: Keras -> frozen GraphDef -> ONNX, and timing."""
from __future__ import annotations

from pathlib import Path


def keras_to_onnx(model, path: Path, batch: int | None = None) -> Path:
    """Keras -> frozen GraphDef (shipyard.formats.tf_freeze) -> ONNX (tf2onnx, opset 17)."""
    import tf2onnx

    from shipyard.formats.tf_freeze import freeze_concrete_function, keras_concrete_function

    concrete = keras_concrete_function(model, batch)
    graph_def = freeze_concrete_function(concrete)
    inputs = [n.name + ":0" for n in graph_def.node if n.op == "Placeholder"]
    outputs = [t.name for t in concrete.outputs]
    onnx_model, _ = tf2onnx.convert.from_graph_def(graph_def, input_names=inputs, output_names=outputs, opset=17)
    path.write_bytes(onnx_model.SerializeToString())
    return path


def median_ms(fn, runs: int, warmup: int = 3) -> float:
    from shipyard.timing import median_ms as median

    return median(fn, runs, warmup)


def ort_session(path: Path, threads: int = 2):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def tflite_interpreter(path: Path, threads: int = 2):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    return interp


def tflite_predict(interp, x):
    """Run a TFLite model on float input x (quantizing / dequantizing int8 input and output)."""
    import numpy as np

    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    if inp["dtype"] != np.float32:
        scale, zero = inp["quantization"]
        x = np.clip(np.round(x / scale + zero), -128, 127).astype(inp["dtype"])
    interp.set_tensor(inp["index"], x)
    interp.invoke()
    y = interp.get_tensor(out["index"])
    if out["dtype"] != np.float32:
        scale, zero = out["quantization"]
        y = (y.astype(np.float32) - zero) * scale
    return y


def table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
