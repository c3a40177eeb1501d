"""``transform``: parse a spec, apply its transforms in order, write atomically, verify.

The output is verified against the input model on generated inputs before it replaces the
destination; a mismatch beyond tolerance leaves nothing behind unless ``force`` is given.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from shipyard import guard
from shipyard.errors import UnsupportedError, UsageError
from shipyard.model import Model, tensor_name
from shipyard.passes.context import Context
from shipyard.passes.registry import GRAPHDEF, ONNX, Params, check_step
from shipyard.passes.spec import parse_spec
from shipyard.sniff import open_model


@dataclass
class TransformResult:
    source: str
    output: str
    format: str
    steps: list[dict] = field(default_factory=list)
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    verification: list[dict] = field(default_factory=list)
    verified: bool | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return dict(self.__dict__)


def _load(model: Model):
    if model.format == GRAPHDEF:
        from shipyard.formats import tf_graph

        return tf_graph.load(model)[0]
    from shipyard.formats.onnx import load_proto

    return load_proto(model.path, external_data=True)


def _context(model: Model, graph, inputs: list[str] | None, outputs: list[str] | None) -> Context:
    if model.format == GRAPHDEF:
        from shipyard.formats.tf_graph import detect_io

        ins, outs = detect_io(graph)
        found_in, found_out = [n.name for n in ins], [n.name for n in outs]
    else:
        from shipyard.formats.onnx import signature_of

        sig = signature_of(graph)
        found_in, found_out = [s.name for s in sig.inputs], [s.name for s in sig.outputs]
    return Context([tensor_name(n) for n in inputs] if inputs else found_in,
                   [tensor_name(n) for n in outputs] if outputs else found_out)


def _write(model_format: str, graph, path: Path, text: bool) -> None:
    if model_format == GRAPHDEF and text:
        from google.protobuf import text_format

        path.write_text(text_format.MessageToString(graph))
    else:
        path.write_bytes(graph.SerializeToString())


def _stats(model: Model) -> dict:
    from shipyard.inspection import inspect_model

    s = inspect_model(model)
    return {"nodes": s.node_count, "size_bytes": s.size_bytes, "params": s.params, "ops": s.ops}


def transform_model(path: str | Path, spec: str, out: str | Path, inputs: list[str] | None = None,
                    outputs: list[str] | None = None, verify: bool = True, force: bool = False,
                    samples: int = 2, seed: int = 0) -> TransformResult:
    from shipyard.atomic import atomic_path, check_output_path

    model = open_model(path)
    if model.format not in (GRAPHDEF, ONNX):
        raise UnsupportedError(f"{model.path}: transform works on TensorFlow GraphDefs and ONNX models, not {model.format}",
                               hint="freeze or convert it first (shipyard freeze / shipyard convert)")
    steps = parse_spec(spec)
    transforms = [check_step(s, model.format) for s in steps]
    if model.format == ONNX:
        from shipyard.deps import require

        require("onnx_ir", "ONNX transforms")  # a one-line error naming the package, not an ImportError
    out_path = check_output_path(Path(out), model.path)
    graph = _load(model)
    ctx = _context(model, graph, inputs, outputs)
    result = TransformResult(str(model.path), str(out_path), model.format, before=_stats(model))
    if model.format == ONNX:  # onnx-ir passes on one IR model: one conversion each way
        from shipyard.passes.onnx_passes import run_passes

        passes = [(str(step), t.function(ONNX)(Params(step), ctx)) for step, t in zip(steps, transforms)]
        graph, seconds = run_passes(graph, passes)
        result.steps = [{"transform": label, "seconds": round(seconds.get(label, 0.0), 3)} for label, _ in passes]
    else:
        for step, t in zip(steps, transforms):
            guard.stage(f"applying {step}")
            start = time.perf_counter()
            graph = t.function(model.format)(graph, Params(step), ctx)
            result.steps.append({"transform": str(step), "seconds": round(time.perf_counter() - start, 3)})
    result.notes = ctx.notes
    lossy = any(t.lossy for t in transforms)
    with atomic_path(out_path) as tmp:
        _write(model.format, graph, tmp, text=out_path.suffix == ".pbtxt")
        candidate = Model(model.format, tmp)
        after = _stats(candidate)
        after["size_bytes"] = tmp.stat().st_size
        result.after = after
        if verify:
            _verify(model, candidate, result, lossy, samples, seed, force)
    return result


def _verify(model: Model, candidate: Model, result: TransformResult, lossy: bool, samples: int, seed: int,
            force: bool) -> None:
    from shipyard.data.random import random_feeds
    from shipyard.errors import InputError
    from shipyard.runtimes import open_runner
    from shipyard.verify import Budget, Exact, VerificationError, verify

    guard.stage("verifying the transformed model")
    with open_runner(candidate) as runner:
        signature = runner.signature
    try:
        feeds = [random_feeds(signature, seed + i, batch=1) for i in range(samples)]
    except (InputError, UnsupportedError) as exc:
        result.notes.append(f"not verified: {exc.message}")
        return
    # Float rewrites (folded batch norms, reordered sums) move elements by rounding, never the
    # direction of an output; lossy ones (quantize_weights, float16) are held to the budget.
    # On generated inputs, which no model was trained for, a lossy transform is held to its
    # direction and 90% agreement; quantize holds its models to the user's budget on real data.
    criterion = Budget(min_agreement=0.9) if lossy else Exact(1e-4, 1e-3, min_cosine=0.99999)
    verification = verify(model, candidate, feeds, criterion)
    result.verification = [d.to_json() for d in verification.outputs]
    result.verified = verification.passed and bool(verification.outputs)
    if not result.verified and not force:
        raise VerificationError("the transformed model", verification,
                                hint="nothing was written; check the transforms' parameters, or write it anyway with --force")


def check_inputs_outputs(items: list[str] | None) -> list[str] | None:
    """``--inputs a,b --inputs c`` -> [a, b, c]."""
    if not items:
        return None
    names = [n.strip() for item in items for n in item.split(",") if n.strip()]
    if not names:
        raise UsageError("--input-nodes/--output-nodes need node names")
    return names
