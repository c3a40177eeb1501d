"""BentoML service: the same ONNX model on onnxruntime."""
import os

import bentoml
import numpy as np
import onnxruntime as ort


@bentoml.service(workers=1, traffic={"timeout": 60})
class OnnxService:
    def __init__(self) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(os.environ.get("BENCH_THREADS", "1"))
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(os.environ["BENCH_MODEL"], opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    @bentoml.api
    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x.astype(np.float32)})[0]
