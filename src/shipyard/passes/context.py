"""What every transform may read and note, whatever the format: the graph's inputs and outputs
(as detected or given by the user) and the notes the transforms leave for the report."""
from __future__ import annotations

from dataclasses import dataclass, field

from shipyard.errors import UsageError


@dataclass
class Context:
    """The graph's inputs and outputs (node names) as detected or given by the user."""

    inputs: list[str]
    outputs: list[str]
    notes: list[str] = field(default_factory=list)


def nothing_to_quantize(minimum_size: int, largest: int) -> UsageError:
    """``quantize_weights`` that would change nothing is a mistake, not a 1.00x result (GraphDef and ONNX)."""
    if largest == 0:
        return UsageError("quantize_weights: the model has no float weights: nothing to quantize")
    return UsageError(f"quantize_weights: no float weight has minimum_size={minimum_size} elements or more "
                      f"(the largest has {largest}): nothing would be quantized",
                      hint=f"lower the threshold: --minimum-size {largest} (quantize) or "
                           f"quantize_weights(minimum_size={largest}) (transform)")
