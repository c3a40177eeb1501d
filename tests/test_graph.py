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
from shipyard.graph_view import Graph, Node, auto_depth, collapse

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
