"""TorchScript runner: ``torch.jit.load`` with ``map_location`` so GPU-traced models run here."""
from __future__ import annotations

from shipyard.deps import require
from shipyard.model import Model
from shipyard.runtimes.base import BaseRunner, TensorInfo

_NOT_INTERMEDIATE = ("prim::Constant", "prim::GetAttr", "prim::ListConstruct", "prim::TupleConstruct")


class TorchScriptRunner(BaseRunner):
    backend = "torch"
    intermediate_formats = frozenset({"torchscript"})

    def __init__(self, model: Model, threads: int | None = None, device: str = "cpu", intermediates: bool = False):
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

    # -- intermediates -----------------------------------------------------------------
    # The forward graph is inlined (submodule calls expanded), the chosen tensor values are packed
    # into a tuple output, and the edited graph runs as a function on the module. Tensor names are
    # the graph's value names (``input.4``); the op is the aten kind. ``torch._C`` graph editing is
    # private API, but it is what TorchScript offers for this: the module's forward returns only its
    # outputs, and hooks do not fire in a traced graph.

    def _inlined(self):
        if not hasattr(self, "_graph"):
            torch = self.torch
            self._graph = self.module.graph.copy()
            torch._C._jit_pass_inline(self._graph)
            # Values are found again by position: copying a graph renumbers unnamed values ("40").
            self._position: dict[str, tuple[int, int]] = {}
            self._tensors: list[TensorInfo] = []
            for i, node in enumerate(self._graph.nodes()):
                if node.kind() in _NOT_INTERMEDIATE:
                    continue
                for j, value in enumerate(node.outputs()):
                    if isinstance(value.type(), torch._C.TensorType):
                        self._position[value.debugName()] = (i, j)
                        self._tensors.append(TensorInfo(value.debugName(), node.kind(), value.debugName()))
        return self._graph

    def tensors(self) -> list[TensorInfo]:
        self._inlined()
        return self._tensors

    def _fetch(self, feeds, names):
        from shipyard import guard

        torch = self.torch
        graph = self._inlined().copy()
        nodes = list(graph.nodes())
        chosen = [nodes[i].outputsAt(j) for i, j in (self._position[n] for n in names)]
        pack = graph.create("prim::TupleConstruct", chosen)
        graph.appendNode(pack)
        pack.output().setType(torch._C.TupleType([v.type() for v in chosen]))
        graph.eraseOutput(0)
        graph.registerOutput(pack.output())
        fn = torch._C._create_function_from_graph("shipyard_dump", graph)
        args = [torch.from_numpy(feeds[s.name].copy()) for s in self.signature.inputs]
        guard.stage(f"fetching {len(names)} tensors with TorchScript")
        with torch.inference_mode():
            values = fn(self.module._c, *args)
        return {n: v.detach().cpu().numpy() for n, v in zip(names, values)}
