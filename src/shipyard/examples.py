"""Small real models built on the spot: the demo's example and the test suite's fixtures.

Each builder trains nothing heavy; weights are random but batch-norm statistics are set to
non-trivial values so that a broken conversion shows up as a real numeric difference.
"""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np

from shipyard.deps import require

KERAS_INPUT_SHAPE = (12, 12, 3)
TORCH_INPUT_SHAPE = (3, 12, 12)


def keras_cnn(seed: int = 0):
    """A small Keras CNN with conv, batch norm, depthwise conv, pooling and a dense head."""
    require("tensorflow", "Building the example Keras model")
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input(KERAS_INPUT_SHAPE, name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(inp)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(6.0, name="relu1")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.Conv2D(16, 1, name="conv3", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(10, name="logits")(x)
    out = keras.layers.Softmax(name="probs")(x)
    model = keras.Model(inp, out, name="example_cnn")
    randomize_batchnorm(model, seed)
    return model


def randomize_batchnorm(model, seed: int = 0) -> None:
    """Give every BatchNormalization layer non-trivial statistics (fresh ones are identity)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.__class__.__name__ == "BatchNormalization":
            gamma, beta, mean, var = (w.shape for w in layer.get_weights())
            layer.set_weights([
                rng.uniform(0.5, 1.5, gamma).astype("float32"),
                rng.normal(0, 0.1, beta).astype("float32"),
                rng.normal(0, 0.1, mean).astype("float32"),
                rng.uniform(0.5, 1.5, var).astype("float32"),
            ])


def save_keras_family(model, directory: Path) -> dict[str, Path]:
    """Write one Keras model in every TensorFlow-side format; returns {name: path}."""
    tf = require("tensorflow", "Saving the example models")
    import tf2onnx
    from google.protobuf import text_format

    from shipyard.convert.tfjs_writer import write_graph_model
    from shipyard.formats import tf_protos
    from shipyard.formats.tf_freeze import freeze_concrete_function, keras_concrete_function

    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "keras": directory / "model.keras",
        "h5": directory / "model.h5",
        "savedmodel": directory / "saved_model",
        "pb": directory / "frozen.pb",
        "pbtxt": directory / "frozen.pbtxt",
        "tflite": directory / "model.tflite",
        "onnx": directory / "model.onnx",
        "tfjs": directory / "web_model",
    }
    model.save(paths["keras"])
    model.save(paths["h5"])
    with contextlib.redirect_stdout(io.StringIO()):
        model.export(str(paths["savedmodel"]), verbose=False)
    concrete = keras_concrete_function(model)
    graph_def = freeze_concrete_function(concrete)
    paths["pb"].write_bytes(graph_def.SerializeToString())
    paths["pbtxt"].write_text(text_format.MessageToString(graph_def))
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    with contextlib.redirect_stdout(io.StringIO()):  # Keras prints the exported signature
        paths["tflite"].write_bytes(converter.convert())
    inputs = [n.name + ":0" for n in graph_def.node if n.op == "Placeholder"]
    outputs = [t.name for t in concrete.outputs] if hasattr(concrete, "outputs") else ["Identity:0"]
    onnx_model, _ = tf2onnx.convert.from_graph_def(
        graph_def, input_names=inputs, output_names=outputs, opset=17
    )
    paths["onnx"].write_bytes(onnx_model.SerializeToString())
    write_graph_model(tf_protos.GraphDef.FromString(graph_def.SerializeToString()), paths["tfjs"])
    return paths


def tf1_training_graph(directory: Path, seed: int = 0) -> dict[str, Path]:
    """A TF1-style classifier: placeholders, variables, Adam train op and a Saver.

    Writes the GraphDef (``graph.pb``), a checkpoint with its ``.meta`` and returns the
    paths plus the tensor names a C/C++ user would look up.
    """
    tf = require("tensorflow", "Building the TF1 example graph")
    v1 = tf.compat.v1
    directory.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(seed)
        x = v1.placeholder(tf.float32, [None, 8], name="x")
        y = v1.placeholder(tf.float32, [None, 3], name="y")
        w1 = v1.get_variable("dense1/kernel", [8, 16], initializer=v1.glorot_uniform_initializer(seed=seed))
        b1 = v1.get_variable("dense1/bias", [16], initializer=v1.zeros_initializer())
        w2 = v1.get_variable("dense2/kernel", [16, 3], initializer=v1.glorot_uniform_initializer(seed=seed + 1))
        b2 = v1.get_variable("dense2/bias", [3], initializer=v1.zeros_initializer())
        hidden = tf.nn.relu(tf.matmul(x, w1) + b1, name="hidden")
        logits = tf.add(tf.matmul(hidden, w2), b2, name="logits")
        tf.nn.softmax(logits, name="probs")
        loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=logits), name="loss")
        v1.train.AdamOptimizer(0.01).minimize(loss, name="train")
        prefix = _train_ready_graph(tf, graph, directory)
    return {
        "graph": directory / "graph.pb",
        "checkpoint": Path(prefix),
        "meta": Path(prefix + ".meta"),
        "directory": directory,
    }


def torch_cnn(seed: int = 0):
    """A small torch CNN (conv, batch norm, pooling, linear) in eval mode."""
    torch = require("torch", "Building the example PyTorch model")
    nn = torch.nn
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, groups=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    )
    with torch.no_grad():
        bn = model[1]
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


def save_torch_family(model, directory: Path) -> dict[str, Path]:
    """TorchScript (traced) and ONNX (TorchScript-based exporter, one file) of a torch module."""
    torch = require("torch", "Saving the example PyTorch model")
    directory.mkdir(parents=True, exist_ok=True)
    example = torch.randn(1, *TORCH_INPUT_SHAPE)
    paths = {"torchscript": directory / "model.pt", "onnx": directory / "model_torch.onnx"}
    traced = torch.jit.trace(model, example)
    traced.save(str(paths["torchscript"]))
    torch.onnx.export(
        model, (example,), str(paths["onnx"]), input_names=["input"], output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, opset_version=17, dynamo=False,
    )
    return paths


def quiet_keras_home(directory: Path) -> None:
    """Keep Keras from writing ~/.keras/keras.json on first import."""
    os.environ.setdefault("KERAS_HOME", str(directory))


# ---------------------------------------------------------------- the digits demo model

DIGITS_SHAPE = (8, 8, 1)


def digits_data(seed: int = 0):
    """scikit-learn's 8x8 handwritten digits (offline), scaled to [0, 1]: (x_train, y_train, x_test, y_test)."""
    require("sklearn", "Loading the digits dataset")
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int64")
    order = np.random.default_rng(seed).permutation(len(x))
    split = int(len(x) * 0.8)
    train, test = order[:split], order[split:]
    return x[train], y[train], x[test], y[test]


def digits_cnn(seed: int = 0):
    """conv-relu-pool, conv-relu, flatten, dense: small enough to train in seconds on a CPU."""
    require("tensorflow", "Building the digits model")
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input(DIGITS_SHAPE, name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(inp)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(10, name="logits")(x)
    out = keras.layers.Softmax(name="probs")(x)
    return keras.Model(inp, out, name="digits_cnn")


def train_digits(epochs: int = 25, seed: int = 0):
    """(trained Keras model, test accuracy, (x_test, y_test))."""
    x_train, y_train, x_test, y_test = digits_data(seed)
    model = digits_cnn(seed)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    accuracy = float(np.mean(np.asarray(model.predict(x_test, verbose=0)).argmax(-1) == y_test))
    return model, accuracy, (x_test, y_test)


def export_digits_tf1(model, directory: Path) -> dict[str, Path]:
    """The trained digits CNN written the TF1 way: a GraphDef with placeholders, an Adam train
    op and a Saver, plus a checkpoint holding the Keras weights (the graph recomputes the same
    function with tf.nn ops)."""
    tf = require("tensorflow", "Writing the TF1 digits graph")
    v1 = tf.compat.v1
    directory.mkdir(parents=True, exist_ok=True)
    weights = {layer.name: layer.get_weights() for layer in model.layers if layer.get_weights()}
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, *DIGITS_SHAPE], name="image")
        labels = v1.placeholder(tf.int64, [None], name="label")
        params = {}
        for name, (kernel, bias) in weights.items():
            params[name] = (v1.get_variable(f"{name}/kernel", initializer=kernel), v1.get_variable(f"{name}/bias", initializer=bias))
        h = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, params["conv1"][0], 1, "SAME"), params["conv1"][1]))
        h = tf.nn.max_pool2d(h, 2, 2, "VALID")
        h = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(h, params["conv2"][0], 1, "SAME"), params["conv2"][1]))
        h = tf.reshape(h, [-1, int(np.prod(h.shape[1:]))])
        logits = tf.nn.bias_add(tf.matmul(h, params["logits"][0]), params["logits"][1], name="logits")
        tf.nn.softmax(logits, name="probs")
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits), name="loss")
        v1.train.AdamOptimizer(1e-3).minimize(loss, name="train")
        prefix = _train_ready_graph(tf, graph, directory)
    return {"graph": directory / "graph.pb", "checkpoint": Path(prefix), "directory": directory}


def _train_ready_graph(tf, graph, directory: Path) -> str:
    """Add the init op and a Saver to ``graph`` (the default graph), write an initialised
    checkpoint, its .meta, and graph.pb; returns the checkpoint prefix."""
    v1 = tf.compat.v1
    init = v1.global_variables_initializer()
    saver = v1.train.Saver()
    with v1.Session(graph=graph) as sess:
        sess.run(init)
        prefix = saver.save(sess, str(directory / "model.ckpt"))
    tf.io.write_graph(graph.as_graph_def(), str(directory), "graph.pb", as_text=False)
    return prefix


def onnx_mlp(path: Path, seed: int = 0, sizes: tuple[int, int, int] = (16, 64, 4)) -> dict[str, np.ndarray]:
    """A tiny MLP (Gemm, Relu, Gemm) written as ONNX with a dynamic batch; returns its weights.

    Built with onnx.helper alone (no framework import), so serving tests start in milliseconds;
    the weights let a test compute the expected answer of each version with numpy.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n_in, n_hidden, n_out = sizes
    rng = np.random.default_rng(seed)
    weights = {
        "w1": rng.standard_normal((n_in, n_hidden)).astype("float32") * 0.3,
        "b1": rng.standard_normal(n_hidden).astype("float32") * 0.1,
        "w2": rng.standard_normal((n_hidden, n_out)).astype("float32") * 0.3,
        "b2": rng.standard_normal(n_out).astype("float32") * 0.1,
    }
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]), helper.make_node("Relu", ["h"], ["hr"]),
         helper.make_node("Gemm", ["hr", "w2", "b2"], ["y"])],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n_out])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return weights


def mlp_reference(weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """What :func:`onnx_mlp`'s model computes, in numpy."""
    hidden = np.maximum(x @ weights["w1"] + weights["b1"], 0)
    return hidden @ weights["w2"] + weights["b2"]


DETECTOR_INPUT_SHAPE = (3, 16, 16)


def torch_detector(seed: int = 0):
    """A tiny single-shot detector: a conv backbone and box heads whose ranges differ by 1000x,
    concatenated along the anchor axis the way SSD/BlazeFace heads are, plus a class head.

    Quantized with one scale, the concatenated boxes lose the small head entirely (top-1
    agreement ~58%) while every convolution quantizes well: the case an accuracy search must
    find by measuring at the outputs rather than per layer.
    """
    torch = require("torch", "Building the example detector")
    nn = torch.nn
    torch.manual_seed(seed)

    class Detector(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU())
            self.far = nn.Conv2d(16, 4, 1)     # large boxes, pixels
            self.near = nn.Conv2d(16, 4, 1)    # small offsets
            self.cls = nn.Conv2d(16, 2, 1)

        def forward(self, x):
            f = self.body(x)
            far = self.far(f).flatten(2).transpose(1, 2) * 300.0
            near = self.near(f).flatten(2).transpose(1, 2) * 0.3
            return torch.cat([far, near], dim=1), self.cls(f).flatten(2).transpose(1, 2)

    return Detector().eval()


def save_torch_detector(model, path: Path) -> Path:
    """The detector as one ONNX file with outputs ``boxes`` and ``scores`` and a dynamic batch."""
    torch = require("torch", "Saving the example detector")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (torch.randn(1, *DETECTOR_INPUT_SHAPE),), str(path), input_names=["image"],
                      output_names=["boxes", "scores"], dynamic_axes={"image": {0: "batch"}}, opset_version=17,
                      dynamo=False)
    return path


EXAMPLE_CLASSES = (b"cat", b"dog", b"bird")


def tf_example_classifier(directory: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """A SavedModel with TF Serving's classify and regress signatures over serialized
    ``tf.Example`` (feature ``x``: 4 floats): ``serving_default`` gives ``classes`` (the labels
    of :data:`EXAMPLE_CLASSES`) and ``scores`` (softmax of ``x @ w + b``), ``regress`` gives
    ``outputs`` (``x @ v + c``). Returns the weights for :func:`example_classifier_reference`."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    weights = {"w": rng.standard_normal((4, 3)).astype("float32"), "b": rng.standard_normal(3).astype("float32"),
               "v": rng.standard_normal((4, 1)).astype("float32"), "c": rng.standard_normal(1).astype("float32")}
    module = tf.Module()
    module.vars = {k: tf.Variable(v, name=k) for k, v in weights.items()}
    spec = {"x": tf.io.FixedLenFeature([4], tf.float32)}

    def features(serialized):
        return tf.io.parse_example(serialized, spec)["x"]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(inputs):
        scores = tf.nn.softmax(features(inputs) @ module.vars["w"] + module.vars["b"])
        classes = tf.tile(tf.constant([list(EXAMPLE_CLASSES)]), [tf.shape(inputs)[0], 1])
        return {"classes": classes, "scores": scores}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(inputs):
        return {"outputs": tf.squeeze(features(inputs) @ module.vars["v"] + module.vars["c"], axis=1)}

    tf.saved_model.save(module, str(directory), signatures={"serving_default": classify, "regress": regress})
    return weights


def example_classifier_reference(weights: dict[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scores, regression values) that :func:`tf_example_classifier`'s model computes, in numpy."""
    logits = x @ weights["w"] + weights["b"]
    scores = np.exp(logits - logits.max(axis=1, keepdims=True))
    return scores / scores.sum(axis=1, keepdims=True), (x @ weights["v"] + weights["c"])[:, 0]
