"""One loaded model version: a Runner behind a Batcher, with its signature for validation."""
from __future__ import annotations

import gc
from concurrent.futures import Future
from pathlib import Path

import numpy as np

from shipyard.model import Signature
from shipyard.runtimes.base import validate_feeds
from shipyard.serve.batcher import Batcher
from shipyard.serve.errors import EngineError
from shipyard.serve.repository import ModelConfig


def _batch_dim_dynamic(signature: Signature) -> bool:
    return all(s.shape and not (isinstance(s.shape[0], int) and s.shape[0] >= 0) for s in signature.inputs)


class Servable:
    def __init__(self, name: str, version: int, path: Path, config: ModelConfig, default_threads: int | None = None,
                 on_batch=None, share_weights: bool = False):
        from shipyard.runtimes import open_runner
        from shipyard.sniff import open_model

        self.name = name
        self.version = version
        self.path = path
        model = open_model(path)
        options = {"xnnpack": False} if share_weights and model.format == "tflite" and not model.encrypted else {}
        if config.precision:
            options["precision"] = config.precision
        self.runner = open_runner(model, backend=config.backend, threads=config.threads or default_threads, **options)
        self.signature: Signature = self.runner.signature
        self.backend = self.runner.backend
        self.batcher = Batcher(self._run, config.batching, workers=config.max_concurrency,
                               batchable=_batch_dim_dynamic(self.signature), name=f"{name}-{version}",
                               on_batch=on_batch)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return self.runner.run(feeds)
        except Exception as exc:  # the engine's own error types; the request already passed validation
            text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else exc.__class__.__name__
            raise EngineError(f"{self.backend} rejected the input: {text}") from exc

    def submit(self, feeds: dict[str, np.ndarray]) -> Future:
        """Validate against the signature (a wrong request is a 400 here) and queue it."""
        return self.batcher.submit(validate_feeds(self.signature, feeds))

    def close(self) -> None:
        """Drain (finish queued requests), then release the engine and its memory."""
        self.batcher.close()
        self.runner.close()
        self.runner = None
        gc.collect()
