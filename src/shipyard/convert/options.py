"""What a conversion edge may be told, and what it reports back."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ConvertOptions:
    opset: int = 17
    allow_tf_ops: bool = False
    outputs: list[str] | None = None          # output tensor names (GraphDef sources)
    signature_key: str | None = None          # SavedModel signature
    input_shape: dict[str, tuple[int, ...]] = field(default_factory=dict)  # torch sources
    dynamic: dict[str, tuple[int, ...]] = field(default_factory=dict)  # torch sources: input -> axes kept dynamic (besides 0)
    weights: Path | None = None  # a state_dict loaded into a package.module:factory source
    example_feeds: dict = field(default_factory=dict)  # real inputs for tracing/exporting torch sources
    memmap_min_bytes: int = 10000  # TF memmapped target: Consts this large become ImmutableConst regions
    via: str | None = None  # the route asked for with --via (e.g. litert-torch, onnx2tf)
    notes: list[str] = field(default_factory=list)  # fixes applied, said to the user

    def note(self, text: str) -> None:
        self.notes.append(text)
