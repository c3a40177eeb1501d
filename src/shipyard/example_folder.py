"""The folder every example in ``docs/`` runs in: each file a page names, made from the
example models (``shipyard.examples``) with the frameworks themselves.

``python -m shipyard.example_folder DIR`` writes it, so a reader can paste any example from the
docs and get the output shown there; the test suite builds it once per session and runs every
page's examples in a copy of it (``tests/test_docs.py``).
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

from shipyard import examples

#: The example Keras CNN's input ([N, 12, 12, 3] float32, named ``image``).
IMAGE = examples.KERAS_INPUT_SHAPE


def build(directory: Path) -> Path:
    """Write the example folder into ``directory`` (created; must be empty or absent)."""
    from shipyard.atomic import atomic_path

    directory = Path(directory).absolute()
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise FileExistsError(f"{directory} is not empty")
    directory.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory, directory=True) as tmp:  # all of it or nothing
        examples.quiet_keras_home(tmp / ".keras")
        _keras_family(tmp)
        _arrays(tmp)
        _images(tmp / "images")
        _tf1(tmp / "tf1")
        _tf_specials(tmp)
        _torch(tmp)
        _onnx_specials(tmp)
        _serving_repo(tmp)
        _records(tmp)
        shutil.rmtree(tmp / ".keras", ignore_errors=True)
    return directory


def _keras_family(directory: Path) -> None:
    """model.keras, model.h5, saved_model/, frozen.pb(.pbtxt), model.tflite, model.onnx, web_model/."""
    paths = examples.save_keras_family(examples.keras_cnn(), directory / "keras")
    for path in paths.values():
        path.rename(directory / path.name)
    (directory / "keras").rmdir()


def _arrays(directory: Path) -> None:
    """Inputs for the CNN: x.npy (3 samples), inputs.npz, batch.npz, calibration sets, records."""
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (64, *IMAGE)).astype("float32")
    np.save(directory / "x.npy", images[:3])
    np.savez(directory / "inputs.npz", image=images[:1])
    np.savez(directory / "batch.npz", image=images[:8])
    np.save(directory / "calib.npy", images[:32])
    np.savez(directory / "calib.npz", image=images[:32])
    np.savez(directory / "arrays.npz", image=images[:20], label=rng.integers(0, 10, 20))


def _images(folder: Path, per_class: int = 8) -> None:
    """A folder of real photos-in-miniature: scikit-learn's digits as 12x12 RGB PNGs, one
    sub-folder per class (what image-folder loaders call labels)."""
    from PIL import Image

    x, y, _, _ = examples.digits_data()
    for label in (0, 1, 2):
        (folder / str(label)).mkdir(parents=True)
        for i, image in enumerate(x[y == label][:per_class]):
            gray = Image.fromarray((image[..., 0] * 255).astype("uint8")).resize(IMAGE[:2])
            gray.convert("RGB").save(folder / str(label) / f"{i}.png")


def _tf1(directory: Path) -> None:
    """tf1/: graph.pb (+ graph.pbtxt), an initialised checkpoint and its .meta; features.npy /
    labels.npy to feed its x and y placeholders."""
    from google.protobuf import text_format

    from shipyard.formats import tf_protos

    paths = examples.tf1_training_graph(directory)
    # TF records the checkpoint's absolute path; a relative one keeps the folder movable.
    (directory / "checkpoint").write_text('model_checkpoint_path: "model.ckpt"\nall_model_checkpoint_paths: "model.ckpt"\n')
    graph_def = tf_protos.GraphDef.FromString(paths["graph"].read_bytes())
    (directory / "graph.pbtxt").write_text(text_format.MessageToString(graph_def))
    rng = np.random.default_rng(1)
    features = rng.standard_normal((64, 8)).astype("float32")
    classes = (features[:, 0] > 0).astype(int) + (features[:, 1] > 0)
    np.save(directory.parent / "features.npy", features)
    np.save(directory.parent / "labels.npy", np.eye(3, dtype="float32")[classes])


def _tf_specials(directory: Path) -> None:
    """Frozen graphs that trip TFLite: erf.pb (an op only select TF ops have), erfinv.pb (an
    op TFLite has in no form) and scalar_bool.pb (a scalar float and a bool input)."""
    from shipyard.deps import require
    from shipyard.formats.tf_freeze import freeze_concrete_function

    tf = require("tensorflow", "Building the example graphs")

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def erfinv(x):
        return tf.identity(tf.math.erfinv(tf.clip_by_value(x, -0.9, 0.9)), name="y")

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def erf(x):
        return tf.identity(tf.math.erf(x), name="y")

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x"),
                                  tf.TensorSpec([], tf.float32, name="scale"),
                                  tf.TensorSpec([], tf.bool, name="flag")])
    def scalar_bool(x, scale, flag):
        return tf.identity(tf.where(flag, x * scale, x), name="y")

    for name, function in (("erf.pb", erf), ("erfinv.pb", erfinv), ("scalar_bool.pb", scalar_bool)):
        graph_def = freeze_concrete_function(function.get_concrete_function())
        # The frozen graph lists its placeholders in no fixed order; put them in argument order
        # so that every build reports its inputs (and the docs their fixes) the same way.
        arguments = [spec.name for spec in function.input_signature]
        placeholders = sorted((n for n in graph_def.node if n.op == "Placeholder"), key=lambda n: arguments.index(n.name))
        rest = [n for n in graph_def.node if n.op != "Placeholder"]
        del graph_def.node[:]
        graph_def.node.extend(placeholders + rest)
        (directory / name).write_bytes(graph_def.SerializeToString())


def _torch(directory: Path) -> None:
    """model.pt (TorchScript, input [N, 3, 12, 12]) and cnn.onnx (its ONNX export), detector.onnx, calibration
    samples for it (calib_nchw.npy) and wrong-sized ones (bad.npy), and silero-vad's TorchScript as vad.jit when installed."""
    paths = examples.save_torch_family(examples.torch_cnn(), directory / "torch")
    paths["torchscript"].rename(directory / "model.pt")
    paths["onnx"].rename(directory / "cnn.onnx")
    (directory / "torch").rmdir()
    np.save(directory / "bad.npy", np.zeros((4, 3, 10, 10), "float32"))
    np.save(directory / "calib_nchw.npy", np.random.default_rng(4).uniform(-1, 1, (32, *examples.TORCH_INPUT_SHAPE)).astype("float32"))
    # the detector whose heads an accuracy search must keep in float (docs/quantize.md)
    examples.save_torch_detector(examples.torch_detector(), directory / "detector.onnx")
    np.save(directory / "detector_calib.npy",
            np.random.default_rng(5).standard_normal((64, *examples.DETECTOR_INPUT_SHAPE)).astype("float32"))
    try:
        import silero_vad
    except ImportError:
        return
    shutil.copy(Path(silero_vad.__file__).parent / "data" / "silero_vad.jit", directory / "vad.jit")
    np.save(directory / "audio.npy", (np.random.default_rng(2).standard_normal((1, 512)) * 0.1).astype("float32"))


def _onnx_specials(directory: Path) -> None:
    """ONNX files the pages need for one point each: a broken copy of model.onnx (bad.onnx),
    a pair with different outputs, and a Paddle-style model with weights in Constant nodes."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(directory / "model.onnx")
    for init in model.graph.initializer:
        if "conv3" in init.name and len(init.dims) == 4:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
    onnx.save(model, directory / "bad.onnx")

    def two_heads(outputs: list[str], path: Path) -> None:
        nodes = [helper.make_node("Relu", ["x"], ["relu"]), helper.make_node("Neg", ["x"], ["neg"])]
        value = {name: helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [1, 4]) for name in ("x", "relu", "neg")}
        graph = helper.make_graph([n for n in nodes if n.output[0] in outputs], "heads", [value["x"]], [value[o] for o in outputs])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)

    two_heads(["relu", "neg"], directory / "two_outputs.onnx")
    two_heads(["relu"], directory / "one_output.onnx")

    paddle = onnx.load(directory / "cnn.onnx")
    constants = [helper.make_node("Constant", [], [i.name], value=i) for i in paddle.graph.initializer]
    del paddle.graph.initializer[:]
    nodes = list(paddle.graph.node)
    del paddle.graph.node[:]
    paddle.graph.node.extend(constants + nodes)
    onnx.save(paddle, directory / "constants.onnx")


def _serving_repo(directory: Path) -> None:
    """models/mlp/{1,2}/model.onnx: two versions of a 16-in, 4-out MLP; token.txt for --auth-token-file."""
    for version, seed in ((1, 0), (2, 1)):
        examples.onnx_mlp(directory / "models" / "mlp" / str(version) / "model.onnx", seed=seed)
    (directory / "token.txt").write_text("tok-123\n")


def _records(directory: Path) -> None:
    """inputs.tfrecord: 8 tf.train.Examples whose float feature ``pixels`` holds one CNN input each."""
    from shipyard.records import write_records
    from shipyard.tf_example import encode

    rng = np.random.default_rng(3)
    samples = rng.uniform(-1, 1, (8, *IMAGE)).astype("float32")
    write_records(directory / "inputs.tfrecord", (encode({"pixels": s.ravel()}) for s in samples))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m shipyard.example_folder DIR", file=sys.stderr)
        return 2
    try:
        folder = build(Path(argv[0]))
    except FileExistsError as exc:
        print(f"shipyard.example_folder: {exc}; give a new or empty directory", file=sys.stderr)
        return 2
    print(f"{folder}: " + " ".join(sorted(p.name for p in folder.iterdir())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
