"""What ``ship`` made: one record per artifact, written to ``manifest.json``."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shipyard.atomic import atomic_path
from shipyard.formats import files_of


def sha256(path: Path, fmt: str | None = None) -> str:
    """Digest of a model's files in name order (one file, a folder's such as TF.js or SavedModel,
    an IR's .xml and .bin)."""
    h = hashlib.sha256()
    files = files_of(path, fmt)
    base = path if path.is_dir() else path.parent
    for f in files:
        if path.is_dir() or len(files) > 1:
            h.update(str(f.relative_to(base)).encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def size(path: Path, fmt: str | None = None) -> int:
    return sum(p.stat().st_size for p in files_of(path, fmt))


@dataclass
class Artifact:
    name: str                     # e.g. "onnx", "onnx-int8"
    format: str
    path: str                     # relative to the distribution directory
    quantization: str = "float32"
    sha256: str = ""
    size_bytes: int = 0
    signature: dict = field(default_factory=dict)
    verification: dict | None = None
    accuracy: float | None = None
    latency_ms: dict | None = None
    ops_file: str | None = None
    notes: list[str] = field(default_factory=list)
    status: str = "shipped"       # "rejected": missed the accuracy budget, not in the distribution;
                                  # "degraded": missed it but kept (--allow-degraded)
    failures: list[str] = field(default_factory=list)
    sensitivity: dict | None = None  # quantized: the layers quantization hurts most (ship/sensitivity.py)

    def worst(self, key: str, pick=min):
        """The worst value of one figure over every verified output (None when not verified)."""
        outputs = (self.verification or {}).get("outputs", {})
        values = [o[key] for o in outputs.values() if isinstance(o.get(key), (int, float))]
        return pick(values) if values else None


@dataclass
class Manifest:
    source: dict
    steps: list[dict] = field(default_factory=list)
    artifacts: list[Artifact] = field(default_factory=list)
    failed: dict | None = None
    reference: dict = field(default_factory=dict)
    rejected: list[Artifact] = field(default_factory=list)   # quantized artifacts that missed the budget
    budget: dict | None = None
    optimize: dict | None = None     # ship --optimize: every candidate, the chosen one and why
    environment: dict = field(default_factory=lambda: environment())  # what produced and measured it
    warnings: list[str] = field(default_factory=list)   # what a reader must know before trusting the figures

    def to_json(self) -> dict[str, Any]:
        return {
            "shipyard": __import__("shipyard").__version__,
            "source": self.source,
            "reference": self.reference,
            "steps": self.steps,
            "budget": self.budget,
            "artifacts": [asdict(a) for a in self.artifacts],
            "rejected": [asdict(a) for a in self.rejected],
            "optimize": self.optimize,
            "environment": self.environment,
            "warnings": self.warnings,
            "complete": self.failed is None,
            "failed": self.failed,
        }

    def write(self, out_dir: Path) -> Path:
        path = out_dir / "manifest.json"
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_json(), indent=2, default=str))
        return path


# The packages whose versions decide what an artifact computes and how fast (read from their
# metadata, nothing imported).
_PACKAGES = ("numpy", "onnx", "onnxruntime", "tensorflow", "ai-edge-litert", "torch", "openvino", "tf2onnx", "onnx2tf")


def environment() -> dict:
    """Python, the machine and the versions of the engines and converters installed."""
    import os
    import platform
    from importlib import metadata

    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {"python": platform.python_version(), "platform": platform.platform(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "packages": versions}
