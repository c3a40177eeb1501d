"""torch.export programs (``.pt2``) run by PyTorch eager through ``ExportedProgram.module()``."""
from __future__ import annotations

from shipyard.deps import require
from shipyard.model import Model
from shipyard.runtimes.base import BaseRunner


class ExportedProgramRunner(BaseRunner):
    backend = "torch"

    def __init__(self, model: Model, threads: int | None = None):
        self.torch = torch = require("torch", "Running a torch.export program")
        if threads:
            torch.set_num_threads(threads)
        from shipyard.formats import torch_export

        program = torch_export.load(model)
        self.module = program.module()
        super().__init__(model, torch_export.signature_of(program), threads)

    def _run(self, feeds):
        torch = self.torch
        args = [torch.from_numpy(feeds[s.name].copy()) for s in self.signature.inputs]
        with torch.inference_mode():
            out = self.module(*args)
        out = out if isinstance(out, (list, tuple)) else [out]
        return {s.name: o.detach().cpu().numpy() for s, o in zip(self.signature.outputs, out)}
