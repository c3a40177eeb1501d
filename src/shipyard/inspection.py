"""``shipyard inspect``: what TF's summarize_graph printed, for every format."""
from __future__ import annotations

from pathlib import Path

from shipyard import guard
from shipyard.formats import handler
from shipyard.model import Model
from shipyard.sniff import open_model
from shipyard.summary import Summary


def as_model(path_or_model: str | Path | Model) -> Model:
    return path_or_model if isinstance(path_or_model, Model) else open_model(path_or_model)


def inspect_model(path_or_model: str | Path | Model) -> Summary:
    model = as_model(path_or_model)
    guard.stage(f"inspecting {model.display} ({model.format})")
    return handler(model.format).summarize(model)
