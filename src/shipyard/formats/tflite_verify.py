"""A bounds-checking walk of the parts of a TFLite flatbuffer that shipyard reads.

The generated ``tflite`` classes trust every offset: on a damaged file they read past the end,
decode garbage names, or index past a vector. :func:`verify` walks the same tables first,
checking each offset, vector length, string (UTF-8) and cross-reference (opcode, tensor and
buffer indices) against the file, and raises :class:`ModelFormatError` saying what is wrong,
so the readers after it only see a consistent file.
"""
from __future__ import annotations

import struct

from shipyard.errors import ModelFormatError

# field numbers of the schema (tensorflow/lite/schema/schema.fbs)
_MODEL = {"version": 0, "operator_codes": 1, "subgraphs": 2, "description": 3, "buffers": 4, "metadata": 6,
          "signature_defs": 7}
_SUBGRAPH = {"tensors": 0, "inputs": 1, "outputs": 2, "operators": 3, "name": 4}
_TENSOR = {"shape": 0, "type": 1, "buffer": 2, "name": 3, "shape_signature": 7}
_OPERATOR = {"opcode_index": 0, "inputs": 1, "outputs": 2, "builtin_options": 4}
_OPCODE = {"custom_code": 1}
_BUFFER = {"data": 0, "offset": 1, "size": 2}
_METADATA = {"name": 0, "buffer": 1}
_SIGNATURE = {"inputs": 0, "outputs": 1, "signature_key": 2}
_TENSOR_MAP = {"name": 0}
_MAX_OPTION_FIELDS = 64


class _Bad(Exception):
    pass


class _Reader:
    def __init__(self, buf):
        self.buf = buf
        self.size = len(buf)

    def _unpack(self, fmt: str, pos: int):
        n = struct.calcsize(fmt)
        if pos < 0 or pos + n > self.size:
            raise _Bad(f"offset {pos} is outside the file")
        return struct.unpack_from(fmt, self.buf, pos)[0]

    def table(self, pos: int, what: str) -> tuple[int, int, int, int]:
        """(table position, vtable position, vtable size, table size) of the table at ``pos``."""
        if pos < 0 or pos + 4 > self.size:
            raise _Bad(f"{what}: table at {pos} is outside the file")
        vtable = pos - self._unpack("<i", pos)
        vsize = self._unpack("<H", vtable)
        if vsize < 4 or vsize % 2 or vtable + vsize > self.size:
            raise _Bad(f"{what}: malformed vtable at {vtable}")
        tsize = self._unpack("<H", vtable + 2)
        if tsize < 4 or pos + tsize > self.size:
            raise _Bad(f"{what}: table at {pos} runs past the end of the file")
        return pos, vtable, vsize, tsize

    def field(self, table: tuple[int, int, int], index: int) -> int:
        """Position of a field's value, 0 when absent."""
        pos, vtable, vsize, tsize = table
        slot = 4 + 2 * index
        if slot + 2 > vsize:
            return 0
        off = self._unpack("<H", vtable + slot)
        if off >= tsize:
            raise _Bad(f"table at {pos}: field {index} lies outside the table")
        return pos + off if off else 0

    def scalar(self, table, index: int, fmt: str, default=0):
        at = self.field(table, index)
        return self._unpack(fmt, at) if at else default

    def indirect(self, at: int) -> int:
        return at + self._unpack("<I", at)

    def vector(self, table, index: int, elem: int, what: str) -> tuple[int, int]:
        """(start, length) of a vector field; (0, 0) when absent."""
        at = self.field(table, index)
        if not at:
            return 0, 0
        start = self.indirect(at)
        n = self._unpack("<I", start)
        if start + 4 + n * elem > self.size:
            raise _Bad(f"{what}: a vector of {n} elements runs past the end of the file")
        return start + 4, n

    def ints(self, table, index: int, what: str) -> list[int]:
        start, n = self.vector(table, index, 4, what)
        return list(struct.unpack_from(f"<{n}i", self.buf, start)) if n else []

    def tables(self, table, index: int, what: str) -> list[tuple[int, int, int, int]]:
        start, n = self.vector(table, index, 4, what)
        return [self.table(self.indirect(start + 4 * i), f"{what}[{i}]") for i in range(n)]

    def string(self, table, index: int, what: str) -> str | None:
        at = self.field(table, index)
        if not at:
            return None
        start = self.indirect(at)
        n = self._unpack("<I", start)
        if start + 4 + n > self.size:
            raise _Bad(f"{what}: a string runs past the end of the file")
        try:
            return bytes(self.buf[start + 4 : start + 4 + n]).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Bad(f"{what}: not valid UTF-8 text") from exc


def verify(buf, path) -> None:
    """Raise :class:`ModelFormatError` unless ``buf`` is a TFLite model whose tables are sound."""
    try:
        _verify(_Reader(buf))
    except _Bad as exc:
        raise ModelFormatError(f"{path}: truncated or corrupt TFLite file ({exc})",
                               hint="re-convert the model; if it was copied, compare its size with the original") from exc


def _verify(r: _Reader) -> None:
    if r.size < 8:
        raise _Bad(f"{r.size} bytes is too short for a flatbuffer")
    model = r.table(r._unpack("<I", 0), "model")
    opcodes = r.tables(model, _MODEL["operator_codes"], "operator_codes")
    for i, code in enumerate(opcodes):
        r.string(code, _OPCODE["custom_code"], f"operator_codes[{i}].custom_code")
    buffers = r.tables(model, _MODEL["buffers"], "buffers")
    for i, b in enumerate(buffers):
        r.vector(b, _BUFFER["data"], 1, f"buffers[{i}].data")
        offset, size = r.scalar(b, _BUFFER["offset"], "<Q"), r.scalar(b, _BUFFER["size"], "<Q")
        if offset > 1 and offset + size > r.size:
            raise _Bad(f"buffers[{i}]: ends at byte {offset + size} but the file has {r.size} bytes")
    subgraphs = r.tables(model, _MODEL["subgraphs"], "subgraphs")
    for s, g in enumerate(subgraphs):
        where = f"subgraphs[{s}]"
        r.string(g, _SUBGRAPH["name"], f"{where}.name")
        tensors = r.tables(g, _SUBGRAPH["tensors"], f"{where}.tensors")
        for t, tensor in enumerate(tensors):
            tw = f"{where}.tensors[{t}]"
            r.string(tensor, _TENSOR["name"], f"{tw}.name")
            for key in ("shape", "shape_signature"):
                if any(d < -1 for d in r.ints(tensor, _TENSOR[key], f"{tw}.{key}")):
                    raise _Bad(f"{tw}: a negative dimension in its {key}")
            if r.scalar(tensor, _TENSOR["buffer"], "<I") >= max(len(buffers), 1):
                raise _Bad(f"{tw}: buffer index out of range ({len(buffers)} buffers)")
            r.scalar(tensor, _TENSOR["type"], "<b")
        n = len(tensors)
        for key in ("inputs", "outputs"):
            if any(not 0 <= i < n for i in r.ints(g, _SUBGRAPH[key], f"{where}.{key}")):
                raise _Bad(f"{where}.{key}: a tensor index out of range ({n} tensors)")
        for o, op in enumerate(r.tables(g, _SUBGRAPH["operators"], f"{where}.operators")):
            ow = f"{where}.operators[{o}]"
            if not 0 <= r.scalar(op, _OPERATOR["opcode_index"], "<I") < len(opcodes):
                raise _Bad(f"{ow}: operator code index out of range ({len(opcodes)} codes)")
            for key in ("inputs", "outputs"):
                if any(not -1 <= i < n for i in r.ints(op, _OPERATOR[key], f"{ow}.{key}")):
                    raise _Bad(f"{ow}.{key}: a tensor index out of range ({n} tensors)")
            at = r.field(op, _OPERATOR["builtin_options"])
            if at:
                options = r.table(r.indirect(at), f"{ow}.builtin_options")
                for f in range(min((options[2] - 4) // 2, _MAX_OPTION_FIELDS)):
                    r.field(options, f)
    if not subgraphs:
        raise _Bad("no subgraph")
    for i, m in enumerate(r.tables(model, _MODEL["metadata"], "metadata")):
        r.string(m, _METADATA["name"], f"metadata[{i}].name")
    for i, sig in enumerate(r.tables(model, _MODEL["signature_defs"], "signature_defs")):
        r.string(sig, _SIGNATURE["signature_key"], f"signature_defs[{i}].signature_key")
        for key in ("inputs", "outputs"):
            for j, entry in enumerate(r.tables(sig, _SIGNATURE[key], f"signature_defs[{i}].{key}")):
                r.string(entry, _TENSOR_MAP["name"], f"signature_defs[{i}].{key}[{j}].name")
    r.string(model, _MODEL["description"], "description")
