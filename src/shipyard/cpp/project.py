"""Write a generated C/C++ project: the program, its CMakeLists.txt, the model, sample inputs.

Templates live in ``templates/`` as real C/C++/CMake files with ``@@NAME@@`` placeholders (no
template engine: braces stay C braces). Input and output names are the ones shipyard detects,
written into the program as a table, so the program needs no name from its user.
"""
from __future__ import annotations

import json
import re
import shutil
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from shipyard.cpp.targets import MEMMAPPED_SUFFIX, MEMMAPPED_TEMPLATE, Target
from shipyard.model import Model, Signature, TensorSpec, tensor_name

MANIFEST = "shipyard-cpp.json"


@dataclass
class Project:
    """What was generated, for the build, the check and the report."""

    target: Target
    model_file: str
    binary: str
    inputs: dict[str, str]            # tensor name -> file in inputs/
    outputs: dict[str, str]           # tensor name -> file the program writes
    encrypted: bool = False
    workflow: str = "predict"
    lang: str = "cpp"
    cmake_args: list[str] = field(default_factory=list)   # what the build passes to CMake
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"runtime": self.target.name, "workflow": self.workflow, "lang": self.lang, "model": self.model_file,
                "binary": self.binary, "inputs": self.inputs, "outputs": self.outputs, "encrypted": self.encrypted,
                **self.extra}


def template(name: str) -> str:
    return resources.files("shipyard.cpp").joinpath("templates", name).read_text()


def fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():  # values a template does not use are ignored
        text = text.replace(f"@@{key}@@", value)
    left = re.findall(r"@@[A-Z_]+@@", text)
    assert not left, f"unfilled template placeholders: {left}"  # a bug in shipyard, not user input
    return text


def file_names(names: list[str]) -> dict[str, str]:
    """A file name per tensor name (``dense/BiasAdd:0`` -> ``dense_BiasAdd.npy``), unique."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for name in names:
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", tensor_name(name)).lstrip(".") or "tensor"
        stem, n = base, 1
        while stem.lower() in used:
            n += 1
            stem = f"{base}_{n}"
        used.add(stem.lower())
        out[name] = stem + ".npy"
    return out


def c_string(text: str) -> str:
    """A C string literal for any text (non-ASCII as octal escapes of its UTF-8 bytes)."""
    out = []
    for b in text.encode("utf-8"):
        ch = chr(b)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 32 <= b < 127 and ch != "?":  # '?' would start a trigraph
            out.append(ch)
        else:
            out.append(f"\\{b:03o}")
    return '"' + "".join(out) + '"'


def tensor_table(specs: list[TensorSpec], files: dict[str, str], arrays: dict[str, np.ndarray] | None = None,
                 scalars: set[str] = frozenset()) -> str:
    """C initialisers of ``shipyard_tensor`` rows (see templates/common.h)."""
    rows = []
    for spec in specs:
        dtype = _dtype(spec, arrays)
        if spec.shape is None:
            ndim, dims = -1, []
        else:
            ndim, dims = len(spec.shape), [d if isinstance(d, int) and d >= 0 else -1 for d in spec.shape]
        shape = "{" + ", ".join(str(d) for d in dims) + "}" if dims else "{0}"
        rows.append(f"    {{{c_string(spec.name)}, {c_string(files[spec.name])}, '{dtype.kind}', {dtype.itemsize}, "
                    f"{ndim}, {shape}, {int(spec.name in scalars)}}},")
    return "\n".join(rows) or "    {0}"


def _dtype(spec: TensorSpec, arrays: dict[str, np.ndarray] | None) -> np.dtype:
    if arrays is not None and spec.name in arrays:
        return np.asarray(arrays[spec.name]).dtype
    try:
        return np.dtype(spec.dtype)
    except TypeError:
        return np.dtype("float32")


def write_inputs(folder: Path, feeds: dict[str, np.ndarray], files: dict[str, str]) -> None:
    folder.mkdir()
    for name, value in feeds.items():
        value = np.asarray(value)
        # C order for npy.h; not np.ascontiguousarray, which turns a 0-d array (a number argument) into 1-d
        np.save(folder / files[name], value if value.flags.c_contiguous else value.copy(order="C"), allow_pickle=False)


def copy_model(model: Model, dest: Path, target: Target) -> str:
    """Copy the model file into the project (an encrypted model stays encrypted)."""
    suffix = MEMMAPPED_SUFFIX if model.format == "tf-memmapped" else target.suffix
    name = "model" + suffix + (".enc" if model.encrypted else "")
    shutil.copyfile(model.path, dest / name)
    return name


def encryption_cmake(binary: str) -> str:
    return ("\n# The model is encrypted: decrypt it in memory with OpenSSL (Debian: libssl-dev).\n"
            "find_package(OpenSSL REQUIRED)\n"
            f"target_compile_definitions({binary} PRIVATE SHIPYARD_ENCRYPTED)\n"
            f"target_link_libraries({binary} PRIVATE OpenSSL::Crypto)\n")


def generate_predict(model: Model, target: Target, signature: Signature, feeds: dict[str, np.ndarray],
                     dest: Path, lang: str = "cpp", scalars: set[str] = frozenset()) -> Project:
    """The inference program for ``target``: load, read inputs, run (timed), write outputs."""
    in_files = file_names([s.name for s in signature.inputs])
    out_files = file_names([s.name for s in signature.outputs])
    model_file = copy_model(model, dest, target)
    main = ("main.c" if lang == "c" else "main.cpp") if target.name == "tf" else "main.cpp"
    values = {
        "MODEL_FILE": model_file,
        "INPUTS": tensor_table(list(signature.inputs), in_files, feeds, scalars),
        "OUTPUTS": tensor_table(list(signature.outputs), out_files),
        "NUM_INPUTS": str(len(signature.inputs)),
        "NUM_OUTPUTS": str(len(signature.outputs)),
        "MAIN": main,
    }
    memmapped = model.format == "tf-memmapped"
    (dest / main).write_text(fill(template(MEMMAPPED_TEMPLATE if memmapped else target.template), values))
    write_headers(dest, target, model.encrypted)
    project = Project(target, model_file, "run_model", in_files, out_files, model.encrypted, lang=lang)
    (dest / "CMakeLists.txt").write_text(cmake_lists(target, project, main))
    write_inputs(dest / "inputs", feeds, in_files)
    notes = ("\nThe model is TensorFlow's memory-mapped graph format: the program uses TensorFlow's C++ API "
             "(`tensorflow::MemmappedEnv` maps the file, `ImmutableConst` nodes read the weights in place) from the "
             "headers and libraries the tensorflow wheel ships.\n" if memmapped else "")
    write_readme(dest, model, project, main, notes)
    write_manifest(dest, project)
    return project


def write_headers(dest: Path, target: Target, encrypted: bool) -> None:
    names = ["npy.h", "common.h"] + (["tf_common.h"] if target.name == "tf" else []) + (["decrypt.h"] if encrypted else [])
    for name in names:
        (dest / name).write_text(template(name))


def cmake_lists(target: Target, project: Project, main: str) -> str:
    values = {"PYTHON": sys.executable, "ENCRYPTION": encryption_cmake(project.binary) if project.encrypted else "",
              "MAIN": main, "LANG": "C" if main.endswith(".c") else "CXX", "BINARY": project.binary}
    return fill(template(f"{target.name}_CMakeLists.txt"), values)


FINDS = {
    "torch": "libtorch from the torch wheel, or `-DTORCH_ROOT=`",
    "tf": "the TensorFlow C API from the tensorflow wheel, or `-DTENSORFLOW_ROOT=`",
    "ort": "ONNX Runtime from `-DONNXRUNTIME_ROOT=` (an unpacked release: include/ and lib/)",
    "litert": "LiteRT from `-DLITERT_ROOT=` (headers and libtensorflowlite_c.so or libLiteRt.so)",
}


def write_readme(dest: Path, model: Model, project: Project, main: str, notes: str = "", run_args: str = "") -> None:
    key = " --key-file KEY" if project.encrypted else ""
    root_arg = {"ort": " -DONNXRUNTIME_ROOT=/path/to/onnxruntime", "litert": " -DLITERT_ROOT=/path/to/litert"}
    values = {
        "TITLE": f"{model.path.name} on {project.target.name}",
        "SOURCE": model.path.name, "FORMAT": model.format, "RUNTIME": project.target.name,
        "MAIN": main, "FINDS": FINDS[project.target.name],
        "EXTRA_FILES": (", `tf_common.h`" if project.target.name == "tf" else "")
        + (", `decrypt.h`" if project.encrypted else ""),
        "MODEL_FILE": project.model_file,
        "INPUT_LIST": ", ".join(f"`{f}` ({n})" for n, f in project.inputs.items()) or "none",
        "OUTPUT_LIST": ", ".join(f"`{f}` ({n})" for n, f in project.outputs.items()) or "none",
        "CMAKE_ARGS": root_arg.get(project.target.name, ""),
        "BINARY": project.binary, "RUN_ARGS": (run_args or "--repeat 10") + key,
        "NOTES": notes + ("\nThe model is encrypted (AES-256-GCM): the program decrypts it in memory with its key "
                          "(`--key-file` or `$SHIPYARD_MODEL_KEY_FILE`); the key is not in this folder.\n"
                          if project.encrypted else ""),
    }
    (dest / "README.md").write_text(fill(template("README.md.in"), values))


def write_manifest(dest: Path, project: Project) -> None:
    from shipyard import __version__

    (dest / MANIFEST).write_text(json.dumps({"generator": f"shipyard {__version__}", **project.to_json()}, indent=2) + "\n")
