"""A real Milvus standalone server for tests, from PyPI's ``milvus`` package (extra ``milvus-server``).

The server listens on *all* interfaces (its ports cannot be bound to loopback), so run it
only inside a private network namespace where loopback is the only interface::

    scripts/run-in-netns.sh .venv/bin/python -m pytest -m milvus_server tests/test_milvus_server.py

``in_private_netns()`` tells whether the current process is in such a namespace.
``running_server(base_dir)`` starts one in ``base_dir``, waits until it answers its health
check, yields its ``http://127.0.0.1:PORT`` address, and stops it, checking that the process
is gone and its port closed.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["in_private_netns", "free_port", "running_server", "rss_mib", "StartedServer"]

START_TIMEOUT_S = 120.0  # a cold start is ~10 s (binaries unpacked from .lzma files first)
# Milvus 2.3.5 never finishes a graceful stop once a collection was loaded (its query node
# keeps retrying the root coordinator that already stopped), so SIGKILL follows soon.
STOP_TIMEOUT_S = 3.0
PID_FILE = Path("/run/milvus/standalone.pid")  # written there whatever MILVUS_RUN_DIR says


def in_private_netns() -> bool:
    """True when loopback is this network namespace's only interface.

    ``socket.if_nameindex()`` asks the kernel about the *current* namespace; ``/sys/class/net``
    would not do: after ``unshare --net`` it still shows the host's sysfs.
    """
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def rss_mib(pid: int) -> float:
    """Resident memory of a process, in MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class StartedServer:
    def __init__(self, uri: str, port: int, pid: int, base_dir: Path, start_s: float) -> None:
        self.uri, self.port, self.pid, self.base_dir, self.start_s = uri, port, pid, base_dir, start_s

    def __repr__(self) -> str:
        return f"StartedServer({self.uri!r}, pid={self.pid}, started in {self.start_s:.1f} s)"


def _log_tail(base_dir: Path, lines: int = 20) -> str:
    log = base_dir / "logs" / "milvus-stderr.log"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.is_file() else "(no log)"


@contextlib.contextmanager
def running_server(base_dir: Path, *, port: int | None = None) -> Iterator[StartedServer]:
    """Start Milvus standalone with data, logs and binaries under ``base_dir``; stop it on exit."""
    from milvus import MilvusServer  # the class of milvus.default_server, without its shared state

    t0 = time.perf_counter()
    server = MilvusServer(wait_for_started=False)  # its own wait never notices a dead process
    server.set_base_dir(str(base_dir))
    server.listen_port = port or free_port()
    server.start()
    proc: subprocess.Popen[bytes] = server.server_proc
    try:
        health = f"http://127.0.0.1:{server.webservice_port}/healthz"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"milvus exited with {proc.returncode} while starting:\n{_log_tail(base_dir)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"milvus not healthy after {START_TIMEOUT_S:.0f} s:\n{_log_tail(base_dir)}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(health, timeout=2) as resp:
                    if b"OK" in resp.read():
                        break
            time.sleep(0.2)
        yield StartedServer(
            f"http://127.0.0.1:{server.listen_port}", server.listen_port, proc.pid, base_dir, time.perf_counter() - t0
        )
    finally:
        _stop(server, proc, base_dir)


def _stop(server: Any, proc: subprocess.Popen[bytes], base_dir: Path) -> None:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT_S; then check that nothing is left."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    server.stop()  # closes its log files; the process is gone already
    assert proc.returncode is not None, "milvus still running"
    assert not _port_open(server.listen_port), f"port {server.listen_port} still open after milvus stopped"
    ps = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    leftovers = [line for line in ps.splitlines() if str(base_dir) in line]
    assert not leftovers, f"processes left behind: {leftovers}"
    with contextlib.suppress(OSError):
        if PID_FILE.read_text().strip() == str(proc.pid):
            PID_FILE.unlink()
            PID_FILE.parent.rmdir()  # only if empty
