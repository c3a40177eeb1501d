"""LiteRT's own op profiler, through the C API of the ``libLiteRt.so`` that ai-edge-litert ships.

The Python ``Interpreter`` and ``CompiledModel`` expose no profiler, but the library exports
LiteRT's C API (``LiteRtCreateCompiledModel``, ``LiteRtCompiledModelGetProfiler``,
``LiteRtGetProfileSummary``, ...). Profiling is switched on the way LiteRT's SDK does it: an
opaque option ``runtime_options_string`` holding ``enable_profiling = true``; thread count is
the ``xnnpack`` option ``num_threads = N``. The summary is TFLite's profile summarizer table
(what ``benchmark_model --enable_op_profiling`` prints): one row per executed node, XNNPACK's
own operators (``Convolution (NHWC, F32) IGEMM``) where the delegate took the graph.

No header ships with the wheel, so the few structures passed by value are handled as opaque
blobs; the one field read from them (the dimensions of a ``LiteRtRankedTensorType``: element
type, then a 32-bit word holding the rank in its low 7 bits, then up to 8 int32 dimensions) is
checked against the model's own signature before use, and anything unexpected is an error
naming what failed, never a guess.
"""
from __future__ import annotations

import ctypes
import os
import re

import numpy as np

from shipyard.errors import ShipyardError

_P = ctypes.c_void_p
_FREE = ctypes.CFUNCTYPE(None, _P)
_TYPE_BYTES = 512     # room for a LiteRtRankedTensorType (about 72 bytes), handled as a blob
_ALIGN = 64           # LiteRT's host-memory alignment
_MAX_RANK = 8


class LiteRtProfileError(ShipyardError):
    pass


def _library():
    import ai_edge_litert

    path = os.path.join(os.path.dirname(ai_edge_litert.__file__), "libLiteRt.so")
    if not os.path.exists(path):
        raise LiteRtProfileError(f"ai-edge-litert has no libLiteRt.so at {path}: no LiteRT op profiler")
    return ctypes.CDLL(path)


def _check(status: int, what: str) -> None:
    if status != 0:
        raise LiteRtProfileError(f"LiteRT's C API failed at {what} (LiteRtStatus {status})")


class _Blob:
    """A LiteRtRankedTensorType as bytes, with its dimensions readable and writable."""

    def __init__(self):
        self.raw = ctypes.create_string_buffer(_TYPE_BYTES)

    def dims(self) -> list[int]:
        words = np.frombuffer(self.raw.raw[: 8 + 4 * _MAX_RANK], np.int32)
        rank = int(words[1]) & 0x7F
        if rank > _MAX_RANK:
            raise LiteRtProfileError(f"unexpected LiteRtRankedTensorType layout (rank {rank})")
        return [int(d) for d in words[2: 2 + rank]]

    def set_dims(self, dims: list[int]) -> None:
        words = np.frombuffer(self.raw.raw[: 8 + 4 * _MAX_RANK], np.int32).copy()
        words[2: 2 + len(dims)] = dims
        ctypes.memmove(self.raw, words.tobytes(), words.nbytes)


def _aligned(nbytes: int) -> tuple[np.ndarray, int]:
    mem = np.zeros(max(nbytes, 1) + _ALIGN, np.uint8)
    return mem, (mem.ctypes.data + _ALIGN - 1) // _ALIGN * _ALIGN


def profile_summary(path: str, feeds: dict[str, np.ndarray], runs: int, threads: int | None = None,
                    warmup: int = 3) -> str:
    """TFLite's profile summary of ``runs`` runs of the model on ``feeds`` (after ``warmup``).
    LiteRT logs every accelerator it looks for on stderr: that goes to a file, shown only with
    an error."""
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            return _profile(path, feeds, runs, threads, warmup)
        except LiteRtProfileError as exc:
            log.seek(0)
            said = [line for line in log.read().decode("utf-8", "replace").splitlines()
                    if line.startswith(("ERROR", "E "))]
            if said:
                exc.message += " (LiteRT: " + "; ".join(said[-3:]) + ")"
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _profile(path: str, feeds: dict[str, np.ndarray], runs: int, threads: int | None, warmup: int) -> str:
    lib = _library()
    libc = ctypes.CDLL(None)
    libc.strdup.restype = _P
    env, model, options, compiled = _P(), _P(), _P(), _P()
    keep: list = []  # host memory and callbacks the library points into
    buffers: list[_P] = []
    try:
        _check(lib.LiteRtCreateEnvironment(0, None, ctypes.byref(env)), "LiteRtCreateEnvironment")
        _check(lib.LiteRtCreateModelFromFile(env, os.fsencode(path), ctypes.byref(model)), "LiteRtCreateModelFromFile")
        _check(lib.LiteRtCreateOptions(ctypes.byref(options)), "LiteRtCreateOptions")
        _check(lib.LiteRtSetOptionsHardwareAccelerators(options, 1), "LiteRtSetOptionsHardwareAccelerators(CPU)")
        free = _FREE(libc.free)
        keep.append(free)
        settings = [("runtime_options_string", "enable_profiling = true\n")]
        if threads:
            settings.append(("xnnpack", f"num_threads = {int(threads)}\n"))
        for identifier, toml in settings:
            opaque = _P()
            payload = libc.strdup(toml.encode())
            _check(lib.LiteRtCreateOpaqueOptions(identifier.encode(), _P(payload), free, ctypes.byref(opaque)),
                   f"LiteRtCreateOpaqueOptions({identifier})")
            _check(lib.LiteRtAddOpaqueOptions(options, opaque), f"LiteRtAddOpaqueOptions({identifier})")
        _check(lib.LiteRtCreateCompiledModel(env, model, options, ctypes.byref(compiled)), "LiteRtCreateCompiledModel")
        signature = _P()
        _check(lib.LiteRtGetModelSignature(model, ctypes.c_size_t(0), ctypes.byref(signature)), "LiteRtGetModelSignature")
        inputs = _tensor_buffers(lib, compiled, signature, feeds, keep, buffers)
        outputs = _tensor_buffers(lib, compiled, signature, None, keep, buffers,
                                  batch=next(iter(feeds.values())).shape[0] if feeds else 1)

        def run() -> None:
            _check(lib.LiteRtRunCompiledModel(compiled, ctypes.c_size_t(0), ctypes.c_size_t(len(inputs)), inputs,
                                              ctypes.c_size_t(len(outputs)), outputs), "LiteRtRunCompiledModel")

        for _ in range(warmup):
            run()
        profiler = _P()
        _check(lib.LiteRtCompiledModelGetProfiler(compiled, ctypes.byref(profiler)), "LiteRtCompiledModelGetProfiler")
        if not profiler.value:
            raise LiteRtProfileError("LiteRT made no profiler for the compiled model (enable_profiling was not honoured)")
        _check(lib.LiteRtResetProfiler(profiler), "LiteRtResetProfiler")
        _check(lib.LiteRtStartProfiler(profiler), "LiteRtStartProfiler")
        for _ in range(runs):
            run()
        _check(lib.LiteRtStopProfiler(profiler), "LiteRtStopProfiler")
        summary = _P()
        _check(lib.LiteRtGetProfileSummary(profiler, compiled, ctypes.byref(summary)), "LiteRtGetProfileSummary")
        try:
            return ctypes.string_at(summary).decode("utf-8", "replace")
        finally:
            libc.free(summary)
    finally:
        for b in buffers:
            lib.LiteRtDestroyTensorBuffer(b)
        if compiled.value:
            lib.LiteRtDestroyCompiledModel(compiled)
        # the options belong to the compiled model once it exists (destroying them again crashes)
        if options.value and not compiled.value:
            lib.LiteRtDestroyOptions(options)
        if model.value:
            lib.LiteRtDestroyModel(model)
        if env.value:
            lib.LiteRtDestroyEnvironment(env)


def _tensor_buffers(lib, compiled, signature, feeds: dict[str, np.ndarray] | None, keep: list, made: list,
                    batch: int = 1):
    """Host-memory tensor buffers for the signature's inputs (holding ``feeds``) or outputs."""
    side = "Input" if feeds is not None else "Output"
    count = ctypes.c_size_t()
    _check(getattr(lib, f"LiteRtGetNumSignature{side}s")(signature, ctypes.byref(count)), f"LiteRtGetNumSignature{side}s")
    array = (_P * count.value)()
    for i in range(count.value):
        name, tensor, blob = ctypes.c_char_p(), _P(), _Blob()
        _check(getattr(lib, f"LiteRtGetSignature{side}Name")(signature, ctypes.c_size_t(i), ctypes.byref(name)),
               f"LiteRtGetSignature{side}Name")
        _check(getattr(lib, f"LiteRtGetSignature{side}TensorByIndex")(signature, ctypes.c_size_t(i), ctypes.byref(tensor)),
               f"LiteRtGetSignature{side}TensorByIndex")
        _check(lib.LiteRtGetRankedTensorType(tensor, blob.raw), "LiteRtGetRankedTensorType")
        dims = blob.dims()
        if feeds is not None:
            key = name.value.decode()
            # the Interpreter names tensors (serving_default_image:0), a signature its inputs (image)
            value = next((v for k, v in feeds.items()
                          if key in (k, k.split(":")[0], k.split(":")[0].removeprefix("serving_default_"))), None)
            if value is None and len(feeds) == count.value:
                value = list(feeds.values())[i]
            if value is None:
                raise LiteRtProfileError(f"no data for LiteRT input '{key}' (given: {', '.join(feeds)})")
            if len(value.shape) != len(dims) or any(d >= 0 and d != s for d, s in zip(dims, value.shape)):
                raise LiteRtProfileError(f"input '{key}': data of shape {list(value.shape)} for a tensor of {dims}")
            if list(value.shape) != [max(d, 1) for d in dims]:
                shape = (ctypes.c_int * len(value.shape))(*value.shape)
                _check(lib.LiteRtCompiledModelResizeInputTensor(compiled, ctypes.c_size_t(0), ctypes.c_size_t(i), shape,
                                                                ctypes.c_size_t(len(value.shape))),
                       "LiteRtCompiledModelResizeInputTensor")
            dims = list(value.shape)
            data = np.ascontiguousarray(value)
            mem, address = _aligned(data.nbytes)
            ctypes.memmove(address, data.ctypes.data, data.nbytes)
            nbytes = data.nbytes
        else:
            dims = [batch if d < 0 and k == 0 else max(d, 1) for k, d in enumerate(dims)]
            nbytes = int(np.prod(dims)) * 16  # room for the widest element type (complex128)
            mem, address = _aligned(nbytes)
        blob.set_dims(dims)
        keep += [mem, blob]
        buffer = _P()
        _check(lib.LiteRtCreateTensorBufferFromHostMemory(blob.raw, _P(address), ctypes.c_size_t(nbytes), None,
                                                          ctypes.byref(buffer)), "LiteRtCreateTensorBufferFromHostMemory")
        made.append(buffer)
        array[i] = buffer
    return array


_ROW = re.compile(r"^\s*(?P<op>\S.*?)\s{2,}(?P<count>\d+)\s+(?P<ms>[\d.]+)\s+(?P<pct>[\d.]+)%\s+[\d.]+%\s+[\d.]+\s+(?P<calls>\d+)\s*$")
# "Delegate Statistics": XNNPACK's operators, timed to 0.01 us (the node table rounds to 1 us)
_DELEGATE = re.compile(r"^(?P<op>\S.*?)\s{2,}(?P<count>\d+)\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+(?P<total>[\d.]+)\s*$")


def op_rows(summary: str, runs: int) -> list[tuple[str, float, int, float]]:
    """``(op type, ms per run, calls per run, share)``: XNNPACK's operators from the summary's
    "Delegate Statistics" when the delegate ran the graph, else its "Summary by node type"."""
    delegated = summary.split("Delegate Statistics", 1)
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    if len(delegated) == 2:
        for line in delegated[1].splitlines()[2:]:
            m = _DELEGATE.match(line)
            if not m:
                if line.startswith("="):
                    break
                continue
            op = m["op"].removeprefix("Delegate/")
            totals[op] = totals.get(op, 0.0) + float(m["total"])
            counts[op] = counts.get(op, 0) + int(m["count"])
    if totals:
        whole = sum(totals.values()) or 1.0
        return [(op, us / runs / 1e3, counts[op] // max(runs, 1), us / whole) for op, us in totals.items()]
    part = summary.split("Summary by node type", 1)
    if len(part) < 2:
        raise LiteRtProfileError("LiteRT's profile summary has no 'Summary by node type' table")
    rows = []
    for line in part[1].splitlines()[1:]:
        if line.startswith("="):
            break
        m = _ROW.match(line)
        if m:
            rows.append((m["op"].removeprefix("Delegate/"), float(m["ms"]), int(m["count"]), float(m["pct"]) / 100))
    if not rows:
        raise LiteRtProfileError("LiteRT's profile summary listed no op")
    return rows
