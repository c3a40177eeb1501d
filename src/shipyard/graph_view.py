"""Draw a model's graph: op types on the nodes, tensor shapes on the edges.

The graph is read from the file with the format parsers (no runtime, no TensorFlow), large
graphs are collapsed by name scope (``a/b/c`` at depth 2 becomes one ``a/b`` box listing its
ops), and the drawing is laid out by Graphviz's ``dot`` (through the ``graphviz`` package).
"""
from __future__ import annotations

import html as html_lib
import re
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
    """The graph through the reader the format registry names for the format (``graph_reader``)."""
    from shipyard.formats import capability, registry

    reader = capability(model.format, "graph_reader")
    if reader is None:
        drawn = [f.word for f in registry.FORMATS.values() if f.graph_reader]
        raise UnsupportedError(f"drawing {model.format} graphs is not supported",
                               hint=f"convert or freeze it to {', '.join(drawn[:-1])} or {drawn[-1]} first, "
                                    "or use 'shipyard view' (Netron)")
    return reader(model)


def collapse(graph: Graph, depth: int) -> Graph:
    """Merge nodes whose names share the first ``depth`` scope components into one node."""
    return _group(graph, lambda n: _scope_key(n.name, depth))[0]


def _group(graph: Graph, key) -> tuple[Graph, dict[str, list[Node]]]:
    """Merge the nodes ``key`` maps to the same name into one box (``N ops: ...``); the members
    of each box of more than one node."""
    members: dict[str, list[Node]] = defaultdict(list)
    for n in graph.nodes:
        members[key(n)].append(n)
    merged, groups = [], {}
    for k, group in members.items():
        if len(group) == 1:
            merged.append(group[0])
            continue
        inner = {o for n in group for o in n.outputs}
        ops = Counter(n.op for n in group)
        label = ", ".join(f"{op}x{c}" if c > 1 else op for op, c in ops.most_common(4)) + (" ..." if len(ops) > 4 else "")
        ins = list(dict.fromkeys(i for n in group for i in n.inputs if i not in inner))
        merged.append(Node(k, f"{len(group)} ops: {label}", ins, list(inner)))
        groups[k] = group
    return Graph(merged, graph.shapes, graph.inputs, graph.outputs), groups


# a layer name's block: the words up to its first number ("block_12_expand_BN" -> "block_12",
# "layer3.1.conv2" -> "layer3", "Conv1_relu" -> "Conv1")
_BLOCK = re.compile(r"^(.*?[A-Za-z][_\-.]?\d+)(?=[_\-.]|$)")
_SUFFIX = re.compile(r"_\d+$")  # Keras 3 suffixes every layer of a reused functional model with "_1"


def _names(n: Node) -> list[str]:
    """A node's name as scope components (a TFLite fused name ``a;b;c`` by its first part)."""
    return n.name.split(";")[0].strip("/").split("/")


def block_keys(graph: Graph) -> dict[int, str]:
    """Each node's block: the scope every node shares, then the block of the layer name below it
    (its words up to the first number). A node without a scope (tf2onnx's ``Conv__339``) joins
    the block of the node that reads its output (or else of the one that feeds it)."""
    scoped = [_names(n) for n in graph.nodes if len(_names(n)) > 1]
    common = 0
    if scoped:
        while all(len(c) > common + 1 and c[common] == scoped[0][common] for c in scoped):
            common += 1
    layers = [c[common] for c in scoped if len(c) > common]
    strip = bool(layers) and all(_SUFFIX.search(word) for word in layers)
    keys: dict[int, str | None] = {}
    for i, n in enumerate(graph.nodes):
        comps = _names(n)
        if len(comps) <= common or len(comps) == 1:
            keys[i] = None  # no scope: placed by its neighbours below
            continue
        word = _SUFFIX.sub("", comps[common]) if strip else comps[common]
        match = _BLOCK.match(word)
        keys[i] = "/".join([*comps[:common], match[1] if match else word])
    consumers: dict[str, list[int]] = defaultdict(list)
    producer: dict[str, int] = {}
    for i, n in enumerate(graph.nodes):
        for t in n.inputs:
            consumers[t].append(i)
        for o in n.outputs:
            producer[o] = i
    feeds = set(graph.inputs)
    for _ in range(len(graph.nodes)):  # each pass places the unscoped nodes next to placed ones
        todo = [i for i, k in keys.items() if k is None and not (set(graph.nodes[i].outputs) & feeds)]
        if not todo:
            break
        changed = False
        for i in todo:
            n = graph.nodes[i]
            near = [j for o in n.outputs for j in consumers.get(o, ())] + [producer[t] for t in n.inputs if t in producer]
            placed = next((keys[j] for j in near if keys.get(j)), None)
            if placed:
                keys[i], changed = placed, True
        if not changed:
            break
    return {i: k or graph.nodes[i].name for i, k in keys.items()}


def _merge_chains(graph: Graph, groups: dict[str, list[Node]], key: dict[str, str]) -> tuple[Graph, dict[str, list[Node]]]:
    """Boxes that are not numbered blocks (a stem's or a head's layers: ``Conv_1 -> out_relu ->
    global_average_pooling2d -> predictions``) and follow one another in a line become one box."""
    producer = {o: i for i, n in enumerate(graph.nodes) for o in n.outputs}
    consumers: dict[int, set[int]] = defaultdict(set)
    feeds: dict[int, set[int]] = defaultdict(set)
    for i, n in enumerate(graph.nodes):
        for t in n.inputs:
            if t in producer and producer[t] != i:
                consumers[producer[t]].add(i)
                feeds[i].add(producer[t])

    def numbered(i: int) -> bool:  # a block of its own (block_12, layer3)
        name = graph.nodes[i].name
        return bool(_BLOCK.match(key.get(name, name).rsplit("/", 1)[-1]))

    head: dict[int, int] = {}  # node index -> first node of its chain
    for i in range(len(graph.nodes)):
        (only,) = feeds[i] if len(feeds[i]) == 1 else (None,)
        if (only is not None and len(consumers[only]) == 1 and not numbered(i) and not numbered(only)
                and graph.nodes[i].name not in graph.inputs):
            head[i] = head.get(only, only)
    if not head:
        return graph, groups
    chains: dict[int, list[int]] = defaultdict(list)
    for i in range(len(graph.nodes)):
        chains[head.get(i, i)].append(i)
    name = {}
    for first, chain in chains.items():
        if len(chain) > 1:
            words = [key.get(graph.nodes[j].name, graph.nodes[j].name).rsplit("/", 1)[-1] for j in (chain[0], chain[-1])]
            lead = key.get(graph.nodes[first].name, graph.nodes[first].name)
            scope = lead.rsplit("/", 1)[0] + "/" if "/" in lead else ""
            name[first] = f"{scope}{words[0]} ... {words[1]}"
    members = {}
    for first, chain in chains.items():
        if len(chain) > 1:
            members[name[first]] = [m for j in chain for m in groups.get(graph.nodes[j].name, [graph.nodes[j]])]
    by_node = {id(m): k for k, ms in members.items() for m in ms}
    flat = [m for n in graph.nodes for m in groups.get(n.name, [n])]
    base = Graph(flat, graph.shapes, graph.inputs, graph.outputs)
    keep = {id(m): n.name for n in graph.nodes for m in groups.get(n.name, [n])}
    merged, all_groups = _group(base, lambda m: by_node.get(id(m), keep[id(m)]))
    return merged, all_groups


def overview(graph: Graph, max_nodes: int) -> tuple[Graph, dict[str, list[Node]], str | None]:
    """The graph at most ``max_nodes`` boxes large, readable: collapsed by name scope when that
    leaves a picture (several boxes), else by blocks (``block_12``, ``layer3``) with the layers
    between blocks chained. Returns the drawing, each box's members, and how it was collapsed."""
    if len(graph.nodes) <= max_nodes:
        return graph, {}, None
    depth = auto_depth(graph, max_nodes)
    keys = block_keys(graph)
    index = {id(n): i for i, n in enumerate(graph.nodes)}
    blocks, groups = _group(graph, lambda n: keys[index[id(n)]])
    blocks, groups = _merge_chains(blocks, groups, {n.name: keys[index[id(n)]] for n in graph.nodes})
    scoped, scope_groups = _group(graph, lambda n: _scope_key(n.name, depth))
    # a scope collapse that leaves a few boxes, or one box holding a quarter of the graph (the
    # model's own scope: MobileNetV2 drawn as "121 ops"), says nothing: blocks then, if they fit
    largest = max((len(g) for g in scope_groups.values()), default=1)
    over_collapsed = len(scoped.nodes) < min(8, max_nodes) or largest > len(graph.nodes) / 4
    if over_collapsed and min(8, max_nodes) <= len(blocks.nodes) <= max_nodes:
        return blocks, groups, "blocks"
    return scoped, scope_groups, f"depth {depth}"


def _scope_key(name: str, depth: int) -> str:
    parts = name.strip("/").split("/")
    return "/".join(parts[:depth]) if len(parts) > depth else name


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


def to_dot(graph: Graph, title: str, links: dict[str, str] | None = None):
    """A ``graphviz.Digraph`` of the graph; ``links``: node name -> URL (a collapsed box opens
    its own drawing in an HTML page)."""
    links = links or {}
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
        shown = n.name.split(";")[0]  # a TFLite fused name lists every op it fused: the first says which layer
        extra = {"URL": links[n.name], "fillcolor": "#fff4d6", "penwidth": "1.5"} if n.name in links else {}
        dot.node(f"n{i}", f"{n.op}\n{shown}" if n.op != n.name else n.op,
                 tooltip=n.name + (" (click to expand)" if n.name in links else ""), **extra)
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


_EXPAND_JS = """function openBox(){var d=document.getElementById(location.hash.slice(1));
if(d&&d.tagName==='DETAILS'){d.open=true;d.scrollIntoView();}}
window.addEventListener('hashchange',openBox);openBox();"""


def html_page(svg: bytes, title: str, boxes: list[tuple[str, str, str]] = ()) -> str:
    """The drawing, then each collapsed box drawn on its own, folded: ``boxes`` are (anchor,
    summary, svg); clicking a box in the drawing unfolds it."""
    parts = [f"<details id='{html_lib.escape(anchor)}'><summary>{html_lib.escape(summary)}</summary>"
             f"<div class='g'>{svg_text}</div></details>" for anchor, summary, svg_text in boxes]
    expand = ("<h2>Boxes</h2><p>Each collapsed box, drawn op by op (click a box in the drawing to unfold it "
              "here).</p>" + "".join(parts) + f"<script>{_EXPAND_JS}</script>") if parts else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html_lib.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:1em} .g{overflow:auto;border:1px solid #ccc}"
            "summary{cursor:pointer;margin:.3em 0}</style></head>"
            f"<body><h1>{html_lib.escape(title)}</h1><div class='g'>{svg.decode()}</div>{expand}</body></html>")


def box_graph(graph: Graph, members: list[Node]) -> Graph:
    """One collapsed box's own graph: its nodes, fed by the tensors coming from outside it, and
    ending in the tensors read outside it (or the model's outputs)."""
    inner = {o for n in members for o in n.outputs}
    names = {n.name for n in members}
    ins = list(dict.fromkeys(i for n in members for i in n.inputs if i not in inner))
    read_outside = {i for n in graph.nodes if n.name not in names for i in n.inputs}
    outs = [o for n in members for o in n.outputs if o in read_outside or o in graph.outputs]
    return Graph(members, graph.shapes, ins, outs)


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
    if depth is not None:
        drawn, groups, how = (*_group(graph, lambda n: _scope_key(n.name, depth)), f"depth {depth}")
    else:
        drawn, groups, how = overview(graph, max_nodes)
    title = f"{model.path.name} ({model.format}, {full} nodes" + (f", collapsed by {how})" if how else ")")
    anchors = {name: f"box{k}" for k, name in enumerate(groups)} if fmt == "html" else {}
    dot = to_dot(drawn, title, {name: f"#{a}" for name, a in anchors.items()})
    data = render(dot, "dot" if fmt in ("dot", "gv") else "svg")
    if fmt == "html":
        boxes = []
        for name, anchor in anchors.items():
            text = render(to_dot(box_graph(graph, groups[name]), name), "svg").decode("utf-8")
            boxes.append((anchor, f"{name} ({len(groups[name])} ops)", text[text.index("<svg"):]))
        data = html_page(data, title, boxes).encode()
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    return {"output_file": str(out), "format": fmt, "nodes": full, "drawn_nodes": len(drawn.nodes),
            "depth": depth if depth is not None else (int(how.split()[1]) if how and how.startswith("depth") else None),
            "collapsed": how, "boxes": {name: len(m) for name, m in groups.items()}}
