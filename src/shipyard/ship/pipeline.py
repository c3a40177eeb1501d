"""The ``ship`` pipeline: inspect -> freeze -> optimise -> convert -> quantize -> verify ->
bench -> op lists -> manifest, report and a serving repository.

Each step is recorded in the manifest as it finishes. A step that fails stops the pipeline
with its message; the manifest then lists the artifacts made so far and the failed step.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shipyard import guard
from shipyard.errors import ShipyardError, UsageError
from shipyard.formats import registry
from shipyard.model import Model, Signature
from shipyard.ship.manifest import Artifact, Manifest, sha256, size
from shipyard.sniff import open_model
from shipyard.verify import Budget, Exact, VerificationError

TARGETS = ("onnx", "tflite", "tfjs", "torchscript")
QUANTIZE = ("none", "weights", "dynamic", "static", "float16")
# Default optimisation of a frozen graph, in the graph_transforms syntax (see docs/transform.md).
GRAPHDEF_TRANSFORMS = ("fold_constants(ignore_errors=true) fold_batch_norms fold_old_batch_norms "
                       "remove_nodes(op=Identity, op=CheckNumerics)")
OPTIMIZE_QUANTIZE_TRIALS = 12


@dataclass
class ShipRequest:
    model: str
    out: Path
    targets: tuple[str, ...] = ("onnx", "tflite", "tfjs")
    quantize: str = "none"
    calibration: str | None = None
    inputs: str | None = None          # evaluation data (.npz/.npy/TFRecord/images), labels optional
    outputs: list[str] | None = None
    checkpoint: str | None = None
    samples: int = 64                  # evaluation samples (--eval-samples)
    calibration_samples: int = 100     # at most this many calibration samples (--calibration-samples)
    bench_runs: int = 30
    threads: int | None = 1
    name: str | None = None
    budget: Budget = field(default_factory=Budget)
    allow_degraded: bool = False       # keep quantized artifacts that miss the budget (marked degraded)
    optimize: str | None = None        # latency, throughput or size: choose one artifact x engine x threads
    engines: tuple[str, ...] | None = None  # --optimize: only these engines (default: every installed one)
    precisions: tuple[str, ...] | None = None  # --optimize: only these precisions (fp32, bf16, int8)
    progress: Callable[[str], None] = field(default=lambda text: print(f"· {text}", file=sys.stderr, flush=True))


class ShipFailed(ShipyardError):
    """A pipeline step failed; the manifest lists what was made before it."""

    def __init__(self, step: str, cause: ShipyardError, manifest_path: Path):
        super().__init__(f"ship stopped at '{step}': {cause.message}",
                         hint=(cause.hint + "; " if cause.hint else "") + f"artifacts made so far are listed in {manifest_path}")
        self.exit_code = cause.exit_code


class Pipeline:
    def __init__(self, req: ShipRequest):
        if req.quantize not in QUANTIZE:
            raise UsageError(f"unknown --mode '{req.quantize}'", hint="one of: " + ", ".join(QUANTIZE))
        bad = [t for t in req.targets if t not in TARGETS]
        if bad:
            from shipyard.cliargs import did_you_mean

            raise UsageError(f"unknown target(s) {', '.join(bad)}{did_you_mean(bad[0], TARGETS)}",
                             hint="targets: " + ", ".join(TARGETS))
        if req.optimize is not None:
            from shipyard.ship.optimize import OBJECTIVES

            if req.optimize not in OBJECTIVES:
                raise UsageError(f"unknown --optimize '{req.optimize}'", hint="one of: " + ", ".join(OBJECTIVES))
            if req.threads is not None and req.threads < 1:
                raise UsageError("--threads must be at least 1")
            from shipyard.ship.optimize import PRECISIONS

            unknown = [p for p in req.precisions or () if p not in PRECISIONS]
            if unknown:
                raise UsageError(f"unknown precision(s) {', '.join(unknown)}", hint="precisions: " + ", ".join(PRECISIONS))
            if req.engines:
                from shipyard.runtimes import backend_name

                req.engines = tuple(backend_name(e) for e in req.engines)
        self.req = req
        self.out = Path(req.out).absolute()
        self.source = open_model(req.model)
        self.name = req.name or _model_name(self.source)
        self.manifest = Manifest(source={"path": str(self.source.path), "format": self.source.format},
                                 budget=req.budget.to_json())
        self.work = Path(tempfile.mkdtemp(prefix="shipyard-ship-"))
        self.reference: Model | None = None     # the float model every artifact is compared with
        self.ref_outputs: dict[str, np.ndarray] = {}
        self.samples: list[dict[str, np.ndarray]] = []
        self.labels: np.ndarray | None = None
        self.ref_sig: Signature | None = None

    # -- driver ----------------------------------------------------------------------
    def run(self) -> Manifest:
        self._prepare_out()
        steps = [("inspect", self.inspect), ("freeze", self.freeze), ("optimise", self.optimise),
                 ("convert", self.convert), ("quantize", self.quantize), ("verify", self.verify),
                 ("optimize", self.choose) if self.req.optimize else ("bench", self.bench), ("ops", self.ops),
                 ("package", self.package)]
        try:
            from shipyard import progress

            for i, (name, step) in enumerate(steps):
                self.req.progress(f"{name}")
                guard.stage(f"shipping {self.source.display}: {name}")
                progress.count(f"shipping {self.source.path.name}", i, len(steps), unit="step", detail=name)
                start = time.perf_counter()
                try:
                    detail = step()
                except ShipyardError as exc:
                    self.manifest.steps.append({"step": name, "status": "failed", "seconds": round(time.perf_counter() - start, 2)})
                    self.manifest.failed = {"step": name, "error": exc.message}
                    raise ShipFailed(name, exc, self.manifest.write(self.out)) from exc
                self.manifest.steps.append({"step": name, "status": "done", "seconds": round(time.perf_counter() - start, 2),
                                            **({"detail": detail} if detail else {})})
            self.manifest.write(self.out)
            from shipyard.ship.report import write_report

            write_report(self)
        finally:
            progress.done()
            shutil.rmtree(self.work, ignore_errors=True)
        return self.manifest

    def _prepare_out(self) -> None:
        if self.out.exists() and any(self.out.iterdir()) and not (self.out / "manifest.json").is_file():
            raise UsageError(f"{self.out}: a non-empty directory that is not a shipyard distribution; refusing to write into it")
        from shipyard.atomic import check_output_path

        data = [Path(p) for p in (self.req.calibration, self.req.inputs, self.req.checkpoint) if p]
        check_output_path(self.out, self.source.path, *data, parents=True)
        if self.out.exists():
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True)

    def _add(self, artifact_model: Model, name: str, quantization: str = "float32", notes=()) -> Artifact:
        from shipyard.formats import handler

        path = artifact_model.path
        sig = handler(artifact_model.format).signature(artifact_model)
        art = Artifact(name, artifact_model.format, str(path.relative_to(self.out)), quantization, sha256(path, artifact_model.format), size(path, artifact_model.format),
                       sig.to_json(), notes=list(notes))
        self.manifest.artifacts.append(art)
        return art

    # -- steps -------------------------------------------------------------------------
    def inspect(self) -> dict:
        from shipyard.inspection import inspect_model

        if self.source.format == "tf-graphdef" and self.req.checkpoint is None and _has_variables(self.source):
            raise UsageError(f"{self.source.path}: the graph has variables; give its --checkpoint")
        s = inspect_model(self.source)
        self.manifest.source.update(params=s.params, flops=s.flops, inputs=[t.to_json() for t in s.inputs],
                                    outputs=[t.to_json() for t in s.outputs])
        return {"params": s.params, "flops": s.flops}

    def freeze(self) -> dict | None:
        """TensorFlow sources become one frozen GraphDef (the float reference of every target)."""
        from shipyard.convert.freeze import LiveGraph
        from shipyard.formats.tf_freeze import check_outputs, prune_for_inference

        fmt = self.source.format
        if fmt not in ("tf-graphdef", "tf-checkpoint", "keras", "tf-savedmodel"):
            self.reference = self.source
            return None
        frozen_path = self.out / f"{self.name}.pb"
        notes: list[str] = []
        if fmt in ("tf-graphdef", "tf-checkpoint") and (self.req.checkpoint or fmt == "tf-checkpoint"):
            ckpt = open_model(self.req.checkpoint) if self.req.checkpoint else self.source
            live = LiveGraph(self.source.path if fmt == "tf-graphdef" else None, ckpt.path, ckpt.extras.get("meta") if fmt == "tf-checkpoint" else None)
            try:
                outputs = self.req.outputs or _inference_outputs(live.graph_def, notes)
                check_outputs(live.graph_def, outputs)
                frozen = live.freeze(outputs)
            finally:
                live.close()
            frozen_path.write_bytes(frozen.SerializeToString())
        else:
            from shipyard.convert.api import convert_model
            from shipyard.convert.options import ConvertOptions

            convert_model(str(self.source.path), "pb", frozen_path, ConvertOptions(outputs=self.req.outputs), check=False)
            if self.req.outputs is None:
                from shipyard.formats import tf_protos

                gd, _ = tf_protos.parse_graph_file(frozen_path)
                outputs = _inference_outputs(gd, notes)
                frozen_path.write_bytes(prune_for_inference(gd, outputs).SerializeToString())
        self.reference = Model("tf-graphdef", frozen_path)
        self._add(self.reference, "graphdef", notes=notes)
        return {"frozen": str(frozen_path.name), "notes": notes} if notes else {"frozen": str(frozen_path.name)}

    def optimise(self) -> dict | None:
        if self.reference.format != "tf-graphdef":
            return None
        from shipyard.passes.pipeline import transform_model

        optimised = self.work / "optimised.pb"
        result = transform_model(self.reference.path, GRAPHDEF_TRANSFORMS, optimised)
        shutil.copy(optimised, self.reference.path)
        art = next(a for a in self.manifest.artifacts if a.name == "graphdef")
        art.sha256, art.size_bytes = sha256(self.reference.path), size(self.reference.path)
        art.notes.append(f"optimised: {GRAPHDEF_TRANSFORMS}")
        return {"transforms": GRAPHDEF_TRANSFORMS, "nodes_before": result.before.get("nodes"), "nodes_after": result.after.get("nodes")}

    def convert(self) -> dict:
        from shipyard.convert.api import convert_model

        made = {}
        for target in self.req.targets:
            if self.reference.format == "onnx" and target in ("tflite", "tfjs"):
                raise UsageError(f"an ONNX source cannot reach {target} here (no ONNX->TensorFlow converter installs next to TF 2.21)")
            out = (self.out / f"{self.name}{registry.get(target).suffix}" if target != "tfjs"
                   else self.out / f"{self.name}_tfjs")
            if out == self.reference.path:
                made[target] = out.name
                continue
            if self.reference.format == target:  # already in the target format: ship a copy
                (shutil.copytree if self.reference.path.is_dir() else shutil.copy)(self.reference.path, out)
                self._add(Model(target, out), target)
                made[target] = out.name
                continue
            result = convert_model(str(self.reference.path), target, out, check=False)
            self._add(result.artifact, target, notes=result.notes)
            made[target] = out.name
        return made

    def quantize(self) -> dict | None:
        mode = self.req.quantize
        if mode == "none" and self.req.optimize and "int8" in (self.req.precisions or ("int8",)):
            mode = "static"  # int8 candidates for --optimize, each kept only inside the budget
        if mode == "none":
            return None
        from shipyard.quantize import Request
        from shipyard.ship import sensitivity

        made = {}
        if mode == "static" and not self.req.calibration:
            self.manifest.warnings.append("int8 calibrated on random data: its ranges were not fitted to real inputs; "
                                          "give --calibration with representative samples")
        # layers: when int8 is inside the budget at once (no search sensitivities), the noise each
        # layer adds is measured for the report's sensitivity section (not under --optimize: time)
        request = Request(mode, self.req.calibration, samples=self.req.calibration_samples, latency_runs=0,
                          layers=not self.req.optimize, budget=self.req.budget, threads=self.req.threads)
        if self.req.optimize:
            # --optimize weighs int8 against float on every engine: the settings variants, then a few
            # nodes kept in float, not the full node-by-node search (400 trials would take hours
            # on a MobileNetV2); an int8 model still outside the budget simply does not compete.
            request.max_trials = OPTIMIZE_QUANTIZE_TRIALS
        for art in list(self.manifest.artifacts):
            if art.quantization != "float32" or art.name == "graphdef":
                continue
            path = self.out / art.path
            label = "int8" if mode in ("static", "dynamic", "weights") else mode
            if art.format == "onnx":
                if self.req.optimize and mode == "static" and "openvino" in (self.req.engines or ("openvino",)):
                    made.update(self._quantize_nncf(art, path, request))
                out = path.with_name(f"{path.stem}_{label}.onnx")
                report = self._quantize_one(f"onnx-{label}", "onnx", path, out, request)
                if report is None:
                    continue
                added = self._add(Model("onnx", out), f"onnx-{label}",
                                  f"{mode} ({report.settings.get('format', '')})".strip(), report.warnings + _kept_note(report))
                added.sensitivity = sensitivity.from_report(report)
            elif art.format == "tflite":
                from shipyard.convert.options import ConvertOptions
                from shipyard.convert.tf_edges import graphdef_to_savedmodel

                saved = graphdef_to_savedmodel(self.reference, self.work / "saved_model", ConvertOptions())
                out = path.with_name(f"{path.stem}_{label}.tflite")
                report = self._quantize_one(f"tflite-{label}", "tflite", saved.path, out, request)
                if report is None:
                    continue
                added = self._add(Model("tflite", out), f"tflite-{label}", mode, report.warnings + _kept_note(report))
                added.sensitivity = sensitivity.from_report(report)
            elif art.format == "tfjs":
                from shipyard.convert.tfjs_writer import write_graph_model
                from shipyard.formats.tfjs import full_graph_def

                out = path.with_name(f"{path.name}_uint8")
                write_graph_model(full_graph_def(Model("tfjs", path)), out, quantize_uint8=True)
                self._add(Model("tfjs", out), "tfjs-uint8", "uint8 weights", ["TF.js stores weights as uint8 and computes in float32"])
            else:
                art.notes.append(f"no {mode} quantization for {art.format}")
                continue
            made[art.name] = out.name
        return made

    # NNCF's two int8 forms for OpenVINO, both weighed by --optimize (which one is faster depends
    # on the model: the IR on ResNet50, the QDQ ONNX on MobileNetV2 at one thread)
    NNCF_FORMS = (("onnx-nncf-int8", "onnx", "_nncf_int8.onnx", "static (NNCF QDQ)"),
                  ("openvino-int8", "openvino-ir", "_openvino_int8.xml", "static (NNCF IR)"))

    def _quantize_nncf(self, art: Artifact, path: Path, request) -> dict:
        """OpenVINO's int8 (NNCF: QDQ ONNX, and an OpenVINO IR) beside onnxruntime's, for --optimize."""
        from dataclasses import replace

        from shipyard.ship.optimize import installed

        if not (installed("openvino") and importlib.util.find_spec("nncf")):
            art.notes.append("no NNCF int8 candidates: pip install 'shipyard[openvino]'")
            return {}
        made = {}
        for name, fmt, suffix, quantization in self.NNCF_FORMS:
            out = path.with_name(f"{path.stem}{suffix}")
            try:
                report = self._quantize_one(name, fmt, path, out, replace(request, engine="nncf"))
            except ShipyardError as exc:  # NNCF cannot handle this graph: one candidate fewer
                self.manifest.rejected.append(Artifact(name, fmt, "", quantization, status="rejected",
                                                       notes=[f"NNCF could not quantize it: {exc.message}"]))
                continue
            if report is None:
                continue
            self._add(Model(fmt, out), name, quantization, report.warnings)
            made[name] = out.name
        return made

    def _quantize_one(self, name: str, fmt: str, src: Path, out: Path, request):
        """Quantize one artifact inside the budget; one that misses it is recorded, not shipped."""
        from dataclasses import replace

        from shipyard.quantize import quantize_model

        try:
            return quantize_model(src, out, replace(request, force=self.req.allow_degraded))
        except VerificationError as exc:
            from shipyard.ship.sensitivity import from_report

            self.manifest.rejected.append(Artifact(name, fmt, "", request.mode, status="rejected",
                                                   verification=exc.verification.to_json(),
                                                   failures=list(exc.verification.failures),
                                                   notes=["missed the accuracy budget while quantizing; not written"],
                                                   sensitivity=from_report(exc.result)))  # why it missed
            return None

    def verify(self) -> dict:
        """Every artifact, every output, on the evaluation data: float artifacts exactly, quantized
        ones inside the accuracy budget; a quantized one that misses it leaves the distribution."""
        from shipyard.data import open_source, take
        from shipyard.runtimes import open_runner
        from shipyard.verify import Pair, judge, model_outputs, task_accuracy

        with open_runner(self.reference, threads=self.req.threads) as ref:
            self.ref_sig = ref.signature
        source = open_source(self.req.inputs or self.req.calibration, count=16)
        self.samples = take(source, self.ref_sig, limit=self.req.samples)
        labels = getattr(source, "labels", None)
        self.labels = None if labels is None else np.asarray(labels).reshape(-1)[: len(self.samples)]
        _, self.ref_outputs = model_outputs(self.reference, self.samples, threads=self.req.threads)
        reference_accuracy = None
        if self.labels is not None:
            own = task_accuracy(self.labels, self.ref_outputs, self.ref_outputs, [Pair(k, k, "name") for k in self.ref_outputs])
            reference_accuracy = own["reference"] if own else None
        self.manifest.reference = {"model": str(self.reference.path.relative_to(self.out) if self.reference.path.is_relative_to(self.out) else self.reference.path),
                                   "samples": len(self.samples), "labelled": self.labels is not None,
                                   "data": source.description, "accuracy": reference_accuracy,
                                   "outputs": list(self.ref_outputs)}
        if not getattr(source, "measured", True):
            self.manifest.warnings.append(f"evaluated on {source.description}: the figures compare artifacts with each "
                                          "other, not with the task; give --inputs with real samples (labels give accuracy)")
        failures = []
        for art in list(self.manifest.artifacts):
            float_like = art.quantization == "float32"
            _, got = model_outputs(self.out / art.path, self.samples, reference=self.ref_sig, threads=self.req.threads)
            labels_for = self.labels if not float_like else None
            v = judge(self.ref_outputs, got, Exact() if float_like else self.req.budget, labels_for)
            art.verification = v.to_json()
            if self.labels is not None:
                own = task_accuracy(self.labels, self.ref_outputs, got, v.pairing)
                art.accuracy = own["candidate"] if own else None
            if v.passed:
                continue
            if float_like:
                failures.append(f"{art.name} ({'; '.join(v.failures)})")
            elif self.req.allow_degraded:
                art.status, art.failures = "degraded", list(v.failures)
            else:
                art.status, art.failures = "rejected", list(v.failures)
                self.manifest.artifacts.remove(art)
                self.manifest.rejected.append(art)
                target = self.out / art.path
                (shutil.rmtree if target.is_dir() else os.unlink)(target)
        if failures:
            from shipyard.errors import ModelRunError

            raise ModelRunError("artifacts differ from the float model beyond tolerance: " + ", ".join(failures))
        return {"samples": len(self.samples), "reference_accuracy": reference_accuracy,
                "rejected": [a.name for a in self.manifest.rejected]}

    def bench(self) -> dict:
        from shipyard.bench import BenchConfig, measure_isolated

        for art in self.manifest.artifacts:
            result = measure_isolated(BenchConfig(str(self.out / art.path), threads=self.req.threads),
                                      runs=self.req.bench_runs, warmup=3)
            art.latency_ms = result.latency_ms
            art.notes.append(f"benchmarked on {result.backend}")
        return {"runs": self.req.bench_runs, "threads": self.req.threads}

    def choose(self) -> dict:
        """--optimize: every artifact x engine x precision x threads, judged, measured in isolation; one chosen."""
        from shipyard.ship.optimize import optimize

        self.manifest.optimize = optimize(self)
        chosen = self.manifest.optimize["chosen"]
        return {"chosen": f"{chosen['artifact']} on {chosen['engine']}, {chosen['threads']} thread(s)" if chosen else None,
                "candidates": len(self.manifest.optimize["candidates"])}

    def ops(self) -> dict:
        from shipyard.formats import registry
        from shipyard.ops import FILE_NAMES, list_ops

        ops_dir = self.out / "ops"
        ops_dir.mkdir(exist_ok=True)
        for art in self.manifest.artifacts:
            target = registry.get(art.format).ops_target  # None: no engine lists its ops (TF.js, TorchScript)
            if target is None:
                continue
            report = list_ops(self.out / art.path, target)
            path = ops_dir / f"{art.name}.{FILE_NAMES[target]}"
            path.write_text(report.file_text)
            art.ops_file = str(path.relative_to(self.out))
        return {}

    def package(self) -> dict:
        """A model repository for ``shipyard serve``: one model per artifact, version 1; with
        --optimize, the chosen artifact only, with its engine and threads in ``config.json``."""
        repo = self.out / "serving"
        if self.req.optimize:
            return self._package_chosen(repo)
        for art in self.manifest.artifacts:
            if art.format not in ("onnx", "tflite", "torchscript"):
                continue
            version = repo / f"{self.name}_{art.name.replace('-', '_')}" / "1"
            version.mkdir(parents=True, exist_ok=True)
            _link_as_model(self.out / art.path, art.format, version)
        return {"repository": "serving"}


    def _package_chosen(self, repo: Path) -> dict:
        import json

        chosen = (self.manifest.optimize or {}).get("chosen")
        if not chosen:
            return {"repository": None}
        version = repo / self.name / "1"
        version.mkdir(parents=True, exist_ok=True)
        _link_as_model(self.out / chosen["path"], chosen["format"], version)
        config = {"backend": chosen["engine"], "threads": chosen["threads"]}
        if chosen["options"].get("precision"):
            config["precision"] = chosen["options"]["precision"]
        (repo / self.name / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        return {"repository": "serving", "model": self.name, **config}


def _link_as_model(src: Path, fmt: str, version: Path) -> None:
    """The artifact's files in a serving version folder as ``model.*`` (an IR's .xml and .bin
    together), hard-linked where the file system allows it."""
    from shipyard.formats import files_of

    for path in files_of(src, fmt):
        dst = version / f"model{path.suffix}"
        try:
            os.link(path, dst)
        except OSError:
            shutil.copy(path, dst)


def _kept_note(report) -> list[str]:
    kept = report.settings.get("kept_float") or []
    return [f"kept in float to meet the accuracy budget: {', '.join(kept)}"] if kept else []


def _model_name(model: Model) -> str:
    stem = model.path.name.split(".")[0] if model.path.is_file() or model.format == "tf-checkpoint" else model.path.name
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in stem) or "model"


def _has_variables(model: Model) -> bool:
    from shipyard.formats import tf_graph

    graph_def, _ = tf_graph.load(model)
    return any(n.op in ("VarHandleOp", "VariableV2", "Variable") for n in graph_def.node)


def _inference_outputs(graph_def, notes: list[str]) -> list[str]:
    """Detected outputs minus training ones: an output that needs a placeholder none of the
    other outputs needs (a loss needs the labels) is not shipped."""
    from shipyard.formats.tf_freeze import prune_for_inference
    from shipyard.formats.tf_graph import detect_io

    _, outputs = detect_io(graph_def)
    names = [n.name for n in outputs]
    needs = {n: {x.name for x in prune_for_inference(graph_def, [n]).node if x.op == "Placeholder"} for n in names}
    keep = [n for n in names if not any(needs[n] > needs[m] for m in names if m != n)]
    for n in names:
        if n not in keep:
            extra = sorted(needs[n] - set().union(*(needs[m] for m in keep)))
            notes.append(f"output '{n}' left out: it needs input(s) {', '.join(extra)} that inference does not have (a training output)")
    return keep or names
