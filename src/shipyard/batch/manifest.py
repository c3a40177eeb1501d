"""``OUT/manifest.json``: what a batch job is (model, options, inputs), what it has produced
(one entry per finished shard: output file, sha256, examples) and how long it took.

The job's identity is a digest of the model's sha256, the options that change predictions and
the input paths. A run finding the manifest of the same job resumes it (a shard whose output
file still has the recorded size and sha256, from an unchanged input, is skipped); a run finding
another job's manifest, or files and no manifest, is refused before any work. The manifest is
rewritten atomically after every shard, so a killed run loses at most the shards in flight.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from shipyard.atomic import atomic_path
from shipyard.batch import output
from shipyard.errors import OutputPathError

NAME = "manifest.json"
SCHEMA = "shipyard.batch/1"


def job_id(model_sha256: str, options: dict[str, Any], inputs: list[str]) -> str:
    text = json.dumps({"model": model_sha256, "options": options, "inputs": sorted(inputs)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Manifest:
    def __init__(self, out: Path, data: dict[str, Any]):
        self.out = out
        self.data = data

    @classmethod
    def open(cls, out: Path, job: str, model: dict[str, Any], options: dict[str, Any],
             inputs: list[dict[str, Any]]) -> Manifest:
        """The manifest of ``job`` in ``out``: resumed if there, new if ``out`` is new or empty;
        OutputPathError if ``out`` belongs to something else."""
        path = out / NAME
        if path.exists():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise OutputPathError(f"{path}: not a readable batch manifest ({exc})") from None
            if not isinstance(data, dict) or data.get("schema") != SCHEMA:
                raise OutputPathError(f"{out}: holds a manifest.json that is not a shipyard batch manifest",
                                      hint="give a new or empty output directory")
            if data.get("job") != job:
                raise OutputPathError(
                    f"{out}: holds the manifest of another batch job ({data.get('job')}: model "
                    f"{Path(str(data.get('model', {}).get('path', '?'))).name}, {len(data.get('inputs', []))} inputs)",
                    hint="give a new output directory, or the same model, options and inputs to resume that job")
            data["inputs"] = inputs  # sizes and times as they are now; shard entries say what was read
            return cls(out, data)
        if out.exists() and any(out.iterdir()):
            raise OutputPathError(f"{out}: exists and is not empty, but holds no batch manifest",
                                  hint="give a new or empty output directory")
        data = {"schema": SCHEMA, "job": job, "model": model, "options": options, "inputs": inputs,
                "shards": {}, "failed": {}, "counts": {}, "timings": {"runs": []}, "complete": False}
        manifest = cls(out, data)
        out.mkdir(parents=True, exist_ok=True)
        manifest.save()
        return manifest

    def is_done(self, shard: dict[str, Any]) -> bool:
        """The shard's output is complete: recorded, present with its size and sha256, and the
        input has not changed since (size and modification time)."""
        entry = self.data["shards"].get(shard["path"])
        if not entry or entry.get("input_size") != shard["size"] or entry.get("input_mtime_ns") != shard["mtime_ns"]:
            return False
        path = self.out / entry["output"]
        try:
            return path.stat().st_size == entry["size"] and output.file_sha256(path) == entry["sha256"]
        except OSError:
            return False

    def record(self, shard: dict[str, Any], result: dict[str, Any]) -> None:
        keep = ("output", "examples", "batches", "sha256", "size", "input_sha256", "seconds", "run_seconds",
                "worker", "node")
        entry = {k: result.get(k) for k in keep}
        entry.update(input_size=shard["size"], input_mtime_ns=shard["mtime_ns"], finished=round(time.time(), 3))
        self.data["shards"][shard["path"]] = entry
        self.data["failed"].pop(shard["path"], None)

    def fail(self, shard: dict[str, Any], error: str) -> None:
        self.data["failed"][shard["path"]] = error

    def finish_run(self, run: dict[str, Any]) -> None:
        shards = self.data["shards"]
        self.data["timings"]["runs"].append(run)
        self.data["counts"] = {"inputs": len(self.data["inputs"]), "done": len(shards),
                               "failed": len(self.data["failed"]),
                               "examples": sum(int(e.get("examples") or 0) for e in shards.values())}
        self.data["outputs"] = sorted(e["output"] for e in shards.values())
        self.data["complete"] = len(shards) == len(self.data["inputs"]) and not self.data["failed"]

    def save(self) -> None:
        with atomic_path(self.out / NAME) as tmp:
            tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n")
