"""The format registry (``src/shipyard/formats/registry.py``) is the one place that enumerates
formats: adding a format means one declaration there plus its module, never a hunt for the
tables and if/elif chains that list formats elsewhere.

The check reads the source (no import): outside ``formats/`` no code may

- build a dict literal keyed by two or more format names (a per-format table),
- write a tuple, list or set of two or more format names (``fmt in ("keras", ...)``, or a
  constant that some test of membership uses later),
- compare one expression with two or more different format names in one function (an if/elif
  chain over formats).

A single comparison with one format (``model.format == "tf-checkpoint"``) stays allowed: it is
a feature's own rule about that format, and a new format never has to join it. The few
enumerations that remain are listed in ``ALLOWED`` with the reason each is not (yet) a registry
field; an entry that no longer matches anything fails too, so the list only shrinks.
"""
from __future__ import annotations

import ast
from pathlib import Path

from shipyard.formats.registry import FORMATS  # pure data, no heavy import

SRC = Path(__file__).resolve().parent.parent / "src"

# (file relative to src/shipyard, function or "<module>") -> why it still enumerates formats.
ALLOWED: dict[tuple[str, str], str] = {
    ("convert/planner.py", "<module>"): "the conversion graph: an edge joins two formats, it is no one format's field",
    ("cpp/targets.py", "<module>"): "a C/C++ target declares the formats its runtime loads (the target's knowledge)",
    ("examples.py", "save_keras_family"): "the example files written for the docs, one per format",
    ("examples.py", "save_torch_family"): "the example files written for the docs, one per format",
    ("demo.py", "run_demo"): "the targets the demo ships (a choice of the demo, like a user's --targets)",
    ("runtimes/tensorflow.py", "TensorFlowRunner"): "the TF formats whose tensors the TF runner can fetch by name (engine internals)",
    ("ship/pipeline.py", "<module>"): "the formats ship can target and its default targets (ship's own choice)",
    ("ship/pipeline.py", "ShipRequest"): "the formats ship can target and its default targets (ship's own choice)",
    ("runtimes/tensorflow.py", "__init__"): "the TensorFlow runner's loader per TF format (engine internals)",
    ("runtimes/__init__.py", "<module>"): "engine aliases (tflite -> litert, torchscript -> torch) are engine names",
    ("ship/optimize.py", "<module>"): ("ship --optimize's engines per artifact: a subset of the registry's `engines` "
                                    "(OpenVINO reads the ONNX file, not the GraphDef again)"),
    ("ship/pipeline.py", "freeze"): "ship's checkpoint freezing: which TF sources carry variables",
    ("ship/pipeline.py", "convert"): "ship's per-target output naming (TF.js is a folder)",
    ("ship/pipeline.py", "quantize"): "ship's per-artifact quantization steps",
    ("ship/pipeline.py", "package"): "ship's per-artifact packaging",
    ("commands/cpp.py", "cmd_cpp"): "two separate rules, one about memmapped graphs and one about checkpoints",
    ("commands/freeze.py", "cmd_freeze"): "freeze's own rules: which sources need --checkpoint, which carry a .meta",
    ("session.py", "<module>"): "the TF session workflow reads exactly GraphDefs and checkpoints (its C API loads them)",
    ("quantize/tflite.py", "_converters"): "the TFLite converter's entry point per TF source",
    ("convert/api.py", "convert_model"): "two rules about target formats (ONNX post-processing, TFLite Flex ops)",
}


def _format_names(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in FORMATS:
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return {e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in FORMATS}
    return set()


def _own_nodes(scope: ast.AST):
    """The nodes of ``scope`` not inside a nested function or class (those are scopes of their own)."""
    for child in ast.iter_child_nodes(scope):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        yield child
        yield from _own_nodes(child)


def _scopes(tree: ast.Module):
    yield "<module>", tree
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node.name, node


def enumerations(path: Path) -> dict[str, list[str]]:
    """{scope name: what enumerates formats there} for one source file."""
    found: dict[str, list[str]] = {}
    tree = ast.parse(path.read_text(), str(path))
    for scope_name, scope in _scopes(tree):
        by_subject: dict[str, set[str]] = {}
        for node in _own_nodes(scope):
            if isinstance(node, ast.Dict):
                keys = {k.value for k in node.keys if isinstance(k, ast.Constant) and k.value in FORMATS}
                if len(keys) >= 2:
                    found.setdefault(scope_name, []).append(f"line {node.lineno}: dict keyed by {sorted(keys)}")
            elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                names = _format_names(node)
                if len(names) >= 2:
                    found.setdefault(scope_name, []).append(f"line {node.lineno}: lists {sorted(names)}")
            elif isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                for i, side in enumerate(sides):
                    names = _format_names(side)
                    for j, other in enumerate(sides):
                        if j != i and names:
                            by_subject.setdefault(ast.unparse(other), set()).update(names)
        for subject, names in by_subject.items():
            if len(names) >= 2:
                found.setdefault(scope_name, []).append(f"{subject} compared with {sorted(names)}")
    return found


def _all_enumerations() -> dict[tuple[str, str], list[str]]:
    root = SRC / "shipyard"
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("formats/") or "protos" in path.parts:
            continue
        for scope, what in enumerations(path).items():
            out[(rel, scope)] = what
    return out


def test_formats_are_enumerated_only_in_the_registry():
    found = _all_enumerations()
    new = {k: v for k, v in found.items() if k not in ALLOWED}
    assert not new, ("format names enumerated outside formats/registry.py; declare the knowledge as a "
                     "field of the formats' declarations instead:\n"
                     + "\n".join(f"  {f}:{s}: {'; '.join(w)}" for (f, s), w in new.items()))
    stale = sorted(k for k in ALLOWED if k not in found)
    assert not stale, f"allow-list entries that no longer enumerate formats (remove them): {stale}"


def test_the_check_sees_a_chain_a_table_and_a_tuple(tmp_path):
    """The shapes it forbids are found, and one format's own rule is not."""
    src = tmp_path / "m.py"
    src.write_text(
        "READERS = {'onnx': 1, 'tflite': 2}\n"
        "def chain(m):\n"
        "    if m.format == 'onnx':\n        return 1\n"
        "    elif m.format == 'tflite':\n        return 2\n"
        "def member(m):\n    return m.format in ('keras', 'tf-savedmodel')\n"
        "class Runner:\n    FORMATS = {'tfjs', 'keras'}\n"
        "def one_rule(m):\n    return m.format == 'tf-checkpoint'\n")
    found = enumerations(src)
    assert set(found) == {"<module>", "chain", "member", "Runner"}
    assert "m.format compared with ['onnx', 'tflite']" in found["chain"]


def test_capabilities_named_in_the_registry_exist():
    """Every ``module:function`` a declaration names resolves (a typo would only fail at use)."""
    from shipyard.formats import capability

    for fmt, decl in FORMATS.items():
        for field in ("graph_reader", "frozen", "quantizer"):
            if getattr(decl, field):
                assert callable(capability(fmt, field)), (fmt, field)


def test_a_profiler_is_declared_only_for_an_engine_that_runs_the_format():
    for fmt, decl in FORMATS.items():
        assert set(decl.profilers) <= set(decl.engines), fmt
