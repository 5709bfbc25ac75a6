"""`lookalike serve --workers 2` as a supervisor: real processes on loopback, bounded in time.

A worker killed outright is replaced and its death logged; deaths in a row are a crash loop
that stops the server with exit 1; a parent killed outright takes its workers with it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
if not (sys.platform.startswith("linux") and hasattr(os, "fork")):
    pytest.skip("reads worker processes from /proc (Linux)", allow_module_level=True)

from lookalike.server import MAX_WORKER_DEATHS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUERY = "13683"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _state(pid: int) -> str | None:
    """A process's state letter (R, S, Z…), or None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    return _state(pid) not in (None, "Z", "X")


def _running(cmdline: bytes, parent: int | None = None) -> set[int]:
    """Live processes that run ``cmdline`` (children of ``parent`` only, if given)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            if (parent is None or ppid == parent) and (entry / "cmdline").read_bytes() == cmdline \
                    and _alive(int(entry.name)):
                found.add(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def _workers(parent: int) -> set[int]:
    """The parent's live children that run what it runs (forked workers, not spawned helpers)."""
    try:
        return _running(Path(f"/proc/{parent}/cmdline").read_bytes(), parent)
    except OSError:
        return set()


def _get(port: int, timeout: float = 5) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/products/{QUERY}/similar?k=2", timeout=timeout) as resp:
        return resp.status


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _wait_for(what, seconds: float, log: Path):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while True:
        got = what()
        if got:
            return got
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


@pytest.fixture
def serve(demo_index, tmp_path):
    """Start `lookalike serve INDEX --workers 2` on a free loopback port; waits until it answers.
    Yields (process, port, log path); whatever is left is killed at the end."""
    started: list[tuple[subprocess.Popen, bytes]] = []

    def start() -> tuple[subprocess.Popen, int, Path]:
        port, log = _free_port(), tmp_path / f"serve-{len(started)}.log"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        args = [sys.executable, "-m", "lookalike", "serve", str(demo_index), "--port", str(port), "--workers", "2"]
        with log.open("w") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
        started.append((proc, b"".join(a.encode() + b"\0" for a in args)))

        def answers() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return _get(port, timeout=2) == 200
            except OSError:
                return False

        _wait_for(answers, 60, log)
        _wait_for(lambda: len(_workers(proc.pid)) == 2, 10, log)
        return proc, port, log

    yield start
    for proc, cmdline in started:  # the port in the command line makes it this test's, orphans included
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for pid in _running(cmdline):
            os.kill(pid, signal.SIGKILL)


def test_a_killed_worker_is_replaced_and_its_death_logged(serve):
    proc, port, log = serve()
    before = _workers(proc.pid)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)

    def replaced() -> set[int] | None:
        now = _workers(proc.pid)
        return now if len(now) == 2 and victim not in now else None

    now = _wait_for(replaced, 10, log)
    assert len(now - before) == 1
    # fresh connections land on both workers' sockets (SO_REUSEPORT spreads them): all answered
    assert [_get(port) for _ in range(16)] == [200] * 16
    text = log.read_text()
    assert f"worker {victim} was killed by SIGKILL (signal 9); starting another" in text
    assert f"http://127.0.0.1:{port}" in text  # the URL is on the terminal
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0, log.read_text()
    assert not any(_alive(pid) for pid in now) and _port_is_free(port)


def test_workers_die_with_their_parent(serve):
    """kill -9 of the parent: the kernel tells the workers (PR_SET_PDEATHSIG), they stop and
    free the port; nothing keeps serving as an orphan."""
    proc, port, log = serve()
    workers = _workers(proc.pid)
    proc.kill()
    proc.wait(timeout=10)
    _wait_for(lambda: not any(_alive(pid) for pid in workers), 5, log)
    _wait_for(lambda: _port_is_free(port), 5, log)


def test_a_crash_loop_stops_the_server_with_exit_1(serve):
    proc, port, log = serve()
    seen: set[int] = set()
    deadline = time.monotonic() + 20
    while proc.poll() is None:
        assert time.monotonic() < deadline, log.read_text()
        for pid in _workers(proc.pid) - seen:
            seen.add(pid)
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    assert proc.wait() == 1
    text = log.read_text()
    assert f"{MAX_WORKER_DEATHS} worker deaths within 60 s, a crash loop: stopping the server" in text
    assert text.count("was killed by SIGKILL (signal 9)") == MAX_WORKER_DEATHS
    assert not any(_alive(pid) for pid in seen) and _port_is_free(port)


def test_workers_that_fail_at_start_are_a_crash_loop_too(tmp_path):
    """Workers that exit by themselves (here: the server raises as it starts) are deaths like
    any other, named by their exit status; the supervisor stops after MAX_WORKER_DEATHS."""
    script = (
        "import socket, sys, types\n"
        "from lookalike.server.supervisor import Supervisor\n"
        "class Server:\n"
        "    def __init__(self, config): self.started = False\n"
        "    def run(self, sockets): raise RuntimeError('the app would not start')\n"
        "sockets = [socket.socket() for _ in range(2)]\n"
        "config = types.SimpleNamespace(host='127.0.0.1', port=1)\n"
        "sys.exit(Supervisor(types.SimpleNamespace(Server=Server), config, sockets).run())\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("exited with status 1") == MAX_WORKER_DEATHS, done.stderr
    assert "RuntimeError: the app would not start" in done.stderr and "a crash loop" in done.stderr
