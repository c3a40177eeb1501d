"""PyTriton 0.7 (the real Triton Inference Server 2.51 binary, a Python callable behind it):
the same ONNX model on onnxruntime, dynamic batching on (max_batch_size 32, no queue delay).

    BENCH_MODEL=m.onnx BENCH_PORT=8000 BENCH_GRPC_PORT=8001 BENCH_METRICS_PORT=8002 python pytriton_server.py
"""
import os

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

opts = ort.SessionOptions()
opts.intra_op_num_threads = int(os.environ.get("BENCH_THREADS", "1"))
opts.inter_op_num_threads = 1
session = ort.InferenceSession(os.environ["BENCH_MODEL"], opts, providers=["CPUExecutionProvider"])
inp, out = session.get_inputs()[0], session.get_outputs()[0]


def dims(arg) -> tuple:
    return tuple(d if isinstance(d, int) else -1 for d in arg.shape[1:])  # the batch axis is Triton's


@batch
def infer(**inputs):  # PyTriton's @batch passes the inputs as keyword arguments named after the tensors
    return {out.name: session.run([out.name], {inp.name: inputs[inp.name]})[0]}


config = TritonConfig(http_address="127.0.0.1", http_port=int(os.environ["BENCH_PORT"]),
                      grpc_address="127.0.0.1", grpc_port=int(os.environ["BENCH_GRPC_PORT"]),
                      metrics_address="127.0.0.1", metrics_port=int(os.environ["BENCH_METRICS_PORT"]),
                      log_verbose=0)
with Triton(config=config) as triton:
    triton.bind(model_name="m", infer_func=infer,
                inputs=[Tensor(name=inp.name, dtype=np.float32, shape=dims(inp))],
                outputs=[Tensor(name=out.name, dtype=np.float32, shape=dims(out))],
                config=ModelConfig(max_batch_size=32, batcher=DynamicBatcher(max_queue_delay_microseconds=0)))
    triton.serve()
