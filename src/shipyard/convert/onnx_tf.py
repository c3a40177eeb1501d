"""Conversion edges from ONNX to TensorFlow formats (TFLite, SavedModel) through onnx2tf.

onnx2tf pins TensorFlow 2.19 and protobuf 4 exactly, but its code runs under the TF 2.21 /
protobuf 7 stack here (measured: docs/convert.md), so it is installed ``--no-deps`` into the
same environment (scripts/setup.d/60-onnx2tf.sh) and called in-process. Around the call:

- the ONNX model is simplified with onnxslim first (onnx2tf would shell out to onnxsim, which
  is not installed): folding the shape arithmetic of a transformer avoids a SCATTER_ND that
  fails at run time in the TFLite onnx2tf writes;
- onnx2tf downloads calibration images from the web for 4-D image inputs unless a file of that
  name is in the working directory: it runs in a scratch directory holding generated samples;
- ``Erf`` (GELU) is replaced by builtin ops (it would become a Flex op the pip LiteRT cannot
  run), LSTM/GRU/RNN are unrolled (TF 2.21's converter rejects onnx2tf's squeeze otherwise),
  and any op still outside LiteRT's builtins fails the conversion, naming it;
- 4-D and 5-D inputs become channels-last (NHWC, what TFLite and phones expect; the
  verification core transposes feeds and outputs), other inputs keep their layout.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from shipyard import guard
from shipyard.atomic import atomic_path
from shipyard.convert.options import ConvertOptions
from shipyard.deps import all_output_silenced, require
from shipyard.errors import ConversionError, MissingDependencyError, UnsupportedError
from shipyard.model import Model

# The file onnx2tf looks for in the working directory before it downloads one
# (onnx2tf.utils.common_functions.download_test_image_data).
SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
RNN_OPS = {"LSTM", "GRU", "RNN"}
CHANNELS_LAST_RANKS = (4, 5)


def _onnx2tf_ops_dir() -> Path:
    """onnx2tf's op modules (one file per supported ONNX op), found without importing onnx2tf
    (its import pulls TensorFlow)."""
    spec = importlib.util.find_spec("onnx2tf")
    if spec is None or not spec.submodule_search_locations:
        error = MissingDependencyError("onnx2tf", "all", "Converting ONNX to TensorFlow formats")
        error.hint = "run scripts/setup (scripts/setup.d/60-onnx2tf.sh installs onnx2tf --no-deps, pinned)"
        raise error
    return Path(spec.submodule_search_locations[0]) / "ops"


def unsupported_nodes(proto) -> dict[str, list[str]]:
    """ONNX op types onnx2tf has no converter for -> the names of the nodes using them."""
    known = {p.stem for p in _onnx2tf_ops_dir().glob("*.py")}
    missing: dict[str, list[str]] = {}
    for node in proto.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in known:
            op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            missing.setdefault(op, []).append(node.name or "(unnamed)")
    return missing


def _input_ranks(proto) -> dict[str, int]:
    inits = {i.name for i in proto.graph.initializer}
    return {i.name: len(i.type.tensor_type.shape.dim) for i in proto.graph.input
            if i.name not in inits and i.type.HasField("tensor_type")}


def _simplified(src: Model, opts: ConvertOptions):
    """The source proto, simplified by onnxslim when it is installed (shape arithmetic folded)."""
    import onnx

    try:  # an encrypted model is decrypted in memory; a plain one may keep weights in external files
        proto = onnx.load_model_from_string(src.read_bytes()) if src.encrypted else onnx.load(str(src.path))
    except Exception as exc:
        raise ConversionError(f"{src.path}: cannot read the ONNX model: {str(exc).splitlines()[0][:200]}") from exc
    _unknown_dims_as_symbols(proto, opts)
    try:
        import onnxslim
    except ImportError:
        return proto
    try:
        with all_output_silenced():
            slim = onnxslim.slim(proto)
    except Exception:  # noqa: BLE001 - a model onnxslim cannot simplify converts as it is
        return proto
    if slim is None:
        return proto
    opts.note("simplified with onnxslim before onnx2tf (shape arithmetic folded)")
    return slim


def _unknown_dims_as_symbols(proto, opts: ConvertOptions) -> None:
    """Paddle's exporter writes an unknown size as ``dim_value: -1``, which TensorFlow refuses as
    a shape: make it the symbolic dimension ONNX means."""
    fixed = []
    for value in [*proto.graph.input, *proto.graph.output]:
        for i, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value < 0:
                dim.dim_param = f"{value.name}_dim{i}"
                fixed.append(value.name)
    if fixed:
        opts.note(f"dimensions declared as -1 made symbolic in {', '.join(sorted(set(fixed)))}")


_SCOPE_UNSAFE = re.compile(r"[^A-Za-z0-9_.\\/>-]")


def _scope_safe_node_names(proto) -> None:
    """Node names become TensorFlow name scopes in onnx2tf, which refuse characters such as
    ``@`` (onnxslim and Paddle use it): replace them, keeping names unique."""
    seen: set[str] = set()
    for node in proto.graph.node:
        name = _SCOPE_UNSAFE.sub("_", node.name)
        while name in seen and name:
            name += "_"
        seen.add(name)
        node.name = name


def _write_samples(work: Path) -> None:
    """Generated stand-ins for onnx2tf's test images (it only runs them through both models to
    choose transpositions): with the file present it never reaches for the network."""
    rng = np.random.default_rng(0)
    np.save(work / SAMPLE_FILE, rng.random((20, 128, 128, 3), dtype=np.float32))


_ERROR_LINE = re.compile(r"ERROR:\s*(.+)")


def run_onnx2tf(src: Model, opts: ConvertOptions, work: Path) -> Path:
    """Convert ``src`` with onnx2tf into ``work/out`` (SavedModel + ``*_float32.tflite``)."""
    import onnx

    proto = _simplified(src, opts)
    missing = unsupported_nodes(proto)
    if missing:
        listing = "; ".join(f"{op} (nodes: {', '.join(nodes[:3])})" for op, nodes in missing.items())
        raise UnsupportedError(f"onnx2tf has no converter for ONNX op(s): {listing}",
                               hint="replace these ops in the model (or export it with other ops), then convert again")
    _scope_safe_node_names(proto)
    ops = {n.op_type for n in proto.graph.node}
    model_file = work / "model.onnx"
    onnx.save(proto, str(model_file))
    _write_samples(work)
    keep = [name for name, rank in _input_ranks(proto).items() if rank == 3]  # onnx2tf would make them NWC
    transposed = [name for name, rank in _input_ranks(proto).items() if rank in CHANNELS_LAST_RANKS]
    kwargs = {
        "input_onnx_file_path": str(model_file), "output_folder_path": str(work / "out"),
        "not_use_onnxsim": True, "non_verbose": True, "copy_onnx_input_output_names_to_tflite": True,
        "output_signaturedefs": True, "replace_to_pseudo_operators": ["erf"],
    }
    if keep:
        kwargs["keep_ncw_or_nchw_or_ncdhw_input_names"] = keep
    if ops & RNN_OPS:
        kwargs["enable_rnn_unroll"] = True
        opts.note(f"{', '.join(sorted(ops & RNN_OPS))} unrolled over time steps (onnx2tf enable_rnn_unroll)")
    if transposed:
        opts.note(f"input(s) {', '.join(transposed)} are channels-last (NHWC) in the TensorFlow model")
    require("tensorflow", "Converting ONNX to TensorFlow formats")
    log = io.StringIO()
    here = os.getcwd()
    try:
        os.chdir(work)  # onnx2tf reads its sample file from the working directory
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), all_output_silenced(), \
                onnx2tf_globals_restored():
            require("onnx2tf", "Converting ONNX to TensorFlow formats").convert(**kwargs)
    except (Exception, SystemExit) as exc:  # onnx2tf raises anything, and sys.exit()s on some errors
        errors = _ERROR_LINE.findall(re.sub(r"\x1b\[[0-9;]*m", "", log.getvalue()))
        text = _failure(exc) if not isinstance(exc, SystemExit) else (errors[0] if errors else "onnx2tf exited")
        raise ConversionError(f"onnx2tf could not convert {src.path}: {text[:400]}",
                              hint="a static input shape (export with fixed sizes) or replacing the failing op may help; "
                                   "SHIPYARD_DEBUG=1 shows onnx2tf's traceback") from exc
    finally:
        os.chdir(here)
    return work / "out"


_ENV = ("TF_USE_LEGACY_KERAS", "TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES")


@contextlib.contextmanager
def onnx2tf_globals_restored():
    """Importing and running onnx2tf sets process globals: TF_USE_LEGACY_KERAS=1 (``tf.keras``
    becomes Keras 2 for whoever imports it next), TF op determinism (some ops then raise), the
    global random seeds. Put them back afterwards, so a conversion in a long-lived process (a
    test worker, the Python API) does not change the TensorFlow the rest of it sees."""
    import random

    from tensorflow.python.framework import config

    env = {k: os.environ.get(k) for k in _ENV}
    determinism = config.is_op_determinism_enabled()
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if not determinism and config.is_op_determinism_enabled():
            config.disable_op_determinism()
        np.random.set_state(np_state)
        random.setstate(py_state)


def _failure(exc: BaseException) -> str:
    """The reason in an onnx2tf failure, and the ONNX node where TensorFlow raised it: Keras
    wraps it as 'Exception encountered when calling layer ...', the reason on the next line and
    the node's (sanitized) name as the layer call's ``name=``."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    at = next((i for i, line in enumerate(lines) if "Exception encountered when calling layer" in line), None)
    reason = lines[at + 1] if at is not None and at + 1 < len(lines) else (lines[0] if lines else "")
    node = re.search(r"name='(?:wa/)?([^']+)'", text)
    where = f" at node '{node.group(1)}'" if node else ""
    return f"{type(exc).__name__}{where}: {re.sub(r'for .{{node .*', '', reason).strip()}"


def _converted(src: Model, opts: ConvertOptions):
    """A context: the onnx2tf output folder in a scratch directory, removed afterwards."""
    @contextlib.contextmanager
    def scope():
        work = Path(tempfile.mkdtemp(prefix="shipyard-onnx2tf-"))
        try:
            guard.stage(f"onnx2tf: converting {src.path.name}")
            yield run_onnx2tf(src, opts, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return scope()


def check_builtin_ops(path: Path, writer: str = "onnx2tf") -> None:
    """Refuse a TFLite model that needs ops outside LiteRT's builtins (Flex or custom ops)."""
    from shipyard.ops import tflite_ops

    report = tflite_ops(Model("tflite", path))
    custom = report.ops.get("custom", [])
    if custom:
        flex = [c.removeprefix("Flex") for c in custom if c.startswith("Flex")]
        other = [c for c in custom if not c.startswith("Flex")]
        what = ([f"TensorFlow op(s) {', '.join(flex)} (Flex, not in LiteRT's builtins)"] if flex else []) + \
               ([f"custom op(s) {', '.join(other)}"] if other else [])
        raise UnsupportedError(f"the TFLite model {writer} wrote needs {'; '.join(what)}",
                               hint="replace the ONNX ops that produce them; stock LiteRT runs builtin ops only")


def _source_names(src: Model, flatbuffer: bytes) -> bytes:
    """The TFLite tensors named as the ONNX inputs and outputs (onnx2tf names only the
    signature after them), so a C++ or Android program finds them by the source's names."""
    from shipyard.convert.tf_edges import DEFAULT_SIGNATURE, keep_tflite_names
    from shipyard.formats import handler

    sig = handler("onnx").signature(src)
    return keep_tflite_names(flatbuffer, DEFAULT_SIGNATURE, [s.name for s in sig.inputs], [s.name for s in sig.outputs])


def onnx_to_tflite(src: Model, out: Path, opts: ConvertOptions) -> Model:
    with _converted(src, opts) as folder:
        written = sorted(folder.glob("*_float32.tflite"))
        if not written:
            raise ConversionError(f"onnx2tf wrote no TFLite model for {src.path}")
        check_builtin_ops(written[0])
        flatbuffer = _source_names(src, written[0].read_bytes())
        with atomic_path(out) as tmp:
            tmp.write_bytes(flatbuffer)
    return Model("tflite", out)


def onnx_to_savedmodel(src: Model, out: Path, opts: ConvertOptions) -> Model:
    with _converted(src, opts) as folder:
        if not (folder / "saved_model.pb").exists():
            raise ConversionError(f"onnx2tf wrote no SavedModel for {src.path}")
        with atomic_path(out, directory=True) as tmp:
            for entry in folder.iterdir():
                if entry.suffix == ".tflite":
                    continue
                (shutil.copytree if entry.is_dir() else shutil.copyfile)(entry, tmp / entry.name)
    return Model("tf-savedmodel", out)
