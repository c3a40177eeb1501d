"""A warm CLI for the suite: ``shipyard`` commands forked from a process that has already
imported TensorFlow, tf2onnx, onnxruntime and the rest, instead of a fresh interpreter each.

Why: importing TensorFlow costs 4-6 s here and the docs pages alone run ~240 ``shipyard``
commands, most of which import it: about half of the suite's time was interpreter start-up.
The command itself is unchanged: a fork of the warm process runs ``shipyard.cli.main`` (the
console script's body, crash guard included) with the caller's argv, working directory,
environment and its very stdin/stdout/stderr (passed over a Unix socket), and the caller gets
its exit status (or dies by its signal). What the caller is sent (Ctrl-C, ``kill``) is passed
on; when the caller is killed, the command dies with it.

The caller is a tiny stand-in ``shipyard`` executable (stdlib only, ``python -S``) put first on
PATH; without a warm process it runs the real console script. ``SHIPYARD_TEST_WARM_CLI=0``
switches the whole thing off (every command then starts a fresh interpreter, as a user's does).

    python tests/warmcli.py serve SOCKET PID   # the warm process (WarmCli starts it)
    python -S tests/warmcli.py call ARGS...    # what the stand-in runs
"""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

SOCKET_ENV = "SHIPYARD_TEST_WARM_SOCKET"
REAL_ENV = "SHIPYARD_TEST_REAL_CLI"
SWITCH_ENV = "SHIPYARD_TEST_WARM_CLI"
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
_HEADER = struct.Struct("!I")


# -- the caller (stand-in ``shipyard``) ---------------------------------------------------------

def _exec_real(argv: list[str]) -> None:
    """Become the real console script (a fresh interpreter), as a user's shell would run it."""
    real = os.environ[REAL_ENV]
    os.execv(real, [real, *argv])


def call(argv: list[str]) -> int:
    """Run ``shipyard ARGV`` in a fork of the warm process; falls back to the real CLI."""
    path = os.environ.get(SOCKET_ENV)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if not path:
            raise OSError("no warm process")
        sock.connect(path)
    except OSError:
        sock.close()
        _exec_real(argv)
    request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    socket.send_fds(sock, [_HEADER.pack(len(request)) + request], [0, 1, 2])
    replies = sock.makefile("r")
    first = replies.readline().split()
    if first[:1] == ["fresh"]:  # the command needs an interpreter started with its own environment
        sock.close()
        _exec_real(argv)
    if first[:1] != ["pid"]:
        print(f"shipyard (warm test CLI): the warm process refused the command: {first}", file=sys.stderr)
        return 70
    pid = int(first[1])

    def forward(signum: int, frame: object) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for signum in FORWARDED:
        signal.signal(signum, forward)
    line = replies.readline()  # a forwarded signal interrupts it; PEP 475 retries the read
    how, _, number = line.partition(" ")
    if how == "exit":
        return int(number)
    if how == "signal":
        signum = int(number)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    print("shipyard (warm test CLI): lost the warm process", file=sys.stderr)
    return 70


# -- the warm process ---------------------------------------------------------------------------

#: Variables read when an interpreter or a native library starts, which a fork cannot take on:
#: a caller whose values differ from the warm process's gets a fresh interpreter.
_AT_START = ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH", "PYTHONNOUSERSITE", "PYTHONWARNINGS", "PYTHONHASHSEED",
             "PYTHONDONTWRITEBYTECODE", "PYTHONOPTIMIZE", "PYTHONDEVMODE", "PYTHONUTF8", "PYTHONMALLOC",
             "LD_PRELOAD", "LD_LIBRARY_PATH", "TF_ENABLE_ONEDNN_OPTS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
             "CUDA_VISIBLE_DEVICES")


def _needs_fresh(env: dict[str, str]) -> bool:
    return any(env.get(name) != os.environ.get(name) for name in _AT_START)


def _preload() -> None:
    """What most commands import, imported the way shipyard imports it (deps.require)."""
    import shipyard.cli
    from shipyard import deps

    shipyard.cli.build_parser()
    for module in ("tensorflow", "tf2onnx"):
        deps.require(module, "the warm test CLI")
    import ai_edge_litert.interpreter  # noqa: F401
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401


def serve(path: str, owner: int) -> None:
    _die_with(owner)
    _preload()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    waiting: dict[int, socket.socket] = {}
    print("ready", flush=True)
    import selectors

    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fileobj is listener:
                conn, _ = listener.accept()
                pid = _start(conn, [listener, *waiting.values()], wake_r, wake_w)
                if pid:
                    waiting[pid] = conn
            else:
                try:
                    os.read(wake_r, 4096)
                except BlockingIOError:
                    pass
        while waiting:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = waiting.pop(pid, None)
            if conn is None:
                continue
            reply = f"signal {os.WTERMSIG(status)}\n" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}\n"
            try:
                conn.sendall(reply.encode())
            except OSError:
                pass
            conn.close()


def _start(conn: socket.socket, others: list[socket.socket], wake_r: int, wake_w: int) -> int | None:
    """Fork a child for one command; returns its pid (None when the request was unreadable)."""
    try:
        data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
        (size,) = _HEADER.unpack(data[:4])
        data = data[4:]
        while len(data) < size:
            more = conn.recv(size - len(data))
            if not more:
                raise OSError("short request")
            data += more
        request = json.loads(data)
        if len(fds) != 3:
            raise OSError("no standard streams")
    except (OSError, ValueError, struct.error):
        conn.close()
        return None
    if _needs_fresh(request["env"]):
        for fd in fds:
            os.close(fd)
        conn.sendall(b"fresh\n")
        conn.close()
        return None
    pid = os.fork()
    if pid:
        for fd in fds:
            os.close(fd)
        conn.sendall(f"pid {pid}\n".encode())
        return pid
    # The child: become the command.
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for other in others:  # the listener and the other commands' connections
            other.close()
        os.close(wake_r)
        os.close(wake_w)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        _standard_streams()
        sys.argv = ["shipyard", *request["argv"]]
        # The caller killed (SIGKILL, or its shell gone): the command dies with it, like a
        # process whose terminal closed would; the crash guard's worker follows (PDEATHSIG).
        # Signals stay with the main thread (the crash guard blocks SIGINT there and reads it).
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {*FORWARDED, signal.SIGCHLD})
        threading.Thread(target=_die_with_caller, args=(conn,), daemon=True).start()
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        from shipyard.cli import main

        code = main(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - shown like an interpreter would, then exit 1
        import traceback

        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _die_with(owner: int) -> None:
    """The warm process ends with the test process that started it, however that ends."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != owner:
        os._exit(1)


def _die_with_caller(conn: socket.socket) -> None:
    try:
        while conn.recv(1):
            pass
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGKILL)


def _standard_streams() -> None:
    """New sys.stdin/stdout/stderr on descriptors 0-2, set up as interpreter start-up would
    for the caller's environment (a terminal is line-buffered, PYTHONUNBUFFERED writes through)."""
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    encoding = os.environ.get("PYTHONIOENCODING", "utf-8").split(":")[0] or "utf-8"

    def stream(fd: int, write: bool, errors: str) -> io.TextIOWrapper:
        raw = io.FileIO(fd, "w" if write else "r", closefd=False)
        if write and unbuffered:
            buffered = raw
        else:
            buffered = io.BufferedWriter(raw) if write else io.BufferedReader(raw)
        tty = os.isatty(fd)
        return io.TextIOWrapper(buffered, encoding=encoding, errors=errors,
                                line_buffering=write and (tty or fd == 2), write_through=write and unbuffered)

    sys.stdin = sys.__stdin__ = stream(0, False, "strict")
    sys.stdout = sys.__stdout__ = stream(1, True, "strict")
    sys.stderr = sys.__stderr__ = stream(2, True, "backslashreplace")


# -- the suite's side ---------------------------------------------------------------------------

class WarmCli:
    """Start a warm process; ``env()`` gives the PATH and variables that make ``shipyard`` in
    a shell (or ``run_cli``) use it. ``close()`` stops it."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.socket = str(workdir / "warm.sock")
        self.bin = workdir / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        stand_in = self.bin / "shipyard"
        stand_in.write_text(f"#!{sys.executable} -S\nimport sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                            "import warmcli\nsys.exit(warmcli.call(sys.argv[1:]))\n")
        stand_in.chmod(0o755)
        self.real = str(Path(sys.executable).parent / "shipyard")
        self.proc = subprocess.Popen([sys.executable, __file__, "serve", self.socket, str(os.getpid())], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        line = self.proc.stdout.readline()  # "" if it died
        if line.strip() != "ready":
            self.close()
            raise RuntimeError(f"the warm CLI did not start ({line!r})")

    def env(self, base: dict[str, str]) -> dict[str, str]:
        return {**base, "PATH": f"{self.bin}{os.pathsep}{base.get('PATH', '')}", SOCKET_ENV: self.socket,
                REAL_ENV: self.real}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def enabled() -> bool:
    return os.environ.get(SWITCH_ENV, "1") != "0" and hasattr(socket, "send_fds")


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1:2] == ["call"]:
        sys.exit(call(sys.argv[2:]))
    else:
        sys.exit("usage: warmcli.py serve SOCKET OWNER_PID | call ARGS...")
