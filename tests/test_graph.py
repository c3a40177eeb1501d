"""graph and view: drawings carry op types and shapes; large graphs collapse by scope."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import assert_clean_error, run_cli
from shipyard.graph_view import Graph, Node, auto_depth, collapse, overview

needs_dot = pytest.mark.skipif(shutil.which("dot") is None and not os.environ.get("CI"), reason="Graphviz 'dot' not installed (scripts/setup)")


@needs_dot
@pytest.mark.parametrize("fmt, ops, shape", [
    ("onnx", ["Conv", "MaxPool", "Softmax"], "1x8x12x12"),
    ("tflite", ["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"], "1x12x12x8"),
    ("pb", ["Conv2D", "DepthwiseConv2dNative", "Softmax"], "12x12x8"),
])
def test_svg_has_ops_and_shapes(keras_paths, tmp_path, fmt, ops, shape):
    out = tmp_path / "g.svg"
    proc = run_cli("graph", keras_paths[fmt], "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    svg = out.read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    for op in ops:
        assert f">{op}<" in svg, op
    assert shape in svg


@needs_dot
def test_collapse_by_scope(keras_paths, tmp_path):
    out = tmp_path / "g.html"
    proc = run_cli("graph", keras_paths["pb"], "-o", out, "--depth", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["drawn_nodes"] < info["nodes"] and info["depth"] == 2
    page = out.read_text()
    assert "example_cnn_1/conv1_1" in page and " ops: " in page and "<svg" in page


def test_collapse_and_auto_depth_logic():
    nodes = [Node(f"block{b}/layer{i}/op{j}", "Conv" if j == 0 else "Relu", [], [f"t{b}{i}{j}"])
             for b in range(3) for i in range(4) for j in range(2)]
    g = Graph(nodes)
    assert len(collapse(g, 1).nodes) == 3 and len(collapse(g, 2).nodes) == 12
    assert auto_depth(g, 100) is None and auto_depth(g, 12) == 2 and auto_depth(g, 5) == 1
    assert collapse(g, 1).nodes[0].op == "8 ops: Convx4, Relux4"


def _mobilenet_like() -> Graph:
    """MobileNetV2's naming as tf2onnx writes it: every layer under the model's one scope
    (``mobilenetv2_1.00_224_1/block_3_expand_1/...``, Keras 3's ``_1`` suffix), the convolutions
    unscoped (``Conv__339``), residual Adds inside blocks."""
    top = "mobilenetv2_1.00_224_1"
    nodes, prev, k = [], "input:0", 339
    for layer, op in [("Conv1_relu_1/Relu6", "Clip"), ("expanded_conv_depthwise_relu_1/Relu6", "Clip"),
                      ("expanded_conv_project_BN_1/add", "Add")]:
        nodes.append(Node(f"Conv__{k}", "Conv", [prev], [f"Conv__{k}:0"]))
        nodes.append(Node(f"{top}/{layer}", op, [f"Conv__{k}:0"], [f"{top}/{layer}:0"]))
        prev, k = f"{top}/{layer}:0", k + 2
    for b in range(1, 17):
        start = prev
        for part in ("expand_relu", "depthwise_relu"):
            nodes.append(Node(f"Conv__{k}", "Conv", [prev], [f"Conv__{k}:0"]))
            nodes.append(Node(f"{top}/block_{b}_{part}_1/Relu6", "Clip", [f"Conv__{k}:0"], [f"{top}/block_{b}_{part}_1/Relu6:0"]))
            prev, k = f"{top}/block_{b}_{part}_1/Relu6:0", k + 2
        nodes.append(Node(f"Conv__{k}", "Conv", [prev], [f"Conv__{k}:0"]))
        nodes.append(Node(f"{top}/block_{b}_add_1/Add", "Add", [f"Conv__{k}:0", start], [f"{top}/block_{b}_add_1/Add:0"]))
        prev, k = f"{top}/block_{b}_add_1/Add:0", k + 2
    for layer, op in [("out_relu_1/Relu6", "Clip"), ("global_average_pooling2d_1/Mean", "GlobalAveragePool"),
                      ("predictions_1/MatMul", "MatMul"), ("predictions_1/Softmax", "Softmax")]:
        nodes.append(Node(f"{top}/{layer}", op, [prev], [f"{top}/{layer}:0"]))
        prev = f"{top}/{layer}:0"
    return Graph(nodes, inputs=["input:0"], outputs=[prev])


def test_a_big_graph_collapses_into_its_blocks_not_one_box():
    """MobileNetV2 used to become one box of "121 ops" (its one top scope): each block is a box."""
    g = _mobilenet_like()
    by_scope = collapse(g, auto_depth(g, 60))  # the old way: the model's scope as one box of 55 ops
    assert max(int(n.op.split()[0]) for n in by_scope.nodes if " ops: " in n.op) > len(g.nodes) / 3
    drawn, groups, how = overview(g, 60)
    assert how == "blocks" and 16 <= len(drawn.nodes) <= 60
    names = [n.name for n in drawn.nodes]
    for b in (1, 9, 16):
        assert f"mobilenetv2_1.00_224_1/block_{b}" in names
        box = groups[f"mobilenetv2_1.00_224_1/block_{b}"]  # the unscoped convolutions joined their block
        assert sorted(n.op for n in box) == ["Add", "Clip", "Clip", "Conv", "Conv", "Conv"]
    assert any(" ... " in n for n in names)  # the head's layers, one after another, chained into one box
    assert overview(g, 500) == (g, {}, None)  # small enough: drawn as it is


@needs_dot
def test_html_graph_boxes_expand_in_the_page(keras_paths, tmp_path):
    out = tmp_path / "g.html"
    proc = run_cli("graph", keras_paths["pb"], "-o", out, "--max-nodes", "12", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["collapsed"] == "blocks" and 8 <= info["drawn_nodes"] <= 12
    assert max(info["boxes"].values()) < info["nodes"] / 2  # not one box holding the model
    page = out.read_text()
    for k, name in enumerate(info["boxes"]):  # each box links to its own drawing, folded below
        assert f'href="#box{k}"' in page and f"<details id='box{k}'>" in page and name in page
    assert page.count("<svg") == 1 + len(info["boxes"])


def test_dot_without_graphviz_and_bad_input(keras_paths, tmp_path, torch_example):
    out = tmp_path / "g.dot"
    proc = run_cli("graph", keras_paths["onnx"], "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().startswith("digraph")
    # a GraphDef's Placeholder is drawn once, as the input, and the input is connected
    pb_dot = tmp_path / "pb.dot"
    assert run_cli("graph", keras_paths["pb"], "-o", pb_dot).returncode == 0
    text = pb_dot.read_text()
    assert "i0 ->" in text and "Placeholder" not in text
    assert_clean_error(run_cli("graph", keras_paths["onnx"], "-o", tmp_path / "g.png"), ".svg, .dot or .html")
    assert_clean_error(run_cli("graph", torch_example[1]["torchscript"], "-o", tmp_path / "t.svg"), "not supported")
    assert_clean_error(run_cli("graph", keras_paths["onnx"], "-o", tmp_path / "no" / "g.svg"), "does not exist")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_view_serves_netron(keras_paths):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from shipyard.cli import main; sys.exit(main(sys.argv[1:]))",
         "view", str(keras_paths["onnx"]), "--no-browser", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy(),
        start_new_session=True)  # its own process group: the guarded child serving Netron stops with it
    try:
        body = None
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
                    body = resp.read().decode()
                    break
            except OSError:
                time.sleep(0.1)
        assert body is not None and "Netron" in body
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
