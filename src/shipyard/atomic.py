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


def check_output_path(out: Path, *inputs: Path | str | None, parents: bool = False) -> Path:
    """Refuse outputs that would overwrite, replace or land inside an input.

    Every command that writes checks its output here. Paths are compared resolved (``..``,
    symlinks) and by identity (device and inode: hard links, bind mounts), against each input
    file or directory and, for a directory input, every file inside it; an output that is an
    existing directory holding an input is refused too (replacing it would delete the input).
    The key file ($SHIPYARD_MODEL_KEY_FILE) is always an input. ``parents``: the output's
    directory may be created by the writer (it need not exist yet).
    """
    out = Path(out).absolute()
    key = os.environ.get("SHIPYARD_MODEL_KEY_FILE")
    sources = [(Path(src), "input model" if i == 0 else "input") for i, src in enumerate(inputs) if src]
    if key:
        sources.append((Path(key), "key file"))
    out_real = out.resolve()
    out_chain = [out_real, *out_real.parents]  # the output and the directories it lands in
    out_ids = {ident for ident in map(_identity, out_chain) if ident is not None}
    out_id = _identity(out_real)
    for src, label in sources:
        src_real = Path(src).absolute().resolve()
        src_id = _identity(src_real)
        inside = src_real in out_chain or (src_id is not None and src_id in out_ids)
        if inside:
            what = "overwrite" if src_real == out_real or src_id == out_id else "go inside"
            raise OutputPathError(f"{out}: the output would {what} the {label} {src}")
        holds = out_real in src_real.parents or (
            out_id is not None and out_id in {_identity(p) for p in src_real.parents})
        if holds:
            raise OutputPathError(f"{out}: the output would replace a directory that holds the {label} {src}")
        if out_id is not None and src_real.is_dir() and not out_real.is_dir() and out_id in _file_ids(src_real):
            raise OutputPathError(f"{out}: the output is a link to a file of the {label} {src}")
    if not parents:
        if not out.parent.is_dir():
            raise OutputPathError(f"{out}: the directory {out.parent} does not exist")
        if not os.access(out.parent, os.W_OK):
            raise OutputPathError(f"{out}: the directory {out.parent} is not writable")
    return out


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of what ``path`` names (following links), None if it does not exist."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _file_ids(directory: Path) -> set[tuple[int, int]]:
    ids = set()
    for root, _dirs, files in os.walk(directory):
        for name in files:
            ident = _identity(Path(root) / name)
            if ident is not None:
                ids.add(ident)
    return ids


@contextlib.contextmanager
def atomic_path(out: Path, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``out``; it replaces ``out`` only if the block succeeds."""
    out = Path(out)
    if out.is_dir() and not directory:
        raise OutputPathError(f"{out}: is a directory; give a file name for the output")
    _remove_stale(out.parent, f".{out.name}.tmp-")
    # the writer's PID in the name: a later run can tell a dead writer's leftovers from a live one's
    prefix = f".{out.name}.tmp-{os.getpid()}-"
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _remove_stale(folder: Path, prefix: str) -> None:
    """Remove ``prefix<pid>-*`` entries of ``folder`` left by a process that no longer runs
    (a SIGKILL gives no chance to clean up; the next run does)."""
    try:
        entries = [e for e in folder.iterdir() if e.name.startswith(prefix)]
    except OSError:
        return
    for entry in entries:
        pid = entry.name[len(prefix):].split("-", 1)[0]
        if not (pid.isascii() and pid.isdigit()) or _alive(int(pid)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


@contextlib.contextmanager
def run_scratch() -> Iterator[Path]:
    """One scratch directory per run for every temporary file (``tempfile`` points there while
    the command runs), removed at the end; those of runs that were killed are removed by the
    next run. Without it a killed quantize left a full copy of its input in TMPDIR."""
    root = Path(tempfile.gettempdir()) / f"shipyard-{os.getuid()}"
    for attempt in range(5):  # another run may remove the (empty) root between mkdir and mkdtemp
        try:
            # exist_ok still raises FileExistsError when another run's rmdir falls between the
            # failed mkdir and its is_dir() check (CI saw it once in ~700 runs): try again
            root.mkdir(mode=0o700, exist_ok=True)
            if attempt == 0:
                _remove_stale(root, "run-")
            scratch = Path(tempfile.mkdtemp(prefix=f"run-{os.getpid()}-", dir=root))
            break
        except (FileNotFoundError, FileExistsError):
            continue
    else:
        scratch = Path(tempfile.mkdtemp(prefix=f"shipyard-run-{os.getpid()}-"))
    previous = tempfile.tempdir
    tempfile.tempdir = str(scratch)
    try:
        yield scratch
    finally:
        tempfile.tempdir = previous
        shutil.rmtree(scratch, ignore_errors=True)
        with contextlib.suppress(OSError):
            root.rmdir()  # leave no trace when no other run is using it


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _announce_temp(path: Path) -> None:
    """Tell a crash-guarding parent process (see :mod:`shipyard.guard`) what to clean up."""
    from shipyard import guard

    guard.register_temp(path)
