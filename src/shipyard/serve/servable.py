"""One loaded model version: a Runner behind a Batcher, with its signature for validation."""
from __future__ import annotations

import gc
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np

from shipyard.errors import InputError, engine_message
from shipyard.model import Signature
from shipyard.runtimes.base import validate_feeds
from shipyard.serve.batcher import Batcher
from shipyard.serve.codec import input_names
from shipyard.serve.errors import EngineError, UnavailableError, without_paths
from shipyard.serve.repository import ModelConfig
from shipyard.serve.stats import InferenceStats

SERVED = "serving_default"  # what the signature Predict and KServe run is called, whatever its key in the model


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
        self.config = config
        self.version_dir = path if path.name == str(version) else path.parent
        self.stats = InferenceStats()
        self._others: dict[str, tuple] = {}  # another signature's name -> (runner, batcher), made on first use
        self._others_lock = threading.Lock()
        self._signatures: dict[str, Signature] | None = None
        model = open_model(path)
        self.format = model.format
        options = {"xnnpack": False} if share_weights and model.format == "tflite" and not model.encrypted else {}
        if config.precision:
            options["precision"] = config.precision
        self.runner = open_runner(model, backend=config.backend, threads=config.threads or default_threads, **options)
        self.signature: Signature = self.runner.signature
        self.input_names = input_names(self.signature)  # what codec.Limits looks a request's inputs up in
        self.backend = self.runner.backend
        self._run_checked = getattr(self.runner, "run_checked", self.runner.run)
        self.batch_dim = _batch_dim_dynamic(self.signature)  # every input's first dimension is free
        self.batcher = Batcher(self._run, config.batching, workers=config.max_concurrency,
                               batchable=self.batch_dim, name=f"{name}-{version}",
                               on_batch=on_batch, stats=self.stats)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._engine_call(self._run_checked, feeds)  # validated in submit()

    def _engine_call(self, run, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``run(feeds)`` with the engine's error told to the client in its words, without server paths."""
        try:
            return run(feeds)
        except Exception as exc:  # the engine's own error types; the request already passed validation
            text = without_paths(engine_message(exc), self.version_dir, f"{self.name}/{self.version}")
            raise EngineError(f"{self.backend} rejected the input: {text}") from exc

    def submit(self, feeds: dict[str, np.ndarray]) -> Future:
        """Validate against the signature (a wrong request is a 400 here) and queue it."""
        return self._queue(self.batcher, self.signature, feeds)

    def _queue(self, batcher: Batcher, signature: Signature, feeds: dict[str, np.ndarray]) -> Future:
        """Validate and queue; a refused request counts as a failure in the statistics."""
        start = time.perf_counter()
        try:
            return batcher.submit(validate_feeds(signature, feeds))
        except UnavailableError:
            raise  # draining: the manager sends the request to the next version, which counts it
        except Exception:  # the refusal goes on to the client as it is; it is only counted here
            self.stats.refused(int((time.perf_counter() - start) * 1e9))
            raise

    def signatures(self) -> dict[str, Signature]:
        """The signatures this version answers, by name: ``serving_default`` (the one Predict and
        KServe run), and a SavedModel's other signatures (TF Serving's Classify, Regress,
        MultiInference and metadata). Read from the SavedModel once."""
        if self._signatures is None:
            table = {SERVED: self.signature}
            if self.format == "tf-savedmodel" and hasattr(self.runner, "for_signature"):
                from shipyard.formats import tf_saved

                meta = tf_saved.serving_meta(self.runner.model)
                default = tf_saved.pick_signature_key(meta)
                for key in sorted(meta.signature_def):
                    if not key.startswith("__") and key not in (default, SERVED):
                        table[key] = tf_saved.signature_of(meta, key)
            self._signatures = table
        return self._signatures

    def signature_of(self, name: str) -> Signature:
        table = self.signatures()
        if name not in table:
            raise InputError(f"No signature was found with the name: {name} (model '{self.name}' has: {', '.join(table)})")
        return table[name]

    def submit_to(self, name: str, feeds: dict[str, np.ndarray]) -> Future:
        """:meth:`submit` for signature ``name``; other signatures get a runner (sharing the loaded
        SavedModel) and a batcher of their own on first use, and count in the same statistics."""
        if name == SERVED:
            return self.submit(feeds)
        runner, batcher = self._other(name)
        return self._queue(batcher, runner.signature, feeds)

    def _other(self, name: str):
        with self._others_lock:
            if name not in self._others:
                self.signature_of(name)  # an unknown name: InputError listing the signatures
                runner = self.runner.for_signature(name)

                def run(feeds, runner=runner):
                    return self._engine_call(runner.run, feeds)

                batcher = Batcher(run, self.config.batching, workers=self.config.max_concurrency,
                                  batchable=_batch_dim_dynamic(runner.signature), name=f"{self.name}-{self.version}-{name}",
                                  stats=self.stats)
                self._others[name] = (runner, batcher)
            return self._others[name]

    def close(self) -> None:
        """Drain (finish queued requests), then release the engine and its memory."""
        with self._others_lock:
            for _, batcher in self._others.values():
                batcher.close()
        self.batcher.close()
        self.runner.close()
        self.runner = self._run_checked = None
        gc.collect()
