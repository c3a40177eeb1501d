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
        raise UsageError(f"--weights {path}: a {model.format} model, not a state_dict or checkpoint")
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
    if len(shapes) != len(names):
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

        return [p for p in inspect.signature(module.forward).parameters][: 1]


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
        try:
            with warnings.catch_warnings(), native_output_silenced(1, 2):
                warnings.simplefilter("ignore")
                # dynamo=False: the TorchScript exporter writes one self-contained file (opset 17);
                # the dynamo exporter splits weights into a .onnx.data file.
                torch.onnx.export(module, args, str(tmp), input_names=tensor_names, output_names=out_names,
                                  dynamic_axes=dynamic, opset_version=opts.opset, dynamo=False)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise ConversionError(f"torch.onnx.export failed: {str(exc).strip().splitlines()[0][:300]}") from exc
    named = [f"{n}[{', '.join(str(a) for a in sorted(axes))}]" for n, axes in dynamic.items() if n in tensor_names]
    opts.note(f"exported with example inputs {[tuple(a.shape) if isinstance(a, torch.Tensor) else a for a in args]}; "
              f"dynamic axes: {', '.join(named)}")
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
