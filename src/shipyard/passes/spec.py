"""The transform-spec syntax of TF's graph_transforms tool, parsed.

``strip_unused_nodes(type=float, shape="1,224,224,3") remove_nodes(op=Identity, op=CheckNumerics)
fold_constants(ignore_errors=true)``: transforms separated by spaces, each with optional
parameters in parentheses; a parameter may repeat (``op=A, op=B``) and a value may be quoted
so it can hold commas. No library parses this syntax (it lived in TF's C++ tool), so it is
written here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from shipyard.errors import UsageError


@dataclass
class Step:
    """One transform in a spec: its name and parameters (every value of a repeated key kept)."""

    name: str
    params: dict[str, list[str]] = field(default_factory=dict)

    def __str__(self) -> str:
        if not self.params:
            return self.name
        inner = ", ".join(f"{k}={_quote(v)}" for k, vs in self.params.items() for v in vs)
        return f"{self.name}({inner})"


def _quote(value: str) -> str:
    return f'"{value}"' if any(c in value for c in ", ()=") else value


def parse_spec(text: str) -> list[Step]:
    """Parse a whole spec; raises :class:`UsageError` pointing at the offending position."""
    steps: list[Step] = []
    i, n = 0, len(text)
    while True:
        i = _skip_space(text, i)
        if i >= n:
            break
        start = i
        while i < n and (text[i].isalnum() or text[i] == "_"):
            i += 1
        if i == start:
            raise _error(text, i, "expected a transform name")
        step = Step(text[start:i])
        j = _skip_space(text, i)
        if j < n and text[j] == "(":
            i = _parse_params(text, j + 1, step)
        steps.append(step)
    if not steps:
        raise UsageError("the transform spec is empty", hint="for example: --transforms 'fold_constants strip_unused_nodes'")
    return steps


def _parse_params(text: str, i: int, step: Step) -> int:
    n = len(text)
    while True:
        i = _skip_space(text, i)
        if i < n and text[i] == ")":
            return i + 1
        start = i
        while i < n and (text[i].isalnum() or text[i] in "_-."):
            i += 1
        key = text[start:i]
        i = _skip_space(text, i)
        if not key or i >= n or text[i] != "=":
            raise _error(text, i, f"expected NAME=VALUE inside {step.name}(...)")
        i = _skip_space(text, i + 1)
        value, i = _parse_value(text, i, step.name)
        step.params.setdefault(key, []).append(value)
        i = _skip_space(text, i)
        if i < n and text[i] == ",":
            i += 1
        elif i < n and text[i] == ")":
            return i + 1
        else:
            raise _error(text, i, f"expected ',' or ')' in {step.name}(...)")


def _parse_value(text: str, i: int, name: str) -> tuple[str, int]:
    n = len(text)
    if i < n and text[i] in "\"'":
        quote = text[i]
        end = text.find(quote, i + 1)
        if end < 0:
            raise _error(text, i, f"unterminated quoted value in {name}(...)")
        return text[i + 1 : end], end + 1
    start = i
    while i < n and text[i] not in ",) \t\n":
        i += 1
    if i == start:
        raise _error(text, i, f"missing value in {name}(...)")
    return text[start:i], i


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\n\r":
        i += 1
    return i


def _error(text: str, i: int, what: str) -> UsageError:
    shown = text if len(text) <= 100 else text[max(0, i - 50) : i + 50]
    return UsageError(f"bad transform spec at character {i + 1}: {what}: {shown!r}")
