"""Fuzz the model readers: mutate one small model of each format and check that ``inspect`` and
``run`` end in success or a one-line error, never an internal error, a traceback, a native
crash or a hang.

    python benchmarks/fuzz_models.py -n 200                 # 200 mutants per format
    python benchmarks/fuzz_models.py -n 50 --formats onnx,tflite --show-bad 5

Each case runs ``shipyard.cli.run`` in a process forked from a server that imported the
frameworks once (so a case costs milliseconds, not an interpreter start); a case that dies by a
signal is a crash, one that outlives ``--timeout`` is a hang. ``tests/test_hardening.py`` uses
the same seeds, mutations and server for its short CI run.

Outcomes: ``error`` (exit 2, stderr starts with 'shipyard:', no traceback), ``ok`` (exit 0), and
``bad`` (anything else: internal error, traceback, other exit code, crash, hang).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

FORMATS = ("onnx", "tflite", "pb", "keras", "torchscript", "tfjs")
COMMANDS = ("inspect", "run")

# ---------------------------------------------------------------- seeds


def build_seeds(directory: Path) -> dict[str, Path]:
    """One small model of each format under ``directory`` ({format: path}); tfjs is a folder."""
    from shipyard import examples

    directory.mkdir(parents=True, exist_ok=True)
    keras = examples.save_keras_family(examples.keras_cnn(), directory / "keras")
    torch = examples.save_torch_family(examples.torch_cnn(), directory / "torch")
    return seeds_from(keras, torch)


def seeds_from(keras_paths: dict[str, Path], torch_paths: dict[str, Path]) -> dict[str, Path]:
    return {"onnx": keras_paths["onnx"], "tflite": keras_paths["tflite"], "pb": keras_paths["pb"],
            "keras": keras_paths["keras"], "torchscript": torch_paths["torchscript"], "tfjs": keras_paths["tfjs"]}


# ---------------------------------------------------------------- mutations
# A mutation is a list of operations, each ("flip", position, bit) | ("truncate", position) |
# ("insert", position, bytes); positions are fractions of the length, so one list applies to any file.


def apply(data: bytes, ops: list[tuple]) -> bytes:
    buf = bytearray(data)
    for op in ops:
        pos = min(int(op[1] * len(buf)), max(len(buf) - 1, 0))
        if op[0] == "flip" and buf:
            buf[pos] ^= 1 << op[2]
        elif op[0] == "truncate":
            del buf[pos:]
        elif op[0] == "insert":
            buf[pos:pos] = op[2]
    return bytes(buf)


def random_ops(rng: random.Random) -> list[tuple]:
    ops: list[tuple] = []
    for _ in range(rng.choice((1, 1, 2, 3, 8))):
        kind = rng.choice(("flip", "flip", "flip", "truncate", "insert"))
        if kind == "flip":
            ops.append(("flip", rng.random(), rng.randrange(8)))
        elif kind == "truncate":
            ops.append(("truncate", rng.random()))
        else:
            ops.append(("insert", rng.random(), bytes(rng.randrange(256) for _ in range(rng.randrange(1, 17)))))
    return ops


def make_mutant(seed: Path, fmt: str, ops: list[tuple], pick: float, directory: Path) -> Path:
    """A copy of ``seed`` in ``directory`` with ``ops`` applied (to one of its files for a
    folder model: ``pick`` chooses which)."""
    if seed.is_dir():
        target = directory / seed.name
        shutil.copytree(seed, target)
        files = sorted(p for p in target.rglob("*") if p.is_file())
        victim = files[min(int(pick * len(files)), len(files) - 1)]
        victim.write_bytes(apply(victim.read_bytes(), ops))
        return target
    target = directory / seed.name
    target.write_bytes(apply(seed.read_bytes(), ops))
    return target


# ---------------------------------------------------------------- the fork server


def _server() -> None:
    """Read one JSON case per line on stdin, run it in a forked child, answer one JSON line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import shipyard.cli  # noqa: F401
    from shipyard import deps

    for module in ("tensorflow", "onnxruntime", "onnx", "torch", "keras", "ai_edge_litert.interpreter"):
        with contextlib.suppress(Exception):  # a missing framework only means its cases report it
            deps.require(module, "fuzzing")
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        case = json.loads(line)
        out.write(json.dumps(_run_case(case["argv"], case["cwd"], case["timeout"])) + "\n")
        out.flush()


def _run_case(argv: list[str], cwd: str, timeout: float) -> dict:
    err_path, out_path = Path(cwd) / ".stderr", Path(cwd) / ".stdout"
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            os.chdir(cwd)
            fd_out, fd_err = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), \
                os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd_out, 1)
            os.dup2(fd_err, 2)
            sys.stdin = open(os.devnull)  # noqa: SIM115 - the child ends with os._exit
            from shipyard.cli import run

            code = run(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException:  # noqa: BLE001 - a traceback is a finding
            import traceback

            traceback.print_exc()
            code = 99
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    deadline = time.monotonic() + timeout
    status, timed_out = None, False
    while status is None:
        done, status_ = os.waitpid(pid, os.WNOHANG)
        if done:
            status = status_
        elif time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            timed_out = True
        else:
            time.sleep(0.005)
    read = (lambda p: p.read_text(errors="replace") if p.exists() else "")
    return {"code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) and not timed_out else None,
            "timed_out": timed_out, "stderr": read(err_path)[-4000:], "stdout": read(out_path)[-2000:]}


class ForkServer:
    """A fresh interpreter that imported the frameworks once and forks one child per case."""

    def __init__(self, start_timeout: float = 300):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        self.proc = subprocess.Popen([sys.executable, __file__, "--server"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        if self._line(start_timeout) != "ready":
            raise RuntimeError("the fuzz server did not start")

    def _line(self, timeout: float) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise RuntimeError("the fuzz server stopped answering")
        return self.proc.stdout.readline().strip()

    def run(self, argv: list[str], cwd: Path, timeout: float = 60) -> dict:
        self.proc.stdin.write(json.dumps({"argv": [str(a) for a in argv], "cwd": str(cwd), "timeout": timeout}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self._line(timeout + 30))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def classify(result: dict) -> str:
    """'ok', 'error' (a clean one-line error) or 'bad: <why>'."""
    err = result["stderr"]
    if result["timed_out"]:
        return "bad: hang"
    if result["signal"] is not None:
        return f"bad: crash (signal {result['signal']})"
    if "Traceback" in err:
        return "bad: traceback"
    if "internal error" in err:
        return "bad: internal error"
    if result["code"] == 0:
        return "ok"
    if result["code"] == 2 and err.startswith("shipyard:"):
        return "error"
    return f"bad: exit {result['code']}"


def argv_for(command: str, fmt: str, model: Path) -> list[str]:
    """The command line of a case (TorchScript declares no input shapes: run is told one)."""
    shape = ["--shape", "input=1,3,12,12"] if command == "run" and fmt == "torchscript" else []
    return [command, str(model), *shape]


# ---------------------------------------------------------------- the benchmark


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=100, help="mutants per format (each run with inspect and run)")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=60, help="seconds per case before it counts as a hang")
    parser.add_argument("--models", type=Path, help="folder for the seed models (built once, reused)")
    parser.add_argument("--show-bad", type=int, default=3, help="print the stderr of this many bad cases per format")
    parser.add_argument("--server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.server:
        _server()
        return 0
    models = args.models or Path(tempfile.gettempdir()) / "shipyard-fuzz-seeds"
    marker = models / "seeds.json"
    if not marker.exists():  # build in a child so this process never runs TensorFlow before forking
        build = ("import json, sys; from pathlib import Path; "
                 "sys.path.insert(0, sys.argv[2]); import fuzz_models as f; "
                 "s = f.build_seeds(Path(sys.argv[1])); "
                 "(Path(sys.argv[1]) / 'seeds.json').write_text(json.dumps({k: str(v) for k, v in s.items()}))")
        subprocess.run([sys.executable, "-c", build,
                        str(models), str(Path(__file__).parent)], check=True)
    seeds = {k: Path(v) for k, v in json.loads(marker.read_text()).items()}
    server = ForkServer()
    rng = random.Random(args.seed)
    table: dict[str, Counter] = {}
    started = time.monotonic()
    try:
        for fmt in args.formats.split(","):
            counts: Counter = Counter()
            shown = 0
            for i in range(args.n):
                ops, pick = random_ops(rng), rng.random()
                with tempfile.TemporaryDirectory(prefix="fuzz-") as work:
                    work = Path(work)
                    mutant = make_mutant(seeds[fmt], fmt, ops, pick, work)
                    for command in COMMANDS:
                        result = server.run(argv_for(command, fmt, mutant), work, args.timeout)
                        outcome = classify(result)
                        counts[(command, outcome.split(":")[0])] += 1
                        if outcome.startswith("bad"):
                            counts[("why", outcome[5:])] += 1
                            if shown < args.show_bad:
                                shown += 1
                                tail = result["stderr"].strip().splitlines()[:1] or [""]
                                print(f"[{fmt} #{i} {command}] {outcome}: {tail[0][:300]}", file=sys.stderr)
            table[fmt] = counts
            _print_table(fmt, counts, args.n)
    finally:
        server.close()
    print(f"\n{args.n} mutants per format x {len(table)} formats, "
          f"{time.monotonic() - started:.0f} s")
    return 1 if any(c[(cmd, "bad")] for c in table.values() for cmd in COMMANDS) else 0


def _print_table(fmt: str, counts: Counter, n: int) -> None:
    print(f"\n{fmt}: {n} mutants")
    print(f"  {'command':<8} {'clean error':>12} {'success':>8} {'bad':>5}")
    for command in COMMANDS:
        print(f"  {command:<8} {counts[(command, 'error')]:>12} {counts[(command, 'ok')]:>8} {counts[(command, 'bad')]:>5}")
    whys = {k[1]: v for k, v in counts.items() if k[0] == "why"}
    if whys:
        print("  bad: " + ", ".join(f"{why} x{v}" for why, v in sorted(whys.items(), key=lambda kv: -kv[1])))
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
