"""What Python adds per call: p50 latency of the program `shipyard cpp` generates against the same
runtime called from Python (the engine's own Python API, and shipyard's Runner), one thread each,
on a tiny CNN and on a MobileNetV2-size model, measured in one run.

    python benchmarks/cpp_overhead.py [--runs 50] [--ort-root DIR]

libtorch and the TensorFlow C API come from their wheels; ONNX Runtime needs headers no registry
here provides (docs/cpp.md), so its rows need ``--ort-root`` (a release package, or a folder with
``include/onnxruntime_c_api.h``: the library is the wheel's). Each program is built once (a
libtorch build takes 25-60 s).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent
ROUNDS = 3
sys.path.insert(0, str(HERE))
from _common import keras_to_onnx, median_ms


def torch_mobilenet_v2(seed: int = 0):
    """MobileNetV2 (1.0, 224; 3.5 M parameters, ~300 MMACs) written out: torchvision is not installable next to
    the pinned torch here."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    def conv_bn(cin, cout, k, stride, groups=1, act=True):
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return layers + ([nn.ReLU6()] if act else [])

    class Inverted(nn.Module):
        def __init__(self, cin, cout, stride, expand):
            super().__init__()
            hidden = cin * expand
            layers = (conv_bn(cin, hidden, 1, 1) if expand != 1 else []) + conv_bn(hidden, hidden, 3, stride, hidden)
            self.body = nn.Sequential(*layers, *conv_bn(hidden, cout, 1, 1, act=False))
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    layers, cin = conv_bn(3, 32, 3, 2), 32
    for expand, cout, repeats, stride in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                                          (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(repeats):
            layers.append(Inverted(cin, cout, stride if i == 0 else 1, expand))
            cin = cout
    layers += conv_bn(cin, 1280, 1, 1) + [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, 1000)]
    model = nn.Sequential(*layers).eval()
    with torch.no_grad():  # non-trivial statistics, so activations do not vanish
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def make_models(folder: Path) -> list[tuple[str, str, Path, np.ndarray]]:
    """(model label, runtime, file, input) for every row."""
    import tensorflow as tf
    import torch

    from shipyard import examples
    from shipyard.formats.tf_freeze import freeze_concrete_function, keras_concrete_function

    rows = []
    rng = np.random.default_rng(0)
    tiny_x = rng.standard_normal((1, *examples.TORCH_INPUT_SHAPE)).astype(np.float32)
    torch.jit.trace(examples.torch_cnn(), torch.from_numpy(tiny_x)).save(str(folder / "tiny.pt"))
    rows.append(("tiny CNN", "torch", folder / "tiny.pt", tiny_x))
    big_x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    torch.jit.trace(torch_mobilenet_v2(), torch.from_numpy(big_x)).save(str(folder / "mobilenet.pt"))
    rows.append(("MobileNetV2", "torch", folder / "mobilenet.pt", big_x))
    keras_tiny = examples.keras_cnn()
    keras_big = tf.keras.applications.MobileNetV2(weights=None)
    examples.randomize_batchnorm(keras_big)
    for label, model, shape in (("tiny CNN", keras_tiny, examples.KERAS_INPUT_SHAPE), ("MobileNetV2", keras_big, (224, 224, 3))):
        stem = "tiny" if label == "tiny CNN" else "mobilenet"
        graph_def = freeze_concrete_function(keras_concrete_function(model, 1))
        (folder / f"{stem}.pb").write_bytes(graph_def.SerializeToString())
        x = rng.standard_normal((1, *shape)).astype(np.float32)
        rows.append((label, "tf", folder / f"{stem}.pb", x))
        rows.append((label, "ort", keras_to_onnx(model, folder / f"{stem}.onnx", batch=1), x))
    return rows


def python_engine(runtime: str, path: Path, x: np.ndarray):
    """The engine's own Python call, one thread."""
    if runtime == "torch":
        import torch

        torch.set_num_threads(1)
        module = torch.jit.load(str(path), map_location="cpu").eval()
        xt = torch.from_numpy(x)

        def run():
            with torch.inference_mode():
                return module(xt)
        return run
    if runtime == "tf":
        import tensorflow as tf

        graph = tf.Graph()
        with graph.as_default():
            tf.import_graph_def(tf.compat.v1.GraphDef.FromString(path.read_bytes()), name="")
        config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
        sess = tf.compat.v1.Session(graph=graph, config=config)
        from shipyard.runtimes import open_runner

        with open_runner(path) as runner:
            inp, out = runner.signature.inputs[0].name, runner.signature.outputs[0].name
        return lambda: sess.run(f"{out}:0", {f"{inp}:0": x})
    from _common import ort_session

    sess = ort_session(path, threads=1)
    name = sess.get_inputs()[0].name
    return lambda: sess.run(None, {name: x})


def shipyard_runner(runtime: str, path: Path, x: np.ndarray):
    from shipyard.runtimes import open_runner

    runner = open_runner(path, threads=1)
    feeds = {runner.signature.inputs[0].name: x}
    return lambda: runner.run(feeds)


def build_program(runtime: str, path: Path, x: np.ndarray, folder: Path, ort_root: Path | None) -> Path:
    np.save(folder / "x.npy", x)
    proj = folder / f"{path.stem}_{runtime}"
    cmd = [sys.executable, "-m", "shipyard", "cpp", str(path), "--runtime", runtime, "-o", str(proj), "--build",
           "--inputs", str(folder / "x.npy")]
    if runtime == "ort":
        cmd += ["--root", str(ort_root)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return proj


def program_p50(proj: Path, runs: int) -> float:
    """The program's own median (it times --repeat runs after one untimed run)."""
    out = proj / "outputs"
    out.mkdir(exist_ok=True)
    proc = subprocess.run([str(proj / "bin/run_model"), "--repeat", str(runs), "--threads", "1", "--outputs", str(out)],
                          cwd=proj, check=True, capture_output=True, text=True)
    return next(float(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("median_ms"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--ort-root", type=Path, help="a folder with include/onnxruntime_c_api.h (ONNX Runtime rows)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = []
        for label, runtime, path, x in make_models(folder):
            if runtime == "ort" and args.ort_root is None:
                rows.append((label, runtime, None, None, None))
                continue
            proj = build_program(runtime, path, x, folder, args.ort_root)
            engine_fn, runner_fn = python_engine(runtime, path, x), shipyard_runner(runtime, path, x)
            # alternate the three, ROUNDS times, and keep each one's best median: the machine is shared,
            # and a burst of load must not land on one side only
            program = engine = runner = float("inf")
            for _ in range(ROUNDS):
                program = min(program, program_p50(proj, args.runs))
                engine = min(engine, median_ms(engine_fn, args.runs))
                runner = min(runner, median_ms(runner_fn, args.runs))
            rows.append((label, runtime, program, engine, runner))
            print(f"  measured {label} on {runtime}", file=sys.stderr)
    print(f"p50 latency, ms, 1 thread, batch 1: median of {args.runs} runs after a warm-up, best of {ROUNDS} "
          "alternating rounds")
    print("| model | runtime | generated program | engine from Python | shipyard Runner | Python adds (engine) | ratio engine/program |")
    print("|---|---|---|---|---|---|---|")
    for label, runtime, program, engine, runner in rows:
        if program is None:
            print(f"| {label} | {runtime} | - | - | - | no headers here: give --ort-root | - |")
            continue
        print(f"| {label} | {runtime} | {program:.3f} | {engine:.3f} | {runner:.3f} | {engine - program:+.3f} | "
              f"{engine / program:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
