"""The result of ``shipyard inspect``: one object for every format, printable and JSON-able."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from shipyard.model import TensorSpec


@dataclass
class Summary:
    format: str
    path: str
    size_bytes: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    ops: dict[str, int]
    params: int
    param_bytes: dict[str, int] = field(default_factory=dict)
    flops: int | None = None
    flops_by_op: dict[str, int] = field(default_factory=dict)
    producer: str | None = None
    version: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def node_count(self) -> int:
        return sum(self.ops.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "path": self.path,
            "size_bytes": self.size_bytes,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "ops": self.ops,
            "node_count": self.node_count,
            "params": self.params,
            "param_bytes": self.param_bytes,
            "flops": self.flops,
            "flops_by_op": self.flops_by_op,
            "producer": self.producer,
            "version": self.version,
            "metadata": self.metadata,
            "details": self.details,
        }


def histogram(op_types) -> dict[str, int]:
    """Op-type counts sorted by count (descending), then name."""
    counts = Counter(op_types)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def add_param(param_bytes: dict[str, int], dtype: str, nbytes: int) -> None:
    param_bytes[dtype] = param_bytes.get(dtype, 0) + int(nbytes)
