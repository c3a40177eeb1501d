"""The floor: a bare Starlette + uvicorn + onnxruntime endpoint speaking just enough KServe v2.

No validation, no batching, no metrics, no auth, no limits, no model repository: it parses the
body (orjson, or the binary tensor extension), runs the session on the event loop thread and
writes the answer. What a server does beyond this is its overhead per request.

    BENCH_MODEL=m.onnx BENCH_PORT=8000 python bare_starlette.py
"""
import os

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

opts = ort.SessionOptions()
opts.intra_op_num_threads = int(os.environ.get("BENCH_THREADS", "1"))
opts.inter_op_num_threads = 1
session = ort.InferenceSession(os.environ["BENCH_MODEL"], opts, providers=["CPUExecutionProvider"])
output_names = [o.name for o in session.get_outputs()]


async def infer(request: Request) -> Response:
    raw = await request.body()
    header_len = request.headers.get("inference-header-content-length")
    head = raw[:int(header_len)] if header_len else raw
    body = orjson.loads(head)
    feeds, offset = {}, int(header_len or 0)
    for t in body["inputs"]:
        size = (t.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            feeds[t["name"]] = np.frombuffer(raw, np.float32, size // 4, offset).reshape(t["shape"])
            offset += size
        else:
            feeds[t["name"]] = np.asarray(t["data"], np.float32).reshape(t["shape"])
    outputs = session.run(output_names, feeds)
    binary = (body.get("parameters") or {}).get("binary_data_output", False)
    tensors, blobs = [], []
    for name, y in zip(output_names, outputs):
        entry = {"name": name, "datatype": "FP32", "shape": list(y.shape)}
        if binary:
            entry["parameters"] = {"binary_data_size": y.nbytes}
            blobs.append(y.tobytes())
        else:
            entry["data"] = y.ravel().tolist()
        tensors.append(entry)
    out = orjson.dumps({"model_name": "m", "outputs": tensors})
    if not blobs:
        return Response(out, media_type="application/json")
    return Response(out + b"".join(blobs), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(out))})


async def ready(request: Request) -> Response:
    return Response(b'{"ready":true}', media_type="application/json")


app = Starlette(routes=[Route("/v2/models/m/infer", infer, methods=["POST"]),
                        Route("/v2/health/ready", ready, methods=["GET"])])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["BENCH_PORT"]), log_level="critical", access_log=False)
