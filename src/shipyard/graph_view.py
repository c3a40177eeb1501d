"""Draw a model's graph: op types on the nodes, tensor shapes on the edges.

The graph is read from the file with the format parsers (no runtime, no TensorFlow), large
graphs are collapsed by name scope (``a/b/c`` at depth 2 becomes one ``a/b`` box listing its
ops), and the drawing is laid out by Graphviz's ``dot`` (through the ``graphviz`` package).
"""
from __future__ import annotations

import html as html_lib
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from shipyard.errors import ShipyardError, UnsupportedError, UsageError
from shipyard.model import Model


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str]
    outputs: list[str]


@dataclass
class Graph:
    nodes: list[Node]
    shapes: dict[str, tuple] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


def _onnx_graph(model: Model) -> Graph:
    from shipyard.formats.onnx import _shape_table, load_proto

    proto = load_proto(model.path)
    weights = {t.name for t in proto.graph.initializer}
    nodes = [Node(n.name or (n.output[0] if n.output else n.op_type), n.op_type,
                  [i for i in n.input if i and i not in weights], [o for o in n.output if o])
             for n in proto.graph.node]
    return Graph(nodes, _shape_table(proto), [i.name for i in proto.graph.input if i.name not in weights],
                 [o.name for o in proto.graph.output])


def _tflite_graph(model: Model) -> Graph:
    from shipyard.formats.tflite import TFLiteFile

    f = TFLiteFile(model.path)
    try:
        g = f.subgraphs[0]
        name = {i: g.Tensors(i).Name().decode() for i in range(g.TensorsLength())}
        produced = set()
        nodes = []
        for k in range(g.OperatorsLength()):
            op = g.Operators(k)
            outs = [name[i] for i in op.OutputsAsNumpy() if i >= 0] if op.OutputsLength() else []
            produced.update(outs)
            ins = [name[i] for i in op.InputsAsNumpy() if i >= 0] if op.InputsLength() else []
            nodes.append(Node(outs[0] if outs else f"op{k}", f.opcodes[op.OpcodeIndex()], ins, outs))
        graph_inputs = [name[i] for i in g.InputsAsNumpy()] if g.InputsLength() else []
        keep = produced | set(graph_inputs)  # drop weight tensors from the edges
        for n in nodes:
            n.inputs = [i for i in n.inputs if i in keep]
        shapes = {name[i]: f.shape(g, i) for i in range(g.TensorsLength())}
        outputs = [name[i] for i in g.OutputsAsNumpy()] if g.OutputsLength() else []
        return Graph(nodes, shapes, graph_inputs, outputs)
    finally:
        f.close()


def _tf_graph(model: Model) -> Graph:
    from shipyard.formats import tf_graph
    from shipyard.formats.tf_shapes import ShapeInference

    graph_def, _ = tf_graph.load(model)
    shapes = ShapeInference(graph_def)
    hidden = {n.name for n in graph_def.node if n.op == "Const"}
    nodes = []
    table = {}
    for n in graph_def.node:
        if n.name in hidden:
            continue
        ins = [i.split(":")[0] if i.endswith(":0") else i for i in n.input if not i.startswith("^")]
        ins = [i for i in ins if i.split(":")[0] not in hidden]
        nodes.append(Node(n.name, n.op, ins, [n.name]))
        shape = shapes.shape(n.name)
        if shape is not None:
            table[n.name] = shape
    inputs, outputs = tf_graph.detect_io(graph_def)
    return Graph(nodes, table, [n.name for n in inputs], [n.name for n in outputs])


def read_graph(model: Model) -> Graph:
    readers = {"onnx": _onnx_graph, "tflite": _tflite_graph, "tf-graphdef": _tf_graph}
    if model.format not in readers:
        raise UnsupportedError(f"drawing {model.format} graphs is not supported",
                               hint="convert or freeze it to ONNX, TFLite or a GraphDef first, or use 'shipyard view' (Netron)")
    return readers[model.format](model)


def collapse(graph: Graph, depth: int) -> Graph:
    """Merge nodes whose names share the first ``depth`` scope components into one node."""
    def key(name: str) -> str:
        parts = name.strip("/").split("/")
        return "/".join(parts[:depth]) if len(parts) > depth else name

    members: dict[str, list[Node]] = defaultdict(list)
    for n in graph.nodes:
        members[key(n.name)].append(n)
    merged = []
    for k, group in members.items():
        if len(group) == 1:
            merged.append(group[0])
            continue
        inner = {o for n in group for o in n.outputs}
        ops = Counter(n.op for n in group)
        label = ", ".join(f"{op}x{c}" if c > 1 else op for op, c in ops.most_common(4)) + (" ..." if len(ops) > 4 else "")
        ins = list(dict.fromkeys(i for n in group for i in n.inputs if i not in inner))
        merged.append(Node(k, f"{len(group)} ops: {label}", ins, list(inner)))
    return Graph(merged, graph.shapes, graph.inputs, graph.outputs)


def auto_depth(graph: Graph, max_nodes: int) -> int | None:
    """The deepest scope depth that keeps the drawing under ``max_nodes`` boxes (None: no collapse)."""
    if len(graph.nodes) <= max_nodes:
        return None
    deepest = max(len(n.name.strip("/").split("/")) for n in graph.nodes)
    for depth in range(deepest - 1, 0, -1):
        if len(collapse(graph, depth).nodes) <= max_nodes:
            return depth
    return 1


def _shape_text(shape) -> str:
    return "?" if shape is None else "x".join(str(d) for d in shape) or "scalar"


def to_dot(graph: Graph, title: str):
    """A ``graphviz.Digraph`` of the graph."""
    import graphviz

    dot = graphviz.Digraph(name="model", graph_attr={"rankdir": "TB", "label": title, "labelloc": "t", "fontsize": "12"},
                           node_attr={"shape": "box", "style": "rounded,filled", "fillcolor": "#e8f0fe",
                                      "fontname": "Helvetica", "fontsize": "10"},
                           edge_attr={"fontname": "Helvetica", "fontsize": "8", "color": "#555555"})
    ids_in = {name: f"i{k}" for k, name in enumerate(graph.inputs)}  # no ':' in ids: DOT reads it as a port
    # A GraphDef's Placeholder is a node and a graph input at once: draw it once, as the input, so
    # the input is connected to what reads it (it used to float beside its own Placeholder box)
    feeds_only = {i for i, n in enumerate(graph.nodes) if not n.inputs and n.outputs and all(o in ids_in for o in n.outputs)}
    producer = {o: (ids_in[o] if i in feeds_only else f"n{i}") for i, n in enumerate(graph.nodes) for o in n.outputs}
    for name in graph.inputs:
        dot.node(ids_in[name], f"input {name}\n{_shape_text(graph.shapes.get(name))}", shape="ellipse", fillcolor="#d7f5dd")
    for i, n in enumerate(graph.nodes):
        if i in feeds_only:
            continue
        dot.node(f"n{i}", f"{n.op}\n{n.name}" if n.op != n.name else n.op, tooltip=n.name)
        for t in n.inputs:
            src = producer.get(t) or ids_in.get(t)
            if src and src != f"n{i}":
                dot.edge(src, f"n{i}", label=_shape_text(graph.shapes.get(t)))
    for k, name in enumerate(graph.outputs):
        dot.node(f"o{k}", f"output {name}\n{_shape_text(graph.shapes.get(name))}", shape="ellipse", fillcolor="#fde8d7")
        if name in producer:
            dot.edge(producer[name], f"o{k}")
    return dot


def render(dot, fmt: str) -> bytes:
    """``dot`` source, or an SVG laid out by the Graphviz binary."""
    if fmt == "dot":
        return dot.source.encode()
    if shutil.which("dot") is None:
        raise ShipyardError(
            "drawing an SVG needs Graphviz's 'dot' program, which is not installed",
            hint="run scripts/setup (or: apt-get install graphviz), or write a .dot file instead")
    import graphviz

    try:
        return dot.pipe(format="svg")
    except graphviz.ExecutableNotFound as exc:  # pragma: no cover - checked above
        raise ShipyardError("Graphviz's 'dot' program is missing", hint="apt-get install graphviz") from exc
    except graphviz.CalledProcessError as exc:
        raise ShipyardError(f"Graphviz failed to lay out the graph: {exc.stderr.decode(errors='replace')[:200]}") from exc


def html_page(svg: bytes, title: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html_lib.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:1em} .g{overflow:auto;border:1px solid #ccc}</style></head>"
            f"<body><h1>{html_lib.escape(title)}</h1><div class='g'>{svg.decode()}</div></body></html>")


def draw(path: str | Path, out: Path, depth: int | None = None, max_nodes: int = 300) -> dict:
    """Write the drawing (format from ``out``'s suffix: .svg, .dot, .html); returns what was drawn."""
    from shipyard.atomic import atomic_path, check_output_path
    from shipyard.inspection import as_model

    model = as_model(path)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in ("svg", "dot", "gv", "html"):
        raise UsageError(f"{out}: the output must end in .svg, .dot or .html")
    out = check_output_path(out, model.path)
    graph = read_graph(model)
    full = len(graph.nodes)
    if depth is None:
        depth = auto_depth(graph, max_nodes)
    if depth is not None:
        graph = collapse(graph, depth)
    title = f"{model.path.name} ({model.format}, {full} nodes" + (f", collapsed at depth {depth})" if depth else ")")
    dot = to_dot(graph, title)
    data = render(dot, "dot" if fmt in ("dot", "gv") else "svg")
    if fmt == "html":
        data = html_page(data, title).encode()
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    return {"output_file": str(out), "format": fmt, "nodes": full, "drawn_nodes": len(graph.nodes), "depth": depth}
