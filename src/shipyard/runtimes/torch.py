"""TorchScript runner: ``torch.jit.load`` with ``map_location`` so GPU-traced models run here."""
from __future__ import annotations

from shipyard.deps import require
from shipyard.model import Model
from shipyard.runtimes.base import BaseRunner


class TorchScriptRunner(BaseRunner):
    backend = "torch"

    def __init__(self, model: Model, threads: int | None = None, device: str = "cpu"):
        self.torch = torch = require("torch", "Running a TorchScript model")
        if threads:
            torch.set_num_threads(threads)
        from shipyard.formats import torchscript

        self.device = device
        self.module = torchscript.load(model, device)
        self._scalars = torchscript.scalar_args(self.module)
        super().__init__(model, torchscript.signature_of(self.module), threads)

    def _run(self, feeds):
        torch = self.torch
        args = [feeds[s.name].item() if s.name in self._scalars else torch.from_numpy(feeds[s.name].copy()).to(self.device)
                for s in self.signature.inputs]
        with torch.inference_mode():
            out = self.module(*args)
        out = out if isinstance(out, (list, tuple)) else [out]
        return {s.name: o.detach().cpu().numpy() for s, o in zip(self.signature.outputs, out)}
