"""shipyard transform: the graph_transforms syntax, GraphDef and ONNX transforms, verification."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_clean_error, cli_inprocess
from shipyard.errors import UsageError
from shipyard.passes.spec import parse_spec

FULL_SPEC = ('fold_constants(ignore_errors=true) remove_nodes(op=Identity, op=CheckNumerics) fold_batch_norms '
             'fold_old_batch_norms strip_unused_nodes(type=float, shape="1,12,12,3") sort_by_execution_order '
             'merge_duplicate_nodes')


# ---------------------------------------------------------------- the spec syntax

def test_spec_parses_graph_transforms_syntax():
    steps = parse_spec('strip_unused_nodes(type=float, shape="1,224,224,3") remove_nodes(op=Identity, op=CheckNumerics)\n'
                       "fold_constants(ignore_errors=true) fold_batch_norms")
    assert [s.name for s in steps] == ["strip_unused_nodes", "remove_nodes", "fold_constants", "fold_batch_norms"]
    assert steps[0].params == {"type": ["float"], "shape": ["1,224,224,3"]}
    assert steps[1].params == {"op": ["Identity", "CheckNumerics"]}
    assert steps[3].params == {}
    assert str(steps[0]) == 'strip_unused_nodes(type=float, shape="1,224,224,3")'


@pytest.mark.parametrize("bad", ["", "fold_constants(", "remove_nodes(op)", 'strip_unused_nodes(shape="1,2)', "a(b=1 c=2)", "(x=1)"])
def test_spec_errors(bad):
    with pytest.raises(UsageError):
        parse_spec(bad)


# ---------------------------------------------------------------- GraphDef

def _tf_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    from shipyard.runtimes import open_runner

    with open_runner(path) as runner:
        return next(iter(runner.run({runner.signature.inputs[0].name: x}).values()))


def _graph(path: Path):
    from shipyard.formats import tf_protos

    return tf_protos.parse_graph_file(path)[0]


def test_graphdef_pipeline_folds_keras_batch_norms(keras_example, tmp_path, capsys):
    _, paths, x, ref = keras_example
    out = tmp_path / "opt.pb"
    proc = cli_inprocess(capsys, "transform", paths["pb"], "--transforms", FULL_SPEC, "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["after"]["nodes"] < report["before"]["nodes"]
    assert report["verified"] is True and report["verification"][0]["max_abs"] < 1e-5
    ops = [n.op for n in _graph(out).node]
    assert "Rsqrt" not in ops and "Mul" not in ops  # the batch norms became weights + BiasAdd
    assert ops.count("BiasAdd") >= 2
    # independent check: the transformed graph on TensorFlow against the Keras model itself
    for i in range(len(x)):
        np.testing.assert_allclose(_tf_outputs(out, x[i : i + 1]), ref[i : i + 1], atol=1e-5)


def test_text_output_and_human_report(keras_paths, tmp_path, capsys):
    out = tmp_path / "opt.pbtxt"
    proc = cli_inprocess(capsys, "transform", keras_paths["pb"], "-t", "remove_device sort_by_execution_order obfuscate_names", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "nodes   " in proc.stdout and "size" in proc.stdout and "matches the original" in proc.stdout
    assert out.read_text().lstrip().startswith("node")
    names = {n.name for n in _graph(out).node}
    assert "image" in names and not any("conv1" in n for n in names)


def _bn_graph(directory: Path) -> tuple[Path, np.ndarray]:
    """A frozen TF1 graph with FusedBatchNormV3 after Conv2D and BatchNormWithGlobalNormalization after
    a depthwise conv, plus CheckNumerics and duplicated constants."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
        w = tf.constant(rng.standard_normal((3, 3, 3, 4)).astype("float32"))
        y = tf.nn.conv2d(x, w, 1, "SAME")
        y = tf.raw_ops.FusedBatchNormV3(
            x=y, scale=rng.uniform(0.5, 2, 4).astype("float32"), offset=rng.normal(0, 1, 4).astype("float32"),
            mean=rng.normal(0, 1, 4).astype("float32"), variance=rng.uniform(0.5, 2, 4).astype("float32"),
            epsilon=1e-3, is_training=False)[0]
        y = tf.nn.relu(tf.debugging.check_numerics(y, "bad"))
        dw = tf.constant(rng.standard_normal((3, 3, 4, 1)).astype("float32"))
        y = tf.nn.depthwise_conv2d(y, dw, [1, 1, 1, 1], "SAME", name="dw")
        a = tf.add(y, tf.constant(1.0), name="dup_a")
        b = tf.add(y, tf.constant(1.0), name="dup_b")
        tf.identity(a * b, name="output")
    # BatchNormWithGlobalNormalization exists only in GraphDefs older than version 9: add it by hand
    gd = graph.as_graph_def()
    gd.versions.producer = 8
    bn = gd.node.add(name="old_bn", op="BatchNormWithGlobalNormalization", input=["dw"])
    bn.attr["T"].type = 1
    bn.attr["variance_epsilon"].f = 1e-3
    bn.attr["scale_after_normalization"].b = True
    for name, value in (("m", rng.normal(0, 1, 4)), ("v", rng.uniform(0.5, 2, 4)), ("beta", rng.normal(0, 1, 4)),
                        ("gamma", rng.uniform(0.5, 2, 4))):
        c = gd.node.add(name=f"old_bn/{name}", op="Const")
        c.attr["dtype"].type = 1
        c.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value.astype("float32")))
        bn.input.append(c.name)
    for node in gd.node:
        if node.name in ("dup_a", "dup_b"):
            node.input[0] = "old_bn"
    x_val = rng.standard_normal((2, 8, 8, 3)).astype("float32")
    check = tf.Graph()
    with check.as_default():
        tf.import_graph_def(gd, name="")
        with tf.compat.v1.Session(graph=check) as sess:
            ref = sess.run("output:0", {"input:0": x_val})
    path = directory / "bn.pb"
    path.write_bytes(gd.SerializeToString())
    return path, (x_val, ref)


@pytest.fixture(scope="module")
def bn_graph(tmp_path_factory):
    return _bn_graph(tmp_path_factory.mktemp("bn"))


def test_fold_old_batch_norms_and_friends(bn_graph, tmp_path, capsys):
    path, (x, ref) = bn_graph
    before = [n.op for n in _graph(path).node]
    assert "FusedBatchNormV3" in before and "BatchNormWithGlobalNormalization" in before
    out = tmp_path / "folded.pb"
    spec = "remove_nodes(op=Identity, op=CheckNumerics) fold_old_batch_norms merge_duplicate_nodes"
    proc = cli_inprocess(capsys, "transform", path, "-t", spec, "-o", out, "--output-nodes", "output")
    assert proc.returncode == 0, proc.stderr
    ops = [n.op for n in _graph(out).node]
    assert not {"FusedBatchNormV3", "BatchNormWithGlobalNormalization", "CheckNumerics"} & set(ops)
    assert ops.count("AddV2") + ops.count("Add") == 1  # dup_a and dup_b merged
    np.testing.assert_allclose(_tf_outputs(out, x), ref, rtol=1e-4, atol=1e-4)


def test_weight_rounding_and_quantization_graphdef(bn_graph, tmp_path, capsys):
    path, (x, ref) = bn_graph
    for spec, op in (("quantize_weights(minimum_size=16)", "Dequantize"), ("round_weights(num_steps=64)", None)):
        out = tmp_path / "w.pb"
        proc = cli_inprocess(capsys, "transform", path, "-t", spec, "-o", out, "--json")
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["verification"][0]["cosine"] > 0.99
        if op:
            g = _graph(out)
            assert op in [n.op for n in g.node] and any(n.attr["value"].tensor.dtype == 12 for n in g.node if n.op == "Const")
        y = _tf_outputs(out, x)
        assert np.abs(y - ref).max() > 0  # lossy: not bit-identical, but close
        np.testing.assert_allclose(y, ref, atol=0.15 * np.abs(ref).max())


def test_quantize_nodes_runs_on_eight_bit_kernels(keras_example, tmp_path, capsys):
    """TF's quantize_nodes: Conv2D/MatMul/Relu/MaxPool become their Quantized* kernels, eight-bit
    tensors flow between them without a Dequantize/QuantizeV2 round trip, outputs stay close."""
    from conftest import cli_inprocess

    _, paths, x, ref = keras_example
    out = tmp_path / "q.pb"
    proc = cli_inprocess(capsys, "transform", paths["pb"], "-t", "remove_training_nodes quantize_nodes fold_constants",
                         "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    ops = [n.op for n in _graph(out).node]
    assert {"QuantizedConv2D", "QuantizedMatMul", "QuantizedRelu", "QuantizedMaxPool", "Requantize"} <= set(ops), ops
    assert "Conv2D" not in ops and "MatMul" not in ops
    by_name = {n.name: n for n in _graph(out).node}
    chained = [n.name for n in by_name.values() if n.op.startswith("Quantized")  # fed eight bits by another one
               and (by_name[n.input[0].split(":")[0]].op.startswith("Quantized")
                    or by_name[n.input[0].split(":")[0]].op == "Requantize")]
    assert chained, ops
    y = _tf_outputs(out, x)
    cosine = float((y * ref).sum() / np.linalg.norm(y) / np.linalg.norm(ref))
    assert cosine > 0.999 and np.abs(y - ref).max() > 0  # lossy, close
    assert json.loads(proc.stdout)["verification"][0]["cosine"] > 0.999


def test_quantize_nodes_takes_fake_quant_ranges(tmp_path, capsys):
    """Ranges learned in quantization-aware training (FakeQuantWithMinMaxVars) are the
    QuantizeV2 ranges: no run-time Min/Max for that tensor."""
    import tensorflow as tf

    from conftest import cli_inprocess

    v1 = tf.compat.v1
    graph = tf.Graph()
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 3)).astype("float32")
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 4], name="x")
        fq = tf.quantization.fake_quant_with_min_max_vars(x, tf.constant(-2.0, name="fq_min"), tf.constant(2.0, name="fq_max"),
                                                         name="fq")
        tf.nn.relu(tf.matmul(fq, tf.constant(w, name="w"), name="mm"), name="y")
    src = tmp_path / "fq.pb"
    src.write_bytes(graph.as_graph_def().SerializeToString())
    out = tmp_path / "fq_q.pb"
    proc = cli_inprocess(capsys, "transform", src, "-t", "quantize_nodes", "--input-nodes", "x", "--output-nodes", "y",
                         "-o", out)
    assert proc.returncode == 0, proc.stderr
    by_name = {n.name: n for n in _graph(out).node}
    quantize = next(n for n in by_name.values() if n.op == "QuantizeV2" and n.input[0] == "fq")
    assert list(quantize.input[1:]) == ["fq_min", "fq_max"]
    feed = np.clip(rng.standard_normal((5, 4)), -2, 2).astype("float32")
    np.testing.assert_allclose(_tf_outputs(out, feed), np.maximum(feed @ w, 0), atol=0.1)
    assert_clean_error(cli_inprocess(capsys, "transform", src, "-t", "quantize_nodes(input_min=-1)", "-o", tmp_path / "a.pb"),
                       "give both input_min and input_max")
    assert_clean_error(cli_inprocess(capsys, "transform", src, "-t", "quantize_nodes(fallback_min=1, fallback_max=x)",
                                     "-o", tmp_path / "b.pb"), "fallback_max=x): expected a number")
    assert not (tmp_path / "a.pb").exists() and not (tmp_path / "b.pb").exists()


def test_rename_op_that_changes_results_fails_verification(keras_paths, tmp_path, capsys):
    out = tmp_path / "bad.pb"
    proc = cli_inprocess(capsys, "transform", keras_paths["pb"], "-t", "rename_op(old_op_name=Softmax, new_op_name=LogSoftmax)", "-o", out)
    assert_clean_error(proc, "does not match its source", "nothing was written", code=1)
    assert not out.exists() and not list(tmp_path.iterdir())
    proc = cli_inprocess(capsys, "transform", keras_paths["pb"], "-t", "rename_op(old_op_name=Softmax, new_op_name=LogSoftmax)",
                   "-o", out, "--force")
    assert proc.returncode == 0 and out.exists() and "DOES NOT match" in proc.stdout


# ---------------------------------------------------------------- ONNX

def _onnx_ops(path: Path) -> list[str]:
    import onnx

    return [n.op_type for n in onnx.load(str(path)).graph.node]


def test_onnx_folding_and_cleanup(torch_example, tmp_path, capsys):
    _, paths, x, ref = torch_example
    out = tmp_path / "opt.onnx"
    spec = "fold_constants fold_batch_norms remove_nodes(op=Identity) merge_duplicate_nodes sort_by_execution_order slim"
    proc = cli_inprocess(capsys, "transform", paths["onnx"], "-t", spec, "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["verified"] is True
    assert "BatchNormalization" not in _onnx_ops(out)
    from shipyard.runtimes import open_runner

    with open_runner(out) as r:
        np.testing.assert_allclose(next(iter(r.run({"input": x}).values())), ref, atol=1e-4)


def _conv_bn_model(path: Path) -> Path:
    """Conv -> BatchNormalization -> Conv -> Mul -> Add: the shapes a batch norm is left in by
    exporters that keep it (torch folds it itself in eval mode), with trained-looking statistics."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    init = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name) for name, shape in [
        ("w1", (4, 3, 3, 3)), ("b1", (4,)), ("gamma", (4,)), ("beta", (4,)), ("mean", (4,)),
        ("w2", (4, 4, 1, 1)), ("b2", (4,)), ("scale", (1, 4, 1, 1)), ("shift", (1, 4, 1, 1))]]
    init.append(numpy_helper.from_array(rng.uniform(0.5, 2.0, 4).astype(np.float32), "var"))
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["bn"], epsilon=1e-3),
             helper.make_node("Conv", ["bn", "w2", "b2"], ["c2"]),
             helper.make_node("Mul", ["c2", "scale"], ["m"]),
             helper.make_node("Add", ["m", "shift"], ["y"])]
    graph = helper.make_graph(nodes, "conv_bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_onnx_fold_batch_norms_folds_the_norm_and_the_affine(tmp_path, capsys):
    """onnxscript's rewrite rules fold BatchNormalization into the Conv before it and a Mul/Add
    by constants into the Conv's weights; the pipeline verifies the result against the input."""
    src = _conv_bn_model(tmp_path / "bn.onnx")
    out = tmp_path / "folded.onnx"
    proc = cli_inprocess(capsys, "transform", src, "-t", "fold_batch_norms", "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["verified"] is True and any("3 node(s) folded into weights" in n for n in doc["notes"]), doc
    assert _onnx_ops(out) == ["Conv", "Conv"]
    from shipyard.runtimes import open_runner

    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    with open_runner(src) as before, open_runner(out) as after:
        np.testing.assert_allclose(after.run({"x": x})["y"], before.run({"x": x})["y"], rtol=1e-4, atol=1e-4)


def test_onnx_fix_shapes_and_float16(torch_example, tmp_path, capsys):
    import onnx

    paths = torch_example[1]
    out = tmp_path / "fixed.onnx"
    proc = cli_inprocess(capsys, "transform", paths["onnx"], "-t", 'fix_shapes(input="2,3,12,12") float16', "-o", out)
    assert proc.returncode == 0, proc.stderr
    model = onnx.load(str(out))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 3, 12, 12]
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    bad = cli_inprocess(capsys, "transform", paths["onnx"], "-t", 'fix_shapes(input="2,3,12")', "-o", tmp_path / "x.onnx")
    assert_clean_error(bad, "rank")


def paddle_style_model(path: Path) -> Path:
    """A Conv + Gemm classifier whose weights are Constant nodes, as Paddle exports write them."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def const(name, value):
        return helper.make_node("Constant", [], [name], name=name + "_const", value=numpy_helper.from_array(value, name))

    nodes = [
        const("conv_w", rng.standard_normal((8, 3, 3, 3)).astype("float32") * 0.3),
        const("conv_b", rng.standard_normal(8).astype("float32") * 0.1),
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        const("fc_w", rng.standard_normal((8, 5)).astype("float32")),
        const("fc_b", rng.standard_normal(5).astype("float32") * 0.1),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], name="fc"),
    ]
    graph = helper.make_graph(nodes, "paddle_like", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_onnx_lift_constants_and_quantize_weights(tmp_path, capsys):
    import onnx

    src = paddle_style_model(tmp_path / "paddle.onnx")
    out = tmp_path / "lifted.onnx"
    proc = cli_inprocess(capsys, "transform", src, "-t", "lift_constants quantize_weights(minimum_size=16) obfuscate_names", "-o", out)
    assert proc.returncode == 0, proc.stderr
    model = onnx.load(str(out))
    assert "Constant" not in _onnx_ops(out)
    assert any(i.data_type == onnx.TensorProto.INT8 for i in model.graph.initializer)
    assert [o.name for o in model.graph.output] == ["logits"]


# ---------------------------------------------------------------- listing and bad input

def test_list_shows_every_transform(capsys):
    proc = cli_inprocess(capsys, "transform", "--list")
    assert proc.returncode == 0
    for name in ("strip_unused_nodes", "fold_old_batch_norms", "quantize_weights", "fix_shapes", "float16", "rename_op"):
        assert name in proc.stdout
    assert "num_steps" in proc.stdout
    items = json.loads(cli_inprocess(capsys, "transform", "--list", "--json").stdout)
    assert {"name", "params", "description", "formats"} <= set(items[0])


@pytest.mark.parametrize("spec, fragments", [
    ("fold_everything", ["unknown transform 'fold_everything'", "fold_constants"]),
    ("round_weights(num_steps=many)", ["num_steps=many", "integer"]),
    ("round_weights(steps=3)", ["has no parameter 'steps'", "num_steps"]),
    ("fold_constants(ignore_errors=maybe)", ["true or false"]),
    ("strip_unused_nodes(shape=\"1,a\")", ["shape"]),
    ("fix_shapes(shape=1)", ["does not apply to tf-graphdef"]),
    ("remove_nodes(op=Identity", ["bad transform spec"]),
])
def test_bad_specs_are_clean_errors(keras_paths, tmp_path, spec, fragments, capsys):
    out = tmp_path / "out.pb"
    proc = cli_inprocess(capsys, "transform", keras_paths["pb"], "-t", spec, "-o", out)
    assert_clean_error(proc, *fragments)
    assert not list(tmp_path.iterdir())


def test_unsupported_format_and_overwrite(keras_paths, tmp_path, capsys):
    assert_clean_error(cli_inprocess(capsys, "transform", keras_paths["tflite"], "-t", "fold_constants", "-o", tmp_path / "x.tflite"),
                       "GraphDefs and ONNX")
    assert_clean_error(cli_inprocess(capsys, "transform", keras_paths["pb"], "-t", "fold_constants", "-o", keras_paths["pb"]), "overwrite")
