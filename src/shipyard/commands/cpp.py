"""`shipyard cpp`: generate a C/C++ project that runs the model, build it, check it against Python."""
from __future__ import annotations

import json
import time
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("cpp", help="generate (and build, and check) a C/C++ program that runs the model")
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True, type=Path, help="the project folder to write")
    p.add_argument("--runtime", help="torch (libtorch), tf (TensorFlow C API), ort (ONNX Runtime) or litert "
                                     "(default: the format's own)")
    p.add_argument("--lang", choices=["cpp", "c"], default="cpp",
                   help="c: a plain C program (TF C API only)")
    p.add_argument("--workflow", choices=["predict", "session"], default="predict",
                   help="session (tf): init or restore, train N steps, save a checkpoint, fetch outputs")
    from shipyard.cliargs import add_inputs, add_random

    add_inputs(p, "sample inputs: FILE.npz (keys are input names), NAME=FILE.npy or FILE.npy; default: random values")
    p.add_argument("--shape", action="append", default=[], metavar="NAME=D0,D1,..",
                   help="shape of a generated input whose shape is dynamic or unknown")
    add_random(p, "random sample inputs with a dynamic batch dimension of N (the default; N: 1)", batch_alias="cpp")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=10, help="session workflow: train steps the sample run takes")
    p.add_argument("--root", type=Path, metavar="DIR",
                   help="the runtime's install folder (passed to CMake as -D<RUNTIME>_ROOT; needed for ort "
                        "and litert, whose wheels ship no headers)")
    p.add_argument("--build", action="store_true", help="compile the project here (cmake and g++ from Debian)")
    p.add_argument("--check", action="store_true",
                   help="build, run on the sample inputs and compare with the Python runtime (exit 1 beyond tolerance)")
    p.add_argument("--repeat", type=int, default=10, help="with --check: timed runs of the program")
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cpp)


def cmd_cpp(args) -> int:
    from shipyard.atomic import atomic_path
    from shipyard.cliargs import check_inputs_or_random, data_items, random_size
    from shipyard.cpp import build as builder
    from shipyard.cpp.targets import choose
    from shipyard.errors import UsageError
    from shipyard.sniff import open_model

    check_inputs_or_random(args)
    args.inputs, args.batch = data_items(args), random_size(args)  # the project generators read args.batch
    model = open_model(args.model)
    target = choose(args.runtime, model.format)
    if args.lang == "c" and target.name != "tf":
        raise UsageError(f"--lang c: the {target.name} runtime has a C++ API here; plain C is for --runtime tf")
    if model.format == "tf-memmapped" and (args.lang == "c" or model.encrypted):
        raise UsageError(f"{model.path}: a TF memory-mapped graph is loaded through TF's C++ MemmappedEnv, which maps "
                         + ("the file itself: it cannot run an encrypted copy" if model.encrypted else
                            "the file: the C API cannot set a session's Env, use --lang cpp"),
                         hint=None if not model.encrypted else "generate for the frozen .pb the file was made from")
    if args.workflow == "session" and target.name != "tf":
        raise UsageError("--workflow session is the TensorFlow C API workflow: use --runtime tf")
    if model.format == "tf-checkpoint" and args.workflow != "session":
        raise UsageError(f"{model.path} is a checkpoint: freeze it ('shipyard freeze') for --workflow predict, "
                         "or use --workflow session")
    if args.repeat < 1 or args.steps < 0 or args.batch < 1:
        raise UsageError("--repeat and --batch must be at least 1, --steps at least 0")
    out = _output_dir(args, model)
    building = args.build or args.check
    if building:
        builder.check_toolchain(args.lang, model.encrypted)
    cmake_args = [f"-D{target.root_var}={args.root.absolute()}"] if args.root else []
    started = time.perf_counter()
    if args.workflow == "session":
        from shipyard.cpp.session import prepare as prepare_session

        job = prepare_session(model, args)
    else:
        job = _prepare_predict(model, target, args)
    report: dict = {"model": str(model.path), "runtime": target.name, "output": str(out)}
    with atomic_path(out, directory=True) as tmp:
        project = job.generate(tmp)
        report["project"] = project.to_json()
        if building:
            t0 = time.perf_counter()
            program = builder.build(tmp, project.binary, cmake_args, args.lang)
            report["build_s"] = round(time.perf_counter() - t0, 2)
            report["program"] = str(out / program.relative_to(tmp))
        if args.check:
            report["check"] = job.check(program, tmp, project)
    report["seconds"] = round(time.perf_counter() - started, 2)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def _output_dir(args, model) -> Path:
    """The project folder: never over an input, and never replacing a folder shipyard did not write."""
    from shipyard.atomic import check_output_path
    from shipyard.cpp.project import MANIFEST
    from shipyard.errors import OutputPathError

    inputs = [i.rpartition("=")[2] for i in args.inputs]
    out = check_output_path(args.output, model.path, *inputs, *(model.extras.values()))
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"{out}: exists and is not a folder; give a folder name for the project")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise OutputPathError(f"{out}: a folder that shipyard did not generate (no {MANIFEST}); refusing to replace it",
                              hint="give a new or empty folder")
    return out


class _Predict:
    """Inference: sample inputs from the user or random, reference outputs from Python."""

    def __init__(self, model, target, args):
        import numpy as np

        from shipyard.data.random import random_feeds
        from shipyard.feeds import load_feeds, parse_shapes
        from shipyard.runtimes import open_runner
        from shipyard.runtimes.base import validate_feeds

        self.model, self.target, self.args = model, target, args
        with open_runner(model, backend=target.backend) as runner:
            self.signature = runner.signature
            if args.inputs:
                feeds = load_feeds(args.inputs, runner.signature)
            else:
                feeds = random_feeds(runner.signature, args.seed, args.batch, parse_shapes(args.shape))
            self.feeds = validate_feeds(runner.signature, feeds)  # wrong name/dtype/shape: one clear line
            self.scalars = set()
            if target.name == "torch":
                from shipyard.formats import torchscript

                self.scalars = torchscript.scalar_args(runner.module)
                self.feeds = {k: (np.asarray(v) if k in self.scalars else v) for k, v in self.feeds.items()}
            self.reference = runner.run(self.feeds) if args.check else None

    def generate(self, dest: Path):
        from shipyard.cpp.project import generate_predict

        return generate_predict(self.model, self.target, self.signature, self.feeds, dest, self.args.lang, self.scalars)

    def check(self, program: Path, project_dir: Path, project) -> dict:
        from shipyard.cpp.check import check, program_outputs
        from shipyard.verify import Exact

        extra = []
        if project.encrypted:  # the program runs in the project folder: give it the key's absolute path
            import os

            from shipyard.protect import KEY_ENV

            if os.environ.get(KEY_ENV):
                extra = ["--key-file", str(Path(os.environ[KEY_ENV]).absolute())]
        got, timing = program_outputs(program, project_dir, project, repeat=self.args.repeat, extra_args=extra)
        result = check(self.reference, got, Exact(self.args.atol, self.args.rtol))
        return {"passed": True, "verification": result.to_json(), "timing": timing}


def _prepare_predict(model, target, args) -> _Predict:
    return _Predict(model, target, args)


def render(report: dict) -> str:
    project = report["project"]
    main = "main.c" if project["lang"] == "c" else "main.cpp"
    lines = [f"wrote {report['output']} ({report['runtime']}, {project['workflow']}): "
             + f"{main}, CMakeLists.txt, {project['model']}, README.md",
             "  inputs  " + (", ".join(f"{n} -> inputs/{f}" for n, f in project["inputs"].items()) or "-"),
             "  outputs " + (", ".join(f"{n} -> {f}" for n, f in project["outputs"].items()) or "-")]
    if "program" in report:
        lines.append(f"built {report['program']} in {report['build_s']:.1f} s")
    check = report.get("check")
    if check:
        ver = check.get("verification")
        if ver:
            from shipyard.report.numbers import error

            figures = ", ".join(f"{name} max abs error {error(d['max_abs'])}" for name, d in ver["outputs"].items())
            crit = ver["criterion"]
            lines.append(f"check PASS against Python: {figures} (atol {crit['atol']:g}, rtol {crit['rtol']:g})")
        lines.extend(check.get("lines", []))
        timing = check.get("timing", {})
        if "steps" in timing:
            lines.append(f"  program: {int(timing['steps'])} train steps, median {timing['median_ms']:.3f} ms per step")
        elif "median_ms" in timing:
            lines.append(f"  program: load {timing.get('load_ms', 0):.1f} ms, median {timing['median_ms']:.3f} ms "
                         f"over {int(timing.get('runs', 0))} runs")
    return "\n".join(lines)
