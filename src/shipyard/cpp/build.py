"""Build a generated project with CMake and run its program.

The toolchain comes from Debian (``scripts/setup.d/25-cpp-toolchain.sh``: g++, cmake,
libssl-dev); a missing piece is named with the package that provides it before CMake runs.
The build tree lives in a scratch folder; only the program is copied into the project
(``bin/``), so the project folder stays what a developer would keep.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from shipyard.errors import ShipyardError

# tool -> Debian package that provides it
TOOLS = {"cmake": "cmake", "c++": "g++", "cc": "gcc"}
BUILD_TIMEOUT_S = 900


class ToolchainError(ShipyardError):
    """A compiler, build tool or library the build needs is not installed."""


class BuildError(ShipyardError):
    """CMake or the compiler failed on the generated project."""


def check_toolchain(lang: str = "cpp", encrypted: bool = False) -> None:
    """Name the Debian package of the first missing tool (before CMake's own longer errors)."""
    needed = ["cmake", "cc" if lang == "c" else "c++"]
    for tool in needed:
        if shutil.which(tool) is None and not (tool == "c++" and shutil.which("g++")) \
                and not (tool == "cc" and shutil.which("gcc")):
            raise ToolchainError(f"building needs '{tool}', which is not installed",
                                 hint=f"install Debian's '{TOOLS[tool]}' package (apt-get install {TOOLS[tool]}), "
                                      "or generate without --build and build elsewhere")
    if encrypted and not any(Path(d, "openssl", "evp.h").is_file() for d in ("/usr/include", "/usr/local/include")):
        raise ToolchainError("decrypting the model in C needs OpenSSL's headers (openssl/evp.h), which are not installed",
                             hint="install Debian's 'libssl-dev' package (apt-get install libssl-dev)")


def build(source: Path, binary: str, cmake_args: list[str] | None = None, lang: str = "cpp") -> Path:
    """Configure and build ``source``; copy the program to ``source/bin/`` and return its path."""
    build_dir = Path(tempfile.mkdtemp(prefix="cmake-build-"))
    try:
        _cmake(["cmake", "-S", str(source), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release", *(cmake_args or [])],
               "configuring")
        _cmake(["cmake", "--build", str(build_dir), "--parallel", str(min(os.cpu_count() or 1, 4))], "compiling")
        built = build_dir / binary
        if not built.is_file():
            raise BuildError(f"the build finished without producing {binary}")
        (source / "bin").mkdir(exist_ok=True)
        shutil.copy2(built, source / "bin" / binary)
        for link in build_dir.glob("lib*.so*"):  # links the program finds its runtime by ($ORIGIN)
            if link.is_symlink():
                os.symlink(os.readlink(link), source / "bin" / link.name)
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
    return source / "bin" / binary


def _cmake(cmd: list[str], what: str) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"{what} the project took longer than {BUILD_TIMEOUT_S} s") from exc
    if proc.returncode != 0:
        raise BuildError(f"{what} the project failed: {first_error(proc.stdout + proc.stderr)}",
                         hint="the full log: run the README's cmake commands in the project folder")


def first_error(log: str) -> str:
    """The line of a CMake/compiler log a user needs: a CMake error's message or the first 'error:'."""
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("CMake Error"):
            body = [x.strip() for x in lines[i + 1:i + 6] if x.strip()]
            return (line.strip() + " " + " ".join(body))[:600]
    for line in lines:
        if "error:" in line or "fatal error" in line:
            return line.strip()[:600]
    tail = [x for x in lines if x.strip()]
    return tail[-1].strip()[:600] if tail else "no output"


def run_program(program: Path, cwd: Path, args: list[str], env: dict | None = None,
                timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a generated program; its own error line becomes a ShipyardError."""
    try:
        proc = subprocess.run([str(program), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})}, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"{program.name} ran longer than {timeout:g} s") from exc
    if proc.returncode != 0:
        errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
        detail = errors[0].removeprefix("error:").strip() if errors else (proc.stderr.strip().splitlines() or ["no output"])[-1]
        code = "a signal " + str(-proc.returncode) if proc.returncode < 0 else f"exit {proc.returncode}"
        raise BuildError(f"the generated program failed ({code}): {detail}")
    return proc


def parse_timing(stdout: str) -> dict[str, float]:
    """``load_ms``, ``median_ms`` and ``runs`` from the program's last lines."""
    out: dict[str, float] = {}
    for line in stdout.splitlines():
        key, _, value = line.partition(" ")
        if key in ("load_ms", "median_ms", "runs", "steps"):
            try:
                out[key] = float(value)
            except ValueError:
                pass
    return out
