"""Runs inside the litert-torch converter environment (not shipyard's): a ``torch.export``
program and its example inputs in, a ``.tflite`` file out.

It is started as a script by ``shipyard.convert.litert_torch`` with that environment's Python,
so it imports nothing from shipyard; the only contract is the request and result JSON files.
Request: ``{"program": PT2, "inputs": NPZ, "names": [...], "outputs": [...], "output": TFLITE}``. Result:
``{"ok": true, "seconds": S, "litert_torch": VERSION}`` or ``{"ok": false, "error": TEXT}``
where TEXT is the converter's whole message, its causes included.
"""
from __future__ import annotations

import json
import keyword
import sys
import time
import traceback


def _named(inner, names: list[str], outputs: list[str]):
    """The program's module behind a ``forward`` whose parameters carry the input names and
    which returns a dict keyed by the output names, so litert-torch names the TFLite signature
    after them (not ``args_0`` / ``output_0``)."""
    import torch

    class Named(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def named_outputs(self, result):
            values = list(result) if isinstance(result, (list, tuple)) else [result]
            return dict(zip(outputs, values)) if len(values) == len(outputs) else result

    namespace: dict = {}
    params = ", ".join(names)
    source = f"def forward(self, {params}):\n    return self.named_outputs(self.inner({params}))\n"
    exec(source, namespace)  # noqa: S102 - names are checked identifiers, not keywords
    Named.forward = namespace["forward"]
    return Named()


def _whole_error(exc: BaseException) -> str:
    """The exception and its causes, without stack frames."""
    parts = []
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts.append("".join(traceback.format_exception_only(type(exc), exc)).strip())
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


def main(request_path: str, result_path: str) -> int:
    start = time.perf_counter()
    try:
        with open(request_path) as f:
            request = json.load(f)
        import litert_torch
        import numpy as np
        import torch

        program = torch.export.load(request["program"])
        names = request["names"]
        if not all(n.isidentifier() and not keyword.iskeyword(n) for n in names):
            raise ValueError(f"input names must be identifiers: {names}")
        data = np.load(request["inputs"])
        kwargs = {n: torch.from_numpy(data[n]) for n in names}
        edge = litert_torch.convert(_named(program.module(), names, request.get("outputs", [])), (), sample_kwargs=kwargs)
        edge.export(request["output"])
        result = {"ok": True, "seconds": time.perf_counter() - start,
                  "litert_torch": getattr(litert_torch, "__version__", "unknown")}
    except BaseException as exc:  # noqa: BLE001 - everything goes back to shipyard as text
        result = {"ok": False, "error": _whole_error(exc), "type": type(exc).__name__}
    with open(result_path, "w") as f:
        json.dump(result, f)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
