"""The runtimes a generated program can use: formats each one runs, and the CMake that finds it.

Each runtime is found where its Python wheel put it (asked from the Python that runs shipyard,
at configure time) unless the user gives a root with ``-D<NAME>_ROOT=``. ONNX Runtime and
LiteRT wheels ship the shared library but no headers, so those projects need a release
package's root (see docs/cpp.md).
"""
from __future__ import annotations

from dataclasses import dataclass

from shipyard.errors import UsageError
from shipyard.report.numbers import a as _a


@dataclass(frozen=True)
class Target:
    name: str               # the --runtime value
    backend: str            # shipyard's Python runner for the same engine (shipyard.runtimes)
    formats: tuple[str, ...]
    template: str           # main program template in templates/
    root_var: str           # -D<root_var>=... points CMake at a runtime the user installed
    suffix: str             # model file suffix in the project


TARGETS = {
    "torch": Target("torch", "torch", ("torchscript",), "torch_main.cpp", "TORCH_ROOT", ".pt"),
    "tf": Target("tf", "tensorflow", ("tf-graphdef", "tf-checkpoint", "tf-memmapped"), "tf_main.c", "TENSORFLOW_ROOT",
                 ".pb"),
    "ort": Target("ort", "onnxruntime", ("onnx",), "ort_main.cpp", "ONNXRUNTIME_ROOT", ".onnx"),
    "litert": Target("litert", "litert", ("tflite",), "litert_main.cpp", "LITERT_ROOT", ".tflite"),
}
ALIASES = {"tensorflow": "tf", "onnxruntime": "ort", "tflite": "litert", "libtorch": "torch", "pytorch": "torch"}
# format -> the target that loads it (each format is loaded by one target)
DEFAULT = {fmt: t.name for t in TARGETS.values() for fmt in t.formats}
# A TF memory-mapped graph needs TF's C++ API (MemmappedEnv; the C API cannot set a session's Env).
MEMMAPPED_TEMPLATE, MEMMAPPED_SUFFIX = "tf_memmapped_main.cpp", ".mmpb"
# What to do with a format no C/C++ runtime here loads directly.
CONVERT_HINT = {
    "tf-savedmodel": "freeze it first ('shipyard freeze MODEL -o frozen.pb') and generate for the frozen graph",
    "keras": "freeze it first ('shipyard freeze MODEL -o frozen.pb') or convert it ('shipyard convert MODEL --to onnx')",
    "tfjs": "convert it first ('shipyard convert MODEL --to onnx')",
    "torch-checkpoint": "a state_dict holds weights but no code: save the module with torch.jit.script or "
                        "torch.jit.trace and generate for that TorchScript file",
}


def choose(runtime: str | None, fmt: str) -> Target:
    """The target for ``runtime`` (default: the format's own), refusing a format it cannot run."""
    if runtime is None:
        if fmt not in DEFAULT:
            raise UsageError(f"no C/C++ runtime here loads {_a(fmt)} model", hint=CONVERT_HINT.get(fmt))
        return TARGETS[DEFAULT[fmt]]
    name = ALIASES.get(runtime.lower(), runtime.lower())
    if name not in TARGETS:
        from shipyard.cliargs import did_you_mean

        raise UsageError(f"unknown runtime '{runtime}'{did_you_mean(name, TARGETS)}", hint="runtimes: " + ", ".join(TARGETS))
    target = TARGETS[name]
    if fmt not in target.formats:
        can = [t.name for t in TARGETS.values() if fmt in t.formats]
        hint = (f"{_a(fmt)} model runs on --runtime {' or '.join(can)}" if can
                else CONVERT_HINT.get(fmt, f"convert it with 'shipyard convert' to a format {name} runs "
                                           f"({', '.join(target.formats)})"))
        raise UsageError(f"the {name} runtime cannot run {_a(fmt)} model", hint=hint)
    return target
