"""Conversion edges from PyTorch: TorchScript archives and ``package.module:factory`` modules."""
from __future__ import annotations

import importlib
import re
import sys
import warnings
from pathlib import Path

from shipyard.atomic import atomic_path
from shipyard.convert.options import ConvertOptions
from shipyard.deps import native_output_silenced, require
from shipyard.errors import ConversionError, InputError, UsageError
from shipyard.model import Model
from shipyard.report.numbers import a as _a

FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_factory(spec: str) -> bool:
    return bool(FACTORY.match(spec)) and not Path(spec).exists()


def load_factory(spec: str, weights: Path | None = None):
    """Import ``package.module:factory`` (the current directory is importable), call it, and
    load ``weights`` (a state_dict or a checkpoint holding one) into the module it returns."""
    torch = require("torch", "Loading a PyTorch module")
    module_name, _, attr = spec.partition(":")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"cannot import {spec}: {exc}", hint="give package.module:callable that returns an nn.Module") from exc
    try:
        module = factory() if not isinstance(factory, torch.nn.Module) else factory
    except Exception as exc:  # the user's code may raise anything
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise UsageError(f"{spec}() raised {type(exc).__name__}: {first}",
                         hint="the factory must build the module with no arguments") from exc
    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"{spec} returned {type(module).__name__}, not a torch.nn.Module")
    if weights is not None:
        load_weights(module, weights)
    return module.eval()


def load_weights(module, path: Path) -> None:
    """A state_dict (or a checkpoint with one under 'state_dict'/'model'/'model_state_dict') into
    ``module``, strictly: every parameter and buffer must be there with its shape."""
    from shipyard.formats import torch_checkpoint
    from shipyard.sniff import open_model

    model = open_model(path)
    if model.format != "torch-checkpoint":
        raise UsageError(f"--weights {path}: {_a(model.format)} model, not a state_dict or checkpoint")
    state = torch_checkpoint.state_dict_of(model)
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        lines = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        raise InputError(f"--weights {path} does not fit the module: {'; '.join(lines[:3]) or str(exc)[:300]}") from exc
    if result.missing_keys or result.unexpected_keys:
        parts = ([f"missing {', '.join(result.missing_keys[:5])}"] if result.missing_keys else []) + \
                ([f"unexpected {', '.join(result.unexpected_keys[:5])}"] if result.unexpected_keys else [])
        raise InputError(f"--weights {path} does not fit the module: {'; '.join(parts)}",
                         hint="'shipyard inspect' lists the checkpoint's tensor names")


def example_inputs(opts: ConvertOptions, names: list[str]):
    """(input names, example arguments): the user's --inputs when given (scalars stay Python
    numbers, as TorchScript's ``int``/``float`` arguments need), else random tensors of --input-shape."""
    torch = require("torch", "Tracing a PyTorch module")
    if opts.example_feeds:
        missing = [n for n in names if n not in opts.example_feeds]
        if missing:
            raise InputError(f"--inputs has no value for argument(s) {', '.join(missing)} of forward({', '.join(names)})")
        values = [opts.example_feeds[n] for n in names]
        return names, tuple(v.item() if v.ndim == 0 else torch.from_numpy(v) for v in values)
    if not opts.input_shape:
        raise InputError("a PyTorch source needs its input shape", hint="add --input-shape 1,3,224,224 (or NAME=1,3,224,224)")
    shapes = list(opts.input_shape.values())
    if len(shapes) < len(names):  # the first arguments; the others keep their defaults
        names = names[:len(shapes)]
    elif len(shapes) != len(names):
        names = [f"input_{i}" if len(shapes) > 1 else "input" for i in range(len(shapes))]
    gen = torch.Generator().manual_seed(0)
    return names, tuple(torch.randn(*s, generator=gen) for s in shapes)


def _module(src: Model, opts: ConvertOptions):
    if src.format == "torch-module":
        return load_factory(str(src.path), opts.weights)
    from shipyard.formats import torchscript

    return torchscript.load(src)


def _input_names(src: Model, module) -> list[str]:
    try:
        return [a.name for a in module.forward.schema.arguments if a.name != "self"]
    except AttributeError:
        import inspect

        params = inspect.signature(module.forward).parameters.values()
        return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)] or ["input"]


def dynamic_axes(opts: ConvertOptions, args: dict, tensor_names: list[str], out_names: list[str]) -> dict:
    """``torch.onnx.export``'s dynamic_axes: the batch axis of every input and output, and the
    input axes the user named with ``--dynamic NAME:AXES`` (the exporter carries them on to the
    outputs they reach)."""
    dynamic: dict[str, dict[int, str]] = {n: {0: "batch"} for n in tensor_names + out_names}
    if "" in opts.dynamic:  # axes given without a name: the module's only tensor input
        if len(tensor_names) != 1:
            raise UsageError("--dynamic without a name needs a module with one tensor input",
                             hint=f"name the input: {', '.join(f'{n}:AXES' for n in tensor_names)}")
        opts.dynamic = {tensor_names[0]: opts.dynamic[""], **{k: v for k, v in opts.dynamic.items() if k}}
    for name, axes in opts.dynamic.items():
        if name not in tensor_names:
            raise UsageError(f"--dynamic {name}:...: '{name}' is not a tensor input of the module",
                             hint=f"its tensor inputs: {', '.join(tensor_names) or 'none'}")
        rank = args[name].dim()
        for axis in axes:
            if not -rank <= axis < rank:
                raise UsageError(f"--dynamic {name}: axis {axis} is out of range for a rank-{rank} input")
            axis %= rank
            dynamic[name][axis] = "batch" if axis == 0 else f"{name}_dim{axis}"
    return dynamic


DYNAMO_MIN_OPSET = 18


def _first_cause(exc: BaseException) -> str:
    """The innermost cause of an exporter failure, on one line (the dynamo exporter wraps the
    real reason, e.g. torch.export's, in a 'Failed to export the model' banner)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(exc).splitlines()]
    text = next((line for line in lines if line), type(exc).__name__)
    return f"{type(exc).__name__}: {text}"[:300]


def _dynamic_shapes(args: tuple, names: list[str], dynamic: dict, torch) -> tuple:
    """``dynamic_axes`` in the dynamo exporter's form: one ``Dim`` per distinct axis name, so
    the exported dimensions keep the names the TorchScript exporter gives them."""
    dims: dict[str, object] = {}
    shapes = []
    for name, arg in zip(names, args):
        if not isinstance(arg, torch.Tensor):
            shapes.append(None)
            continue
        axes = dynamic.get(name, {})
        shapes.append({axis: dims.setdefault(label, torch.export.Dim(label)) for axis, label in axes.items()})
    return tuple(shapes)


def _export_dynamo(module, args, path: Path, names, tensor_names, out_names, dynamic, opts: ConvertOptions, torch):
    opset = max(opts.opset, DYNAMO_MIN_OPSET)
    dynamic_shapes = _dynamic_shapes(args, names, dynamic, torch) if dynamic is not None else None
    torch.onnx.export(module, args, str(path), input_names=tensor_names, output_names=out_names,
                      dynamic_shapes=dynamic_shapes, opset_version=opset, dynamo=True, external_data=False,
                      verbose=False, optimize=True)
    return opset


def _export(module, args, path: Path, names, tensor_names, out_names, dynamic, opts: ConvertOptions) -> str:
    """Export with the dynamo exporter (``torch.export``, opset 18+) and fall back to the
    TorchScript exporter when it fails; returns a note saying which one wrote the file and why."""
    torch = require("torch", "Exporting to ONNX")
    if isinstance(module, torch.jit.ScriptModule):
        why = "the dynamo exporter does not take TorchScript (ScriptModule) programs"
    else:
        try:
            with warnings.catch_warnings(), native_output_silenced(1, 2):
                warnings.simplefilter("ignore")
                opset = _export_dynamo(module, args, path, names, tensor_names, out_names, dynamic, opts, torch)
            return f"exported by the dynamo exporter (torch.export, opset {opset})"
        except Exception as exc:  # noqa: BLE001 - any failure of the new exporter falls back to the old one
            why = f"the dynamo exporter failed ({_first_cause(exc)})"
            path.unlink(missing_ok=True)
    try:
        with warnings.catch_warnings(), native_output_silenced(1, 2):
            warnings.simplefilter("ignore")
            # dynamo=False: the TorchScript exporter writes one self-contained file.
            torch.onnx.export(module, args, str(path), input_names=tensor_names, output_names=out_names,
                              dynamic_axes=dynamic, opset_version=opts.opset, dynamo=False)
    except (RuntimeError, TypeError, ValueError) as exc:
        from shipyard.errors import engine_message

        raise ConversionError(f"torch.onnx.export failed: {engine_message(exc)}",
                              hint=f"this was the TorchScript exporter: {why}") from exc
    return f"exported by the TorchScript exporter (opset {opts.opset}): {why}"


def to_onnx(src: Model, out: Path, opts: ConvertOptions) -> Model:
    torch = require("torch", "Exporting to ONNX")
    module = _module(src, opts)
    names, args = example_inputs(opts, _input_names(src, module))
    try:
        with torch.no_grad():
            sample = module(*args)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise InputError(f"the module does not run on the example inputs: {str(exc).strip().splitlines()[0][:300]}",
                         hint="give real inputs with --inputs NAME=FILE.npy (NAME=NUMBER for int/float arguments)") from exc
    tensor_names = [n for n, a in zip(names, args) if isinstance(a, torch.Tensor)]
    n_out = len(sample) if isinstance(sample, (list, tuple)) else 1
    out_names = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
    dynamic = dynamic_axes(opts, dict(zip(names, args)), tensor_names, out_names)
    with atomic_path(out) as tmp:
        how = _export(module, args, tmp, names, tensor_names, out_names, dynamic, opts)
    opts.note(how)
    named = [f"{n}[{', '.join(str(a) for a in sorted(axes))}]" for n, axes in dynamic.items() if n in tensor_names]
    opts.note(f"exported with example inputs {[tuple(a.shape) if isinstance(a, torch.Tensor) else a for a in args]}; "
              f"dynamic axes: {', '.join(named)}")
    return Model("onnx", out)


def program_to_onnx(src: Model, out: Path, opts: ConvertOptions) -> Model:
    """A ``torch.export`` program (``.pt2``) to ONNX with the dynamo exporter: the program is
    already captured, so its own dynamic dimensions carry over and no example input is needed."""
    torch = require("torch", "Exporting to ONNX")
    from shipyard.formats import torch_export

    program = torch_export.load(src)
    sig = torch_export.signature_of(program)
    opset = max(opts.opset, DYNAMO_MIN_OPSET)
    with atomic_path(out) as tmp:
        try:
            with warnings.catch_warnings(), native_output_silenced(1, 2):
                warnings.simplefilter("ignore")
                torch.onnx.export(program, (), str(tmp), input_names=[s.name for s in sig.inputs],
                                  output_names=[s.name for s in sig.outputs], opset_version=opset, dynamo=True,
                                  external_data=False, verbose=False, optimize=True)
        except Exception as exc:  # the exporter raises many kinds
            raise ConversionError(f"the dynamo ONNX exporter failed on {src.path}: {_first_cause(exc)}") from exc
    opts.note(f"exported by the dynamo exporter (the torch.export program as saved, opset {opset})")
    return Model("onnx", out)


def to_torchscript(src: Model, out: Path, opts: ConvertOptions) -> Model:
    torch = require("torch", "Tracing a PyTorch module")
    module = _module(src, opts)
    _, args = example_inputs(opts, _input_names(src, module))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module, args)
    except (RuntimeError, TypeError) as exc:
        raise ConversionError(f"torch.jit.trace failed: {str(exc).strip().splitlines()[0][:300]}") from exc
    with atomic_path(out) as tmp:
        traced.save(str(tmp))
    return Model("torchscript", out)
