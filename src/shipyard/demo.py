"""``shipyard demo``: the main job on a built-in example, from training to a served request.

1. train a small CNN on scikit-learn's handwritten digits (offline, 1,797 8x8 images);
2. save it the TF1 way (GraphDef with placeholders, Adam and a Saver, plus a checkpoint)
   and as a Keras ``.keras`` file;
3. ``ship`` the TF1 graph + checkpoint to ONNX, TFLite and TF.js with int8 quantization,
   calibrated on training images and evaluated on the held-out test images;
4. print accuracy and p50 latency of every artifact against the float original;
5. serve the result and send it a real KServe v2 request over HTTP.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np


def _progress(text: str) -> None:
    print(f"· {text}", file=sys.stderr, flush=True)


def run_demo(out_dir: Path, as_json: bool = False, epochs: int = 25, serve: bool = True) -> int:
    from shipyard import examples
    from shipyard.atomic import atomic_path, check_output_path
    from shipyard.ship.pipeline import Pipeline, ShipRequest
    from shipyard.ship.render import render_manifest, rows

    out_dir = check_output_path(out_dir, parents=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    examples.quiet_keras_home(out_dir / ".keras")
    _progress(f"training a CNN on the digits dataset ({epochs} epochs)")
    model, keras_accuracy, (x_test, y_test) = examples.train_digits(epochs=epochs)
    x_train = examples.digits_data()[0]
    model_dir = out_dir / "model"
    model_dir.mkdir(exist_ok=True)
    model.save(model_dir / "digits.keras")
    _progress("saving it the TF1 way: GraphDef + checkpoint")
    tf1 = examples.export_digits_tf1(model, model_dir / "tf1")
    np.savez(out_dir / "calibration.npz", image=x_train[:200])
    np.savez(out_dir / "test.npz", image=x_test, labels=y_test)
    dist = out_dir / "dist"
    req = ShipRequest(model=str(tf1["graph"]), checkpoint=str(tf1["directory"]), out=dist, targets=("onnx", "tflite", "tfjs"),
                      quantize="static", calibration=str(out_dir / "calibration.npz"), inputs=str(out_dir / "test.npz"),
                      samples=len(x_test), bench_runs=100, threads=1, name="digits", progress=_progress)
    manifest = Pipeline(req).run()
    answer = _serve_and_ask(dist / "serving", "digits_onnx_int8", x_test[0], int(y_test[0])) if serve else None
    # The figures stay beside the outputs (demo.json), whether or not they were printed as JSON.
    summary = json.dumps({"keras_accuracy": keras_accuracy, "rows": rows(manifest), "request": answer,
                          "report": str(dist / "report.html")}, indent=2)
    with atomic_path(out_dir / "demo.json") as tmp:
        tmp.write_text(summary + "\n")
    if as_json:
        print(summary)
    else:
        from shipyard.report.numbers import percent

        print(f"Keras model: test accuracy {percent(keras_accuracy)} on {len(x_test)} held-out digits\n")
        print(render_manifest(manifest, dist))
        if answer:
            print(f"\nserved {answer['model']} on {answer['url']}: predicted {answer['predicted']} for a digit labelled "
                  f"{answer['label']} ({answer['ms']:.1f} ms round trip)")
        print(f"\nopen the report: {dist / 'report.html'}")
    return 0


def _serve_and_ask(repo: Path, model: str, image: np.ndarray, label: int) -> dict:
    """Start ``shipyard serve`` on a free loopback port, send one KServe v2 request, stop it."""
    ready = repo.parent / ".serve-ready.json"
    ready.unlink(missing_ok=True)
    _progress(f"serving {repo} and sending a request")
    proc = subprocess.Popen([sys.executable, "-m", "shipyard", "serve", str(repo), "--rest-port", "0", "--grpc-port", "-1",
                             "--no-access-log", "--ready-file", str(ready)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not ready.is_file():
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the server did not start: {proc.stderr.read().decode()[-500:] if proc.stderr else ''}")
            time.sleep(0.2)
        port = json.loads(ready.read_text())["rest_port"]
        base = f"http://127.0.0.1:{port}"
        _wait_ready(f"{base}/v2/models/{model}/ready", deadline)
        with urllib.request.urlopen(f"{base}/v2/models/{model}", timeout=10) as resp:
            input_name = json.loads(resp.read())["inputs"][0]["name"]
        body = {"inputs": [{"name": input_name, "shape": [1, *image.shape], "datatype": "FP32", "data": image.ravel().tolist()}]}
        start = time.perf_counter()
        request = urllib.request.Request(f"{base}/v2/models/{model}/infer", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            reply = json.loads(resp.read())
        ms = (time.perf_counter() - start) * 1e3
        scores = np.asarray(reply["outputs"][0]["data"], dtype=np.float32)
        return {"model": model, "url": f"{base}/v2/models/{model}/infer", "predicted": int(scores.argmax()), "label": label, "ms": ms}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        ready.unlink(missing_ok=True)


def _wait_ready(url: str, deadline: float) -> None:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.time() > deadline:
            raise RuntimeError(f"{url} never became ready")
        time.sleep(0.3)
