"""Atomic output: write to a temporary sibling, then rename, so a crash or an error never
leaves a half-written file where the user expects a result."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from shipyard.errors import OutputPathError


def check_output_path(out: Path, *inputs: Path) -> Path:
    """Refuse outputs that would overwrite or land inside an input model."""
    out = Path(out).absolute()
    for src in inputs:
        src = Path(src).absolute()
        if out == src or src in out.parents:
            raise OutputPathError(f"{out}: the output would overwrite or go inside the input model {src}")
    if not out.parent.exists():
        raise OutputPathError(f"{out}: the directory {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK):
        raise OutputPathError(f"{out}: the directory {out.parent} is not writable")
    return out


@contextlib.contextmanager
def atomic_path(out: Path, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``out``; it replaces ``out`` only if the block succeeds."""
    out = Path(out)
    prefix = f".{out.name}.tmp-"
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=out.parent)) if directory else None
    if tmp is None:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=out.parent)
        os.close(fd)
        tmp = Path(name)
    # mkstemp/mkdtemp make private (0600/0700) entries; a result gets what open()/mkdir() would
    # give it under the user's umask (a writer that wants it private chmods it in the block).
    os.chmod(tmp, (0o777 if directory else 0o666) & ~_umask())
    _announce_temp(tmp)
    try:
        yield tmp
        if out.is_dir() and directory:
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _announce_temp(path: Path) -> None:
    """Tell a crash-guarding parent process (see :mod:`shipyard.guard`) what to clean up."""
    from shipyard import guard

    guard.register_temp(path)
