"""``convert``: plan, run the chain, verify the artifact against the source."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shipyard.atomic import check_output_path
from shipyard.convert import planner
from shipyard.convert.options import ConvertOptions
from shipyard.convert.torch_edges import is_factory
from shipyard.data.random import random_feeds
from shipyard.errors import ModelLoadError, OutputPathError, ShipyardError, UsageError
from shipyard.model import Model, Signature, TensorSpec
from shipyard.sniff import open_model
from shipyard.verify import Exact, Verification, VerificationError, verify


@dataclass
class ConvertResult:
    source: Model
    artifact: Model
    path: list[str]
    seconds: float
    verification: Verification | None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "source": {"path": str(self.source.path), "format": self.source.format},
            "artifact": {"path": str(self.artifact.path), "format": self.artifact.format},
            "path": self.path,
            "seconds": round(self.seconds, 3),
            "notes": self.notes,
            "verification": self.verification.to_json() if self.verification else None,
        }


def source_model(spec: str) -> Model:
    if is_factory(spec):
        return Model("torch-module", Path(spec))
    return open_model(spec)


def _check_out(out: Path, src: Model, dst: str) -> Path:
    out = check_output_path(out, *([] if src.format == "torch-module" else [src.path]))
    if out.is_dir() and any(out.iterdir()):
        try:
            same = open_model(out).format == dst
        except ShipyardError:
            same = False
        if not same:
            raise OutputPathError(f"{out}: a non-empty directory that is not a {dst} model; refusing to replace it")
    return out


def _source_runner(src: Model, opts: ConvertOptions):
    """(signature, run function, close) of the source, for verification."""
    if src.format == "torch-module":
        import torch

        from shipyard.convert.torch_edges import load_factory

        module = load_factory(str(src.path), opts.weights)
        sig = Signature(tuple(TensorSpec(n, "float32", s) for n, s in opts.input_shape.items()),
                        (TensorSpec("output", "float32", None),))

        def run(feeds):
            with torch.no_grad():
                out = module(*[torch.from_numpy(feeds[s.name]) for s in sig.inputs])
            out = out if isinstance(out, (list, tuple)) else [out]
            return {f"output{'' if len(out) == 1 else f'_{i}'}": o.numpy() for i, o in enumerate(out)}

        return sig, run, lambda: None
    from shipyard.runtimes import open_runner

    runner = open_runner(src)
    sig = runner.signature
    if src.format == "torchscript" and opts.input_shape:
        shapes = list(opts.input_shape.values())
        sig = Signature(tuple(TensorSpec(s.name, s.dtype, shapes[i] if i < len(shapes) else s.shape)
                              for i, s in enumerate(sig.inputs)), sig.outputs)
    return sig, runner.run, runner.close


def convert_model(source: str, to: str, out: Path, opts: ConvertOptions | None = None, check: bool = True,
                  feeds: dict[str, np.ndarray] | None = None, atol: float = 1e-4, rtol: float = 1e-3) -> ConvertResult:
    opts = opts or ConvertOptions()
    src = source_model(source)
    if src.format == "torch-checkpoint":
        raise UsageError(f"{src.path}: a checkpoint holds weights, not a program; give the module that uses them",
                         hint=f"shipyard convert package.module:factory --weights {src.path} --to {to} ...")
    if opts.weights is not None and src.format != "torch-module":
        raise UsageError("--weights goes with a package.module:factory source")
    dst = planner.target_format(to)
    edges = planner.plan(src.format, dst, opts.via)
    out = _check_out(Path(out), src, dst)
    start = time.perf_counter()
    artifact = planner.run_plan(src, edges, out, opts)
    seconds = time.perf_counter() - start
    verification = None
    if check:
        sig, run, close = _source_runner(src, opts)
        try:
            if feeds is None:
                feeds = random_feeds(sig, seed=0, batch=2)
            verification = verify((sig, run), artifact, [feeds], Exact(atol, rtol), outputs=_chosen(src, opts))
            if src.format in TORCH_SOURCES and dst == "onnx" and verification.passed:
                _verify_second_shape(verification, (sig, run), artifact, feeds, opts, Exact(atol, rtol))
        except ModelLoadError as exc:
            if not (opts.allow_tf_ops and dst == "tflite" and "Flex" in str(exc)):
                raise
            # The pip LiteRT (and tf.lite) ship without the Flex delegate: the model is right,
            # it just cannot run here. Say so rather than throw the artifact away.
            opts.note("not verified: this Python LiteRT has no Flex delegate to run select TF ops; "
                      "check it with a runtime linked with tensorflow-lite-select-tf-ops")
        finally:
            close()
    result = ConvertResult(src, artifact, [src.format] + [e.dst for e in edges], seconds, verification, list(opts.notes))
    if verification is not None and not verification.passed:
        raise VerificationError(str(artifact.path), verification, result=result,
                                hint="the artifact is kept to be examined: compare it with 'shipyard compare', "
                                     "or pass --no-verify to skip the check")
    return result


TORCH_SOURCES = ("torchscript", "torch-module")


def second_shape_feeds(feeds: dict[str, np.ndarray], opts: ConvertOptions) -> dict[str, np.ndarray]:
    """Feeds of another shape along every axis the export declared dynamic: batch + 1, and twice
    the size on the axes named with ``--dynamic`` (doubling keeps sizes divisible by strides)."""
    rng = np.random.default_rng(1)
    tensors = [k for k, v in feeds.items() if np.ndim(v)]
    only = next(iter(opts.dynamic.values())) if len(opts.dynamic) == 1 and len(tensors) == 1 else ()
    out = {}
    for name, value in feeds.items():
        value = np.asarray(value)
        if value.ndim == 0:
            out[name] = value
            continue
        axes = {a % value.ndim for a in opts.dynamic.get(name, only)}
        shape = tuple(d + 1 if i == 0 else (2 * d if i in axes else d) for i, d in enumerate(value.shape))
        out[name] = (rng.standard_normal(shape).astype(value.dtype) if value.dtype.kind == "f"
                     else np.resize(value, shape))
    return out


def _verify_second_shape(verification: Verification, reference, artifact: Model, feeds, opts: ConvertOptions,
                         criterion: Exact) -> None:
    """Prove the dynamic axes: run source and artifact again on inputs of another shape."""
    second = second_shape_feeds(feeds, opts)
    shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in second.items() if np.ndim(v))
    try:
        again = verify(reference, artifact, [second], criterion)
    except ShipyardError as exc:
        verification.failures.append(f"on a second input shape ({shapes}): {exc.message}")
        return
    worst = max((d.max_abs for d in again.outputs), default=0.0)
    opts.note(f"verified on a second input shape too: {shapes} (max abs {worst:.3g})")
    verification.failures += [f"on a second input shape ({shapes}): {f}" for f in again.failures]


def _chosen(src: Model, opts: ConvertOptions) -> list[str] | None:
    """The outputs the artifact was asked to keep, when the source runner returns more."""
    return opts.outputs if opts.outputs and src.format not in ("torch-module",) else None
