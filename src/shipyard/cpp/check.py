"""``--check``: run the generated program on its sample inputs and judge its outputs against the
same runtime from Python, with the verification core (one pairing rule, every output)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from shipyard.cpp.build import parse_timing, run_program
from shipyard.cpp.project import Project
from shipyard.errors import ShipyardError
from shipyard.verify import Exact, Verification, VerificationError, judge


def program_outputs(program: Path, project_dir: Path, project: Project, repeat: int = 1,
                    extra_args: list[str] | None = None) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Run the program from the project folder; its outputs by tensor name, and its timing."""
    out_dir = Path(tempfile.mkdtemp(prefix="cpp-outputs-"))
    args = ["--outputs", str(out_dir), "--repeat", str(repeat), *(extra_args or [])]
    proc = run_program(program, project_dir, args)
    outputs: dict[str, np.ndarray] = {}
    for name, file in project.outputs.items():
        path = out_dir / file
        if not path.is_file():
            raise ShipyardError(f"the generated program wrote no {file} for output '{name}'")
        outputs[name] = np.load(path, allow_pickle=False)
    return outputs, parse_timing(proc.stdout)


def check(reference: dict[str, np.ndarray], got: dict[str, np.ndarray], criterion: Exact,
          what: str = "the generated program") -> Verification:
    """Judge every output; raise VerificationError (exit 1) beyond tolerance."""
    result = judge(reference, got, criterion)
    result.samples = 1
    if not result.passed:
        raise VerificationError(what, result, hint="the project was not written; compare the outputs with "
                                                   "'shipyard compare' or build it without --check to debug")
    return result
