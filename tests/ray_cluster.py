"""A real Ray cluster on this machine for the tests: a head node and, on request, a second node
(each `ray start --block` in its own process group, so the test stops exactly what it started;
`ray stop` would stop every Ray of this user). Small: one CPU per node, 80 MB object stores."""
from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self):
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths are long
        self.nodes: list[subprocess.Popen] = []

    def _start(self, *args: str, timeout: float = 90) -> None:
        """Start a node and wait for `ray start` to say it runs (no extra process to ask)."""
        cmd = [RAY, "start", "--block", "--num-cpus", "1", "--object-store-memory", str(80 << 20),
               "--node-ip-address", "127.0.0.1", "--disable-usage-stats", *args]
        node = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        self.nodes.append(node)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in node.stdout] + [lines.put(None)],
                         daemon=True).start()  # reads (and so drains) the pipe for the node's lifetime
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                continue
            if line is None:
                break
            seen.append(line)
            if "Ray runtime started" in line:
                return
        raise RuntimeError("a Ray node did not start:\n" + "".join(seen[-20:]))

    def start_head(self) -> None:
        self._start("--head", "--port", str(self.port), "--include-dashboard", "false", "--temp-dir", str(self.temp))

    def add_node(self) -> None:
        self._start("--address", self.address)

    def stop(self) -> None:
        for node in reversed(self.nodes):  # workers first, the head last
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGTERM)
        for node in reversed(self.nodes):
            try:
                node.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
        for node in self.nodes:  # whatever of a node's group is left (workers it spawned)
            try:
                os.killpg(node.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.temp, ignore_errors=True)
