"""What every transform may read and note, whatever the format: the graph's inputs and outputs
(as detected or given by the user) and the notes the transforms leave for the report."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Context:
    """The graph's inputs and outputs (node names) as detected or given by the user."""

    inputs: list[str]
    outputs: list[str]
    notes: list[str] = field(default_factory=list)
