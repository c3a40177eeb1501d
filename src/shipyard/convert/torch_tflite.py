"""PyTorch -> TFLite directly with litert-torch, run in its own converter environment.

litert-torch cannot share the main environment (it would downgrade pydantic and
typing_extensions, see scripts/setup.d/65-litert-torch.sh), so shipyard hands it a
``torch.export`` program and example inputs in a scratch directory and runs
``litert_torch_worker.py`` with that environment's Python. torch is the same 2.13.0 build on
both sides, so the program saved here loads there. The module is exported here, where the
user's factory and ``--weights`` are loaded; the converter's whole message comes back on failure.
"""
from __future__ import annotations

import json
import keyword
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from shipyard import guard
from shipyard.atomic import atomic_path
from shipyard.convert.options import ConvertOptions
from shipyard.deps import all_output_silenced, native_output_silenced, require
from shipyard.errors import ConversionError, MissingDependencyError, engine_message
from shipyard.model import Model

WORKER = Path(__file__).with_name("litert_torch_worker.py")
SETUP_STEP = "scripts/setup.d/65-litert-torch.sh"
ENV_VAR = "SHIPYARD_LITERT_TORCH_PYTHON"
TIMEOUT_S = 1800


def converter_python() -> Path | None:
    """The litert-torch environment's interpreter: ``$SHIPYARD_LITERT_TORCH_PYTHON``, else
    ``envs/litert-torch`` inside the environment shipyard runs from (where the set-up puts it)."""
    given = os.environ.get(ENV_VAR)
    python = Path(given) if given else Path(sys.prefix) / "envs" / "litert-torch" / "bin" / "python"
    return python if python.is_file() and os.access(python, os.X_OK) else None


def available() -> bool:
    return converter_python() is not None


def _require_python() -> Path:
    python = converter_python()
    if python is None:
        error = MissingDependencyError("litert-torch", "litert-torch", "Converting PyTorch to TFLite with litert-torch")
        error.message = (f"the litert-torch converter environment is missing "
                         f"({os.environ.get(ENV_VAR) or Path(sys.prefix) / 'envs' / 'litert-torch'})")
        error.hint = (f"create it with 'VENV={sys.prefix} bash {SETUP_STEP}' (scripts/setup runs it), "
                      f"or leave out --via to convert through ONNX")
        raise error
    return python


def _identifier(name: str, i: int, prefix: str = "input") -> str:
    cleaned = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return cleaned if cleaned.isidentifier() and not keyword.iskeyword(cleaned) else f"{prefix}_{i}"


def _module_program(src: Model, opts: ConvertOptions, work: Path):
    """(program file, input names, example arrays) for a ``package.module:factory`` source:
    the module with its weights, exported here with ``torch.export``."""
    torch = require("torch", "Exporting a PyTorch module")
    from shipyard.convert.torch_edges import _input_names, example_inputs, load_factory

    module = load_factory(str(src.path), opts.weights)
    names, args = example_inputs(opts, _input_names(src, module))
    if not all(isinstance(a, torch.Tensor) for a in args):
        raise ConversionError("litert-torch converts tensor inputs only; this module takes a number as well",
                              hint="take the ONNX route: --via onnx2tf")
    names = [_identifier(n, i) for i, n in enumerate(names)]
    try:
        with native_output_silenced(1, 2):
            program = torch.export.export(module, tuple(args))
    except Exception as exc:  # torch.export raises many kinds (data-dependent control flow, ...)
        raise ConversionError(f"torch.export could not capture the module for litert-torch: {engine_message(exc)}",
                              hint="the ONNX route may trace it instead: --via onnx2tf") from exc
    path = work / "program.pt2"
    torch.export.save(program, str(path))
    return path, names, [a.numpy() for a in args]


def _export_program(src: Model, opts: ConvertOptions, work: Path):
    """(program file, input names, example arrays) for a ``.pt2`` source: the file itself and
    inputs the verification will also use (dynamic sizes: batch 2, others 1)."""
    from shipyard.data.random import random_feeds
    from shipyard.formats import torch_export

    sig = torch_export.signature(src)
    feeds = opts.example_feeds or random_feeds(sig, seed=0, batch=2, shapes=opts.input_shape or None)
    data = src.in_memory()
    path = src.path.resolve()
    if data is not None:  # an encrypted program, decrypted in memory: the worker reads a file
        path = work / "program.pt2"
        path.write_bytes(data)
    names = [s.name for s in sig.inputs]
    return path, [_identifier(n, i) for i, n in enumerate(names)], [np.asarray(feeds[n]) for n in names]


def _output_names(src: Model, program: Path) -> list[str]:
    """The names the outputs get: a ``.pt2``'s own, else ``output`` / ``output_N`` as the ONNX export names them."""
    torch = require("torch", "Reading a torch.export program")
    if src.format == "torch-export":
        from shipyard.formats import torch_export

        names = [s.name for s in torch_export.signature(src).outputs]
    else:
        count = len(torch.export.load(str(program)).graph_signature.user_outputs)
        names = ["output"] if count == 1 else [f"output_{i}" for i in range(count)]
    return [_identifier(n, i, "output") for i, n in enumerate(names)]


def to_tflite(src: Model, out: Path, opts: ConvertOptions) -> Model:
    """A ``package.module:factory`` or ``.pt2`` source to TFLite with litert-torch."""
    python = _require_python()
    with tempfile.TemporaryDirectory(prefix="shipyard-litert-torch-") as tmp:
        work = Path(tmp)
        if src.format == "torch-export":
            program, names, arrays = _export_program(src, opts, work)
        else:
            program, names, arrays = _module_program(src, opts, work)
        np.savez(work / "inputs.npz", **dict(zip(names, arrays)))
        request = {"program": str(program), "inputs": str(work / "inputs.npz"), "names": names,
                   "outputs": _output_names(src, program), "output": str(work / "model.tflite")}
        (work / "request.json").write_text(json.dumps(request))
        guard.stage(f"litert-torch: converting {src.path.name} (in {python.parent.parent})")
        start = time.perf_counter()
        try:
            proc = subprocess.run([str(python), "-I", str(WORKER), str(work / "request.json"), str(work / "result.json")],
                                  check=False, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=work, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise ConversionError(f"litert-torch did not finish within {TIMEOUT_S} s") from exc
        result_file = work / "result.json"
        result = json.loads(result_file.read_text()) if result_file.exists() else None
        if result is None or not result.get("ok"):
            text = result["error"] if result else (proc.stderr.strip()[-3000:] or f"exit status {proc.returncode}")
            raise ConversionError(f"litert-torch could not convert {src.path}:\n  " + "\n  ".join(text.splitlines()),
                                  hint="litert-torch lowers what torch.export captures to TFLite builtins; "
                                       "the ONNX route may take the module: --via onnx2tf")
        from shipyard.convert.onnx_tf import check_builtin_ops

        check_builtin_ops(work / "model.tflite", "litert-torch")
        from shipyard.convert.tf_edges import DEFAULT_SIGNATURE, keep_tflite_names

        # the tensors named as the signature (serving_default_x -> x), as the other TFLite routes do
        with all_output_silenced():  # TensorFlow's banner
            flatbuffer = keep_tflite_names((work / "model.tflite").read_bytes(), DEFAULT_SIGNATURE, names,
                                           request["outputs"])
        with atomic_path(out) as dst:
            dst.write_bytes(flatbuffer)
    if opts.via is None:
        opts.note("litert-torch is the default PyTorch -> TFLite route: in benchmarks/torch_to_tflite.py its models "
                  "run 15-33% faster in LiteRT and are up to 17% smaller than through ONNX and onnx2tf, at the same "
                  "error; --via onnx2tf gives channels-last (NHWC) inputs instead")
    opts.note(f"converted by litert-torch {result.get('litert_torch', '')} in its own environment "
              f"({time.perf_counter() - start:.1f} s) from torch.export with inputs "
              f"{', '.join(f'{n} {list(a.shape)}' for n, a in zip(names, arrays))}; layout kept as in PyTorch")
    return Model("tflite", out)
