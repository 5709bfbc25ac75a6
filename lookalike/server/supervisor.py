"""Pre-forked workers and the parent that supervises them.

``prefork`` opens one listening socket per worker (SO_REUSEPORT, TCP_NODELAY) and hands them to
:class:`Supervisor`, which forks the workers from the loaded parent (the index shared
copy-on-write), replaces one that dies, stops the server on a crash loop, and passes SIGTERM and
SIGINT on. Workers die with the parent, however it dies.
"""

import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["prefork", "Supervisor", "MAX_WORKER_DEATHS", "WORKER_DEATHS_WINDOW", "SHUTDOWN_GRACE"]


#: a crash loop: this many worker deaths within ``WORKER_DEATHS_WINDOW`` seconds stop ``serve``,
#: which then exits 1 (a service manager such as systemd restarts it or reports it failed)
MAX_WORKER_DEATHS = 5
WORKER_DEATHS_WINDOW = 60.0
#: seconds the workers get to finish their requests after SIGTERM; those still running are killed
SHUTDOWN_GRACE = 30.0
_STARTUP_FAILURE = 3  # uvicorn's exit status for a server that never started (uvicorn.config)


def prefork(uvicorn: Any, app: Any, host: str, port: int, workers: int, options: dict[str, Any]) -> int:
    """Serve ``app`` from ``workers`` processes forked from this one, until stopped; the exit code."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    def listener() -> socket.socket:
        # one socket per worker on the same port: with SO_REUSEPORT the kernel spreads new
        # connections evenly, where a shared socket lets whichever worker wakes first take
        # a burst of keep-alive connections (and keep them)
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(2048)
        return sock

    # built here, once: uvicorn sets up its loggers as it builds the config, so the parent's
    # lines look like the workers'; each worker loads the app from its own copy of it
    config = uvicorn.Config(app, host=host, port=port, **options)
    sockets = []
    try:
        for _ in range(workers):
            sockets.append(listener())
        return Supervisor(uvicorn, config, sockets).run()
    finally:
        for sock in sockets:
            sock.close()


class Supervisor:
    """The parent of pre-forked workers: replaces one that dies, stops on a crash loop, and
    passes SIGTERM/SIGINT on.

    Written here rather than taken from uvicorn or gunicorn: uvicorn's ``supervisors.Multiprocess``
    spawns fresh interpreters (each loads the index again: no copy-on-write sharing) that share
    one socket, and gunicorn's arbiter shares one socket too (plus a dependency and its worker
    class); neither keeps one SO_REUSEPORT socket per worker, and neither bounds a crash loop
    (uvicorn stops only when a worker fails to start; gunicorn restarts for ever).

    The parent keeps every worker's listening socket open, so a dead worker's socket, and the
    connections waiting in its queue, pass to its replacement instead of being reset. Workers
    get SIGTERM from the kernel when the parent dies (``PR_SET_PDEATHSIG`` on Linux, a watch of
    the parent elsewhere), so none keeps serving the port as an orphan.
    """

    def __init__(self, uvicorn: Any, config: Any, sockets: list[Any]) -> None:
        self.uvicorn, self.config, self.sockets = uvicorn, config, sockets
        self.parent = os.getpid()
        self.workers: dict[int, int] = {}  # pid -> the slot (socket) it serves
        self.deaths: list[float] = []
        self.stop_at: float | None = None  # when the workers were told to stop
        self.killed = False
        self.code = 0
        self._wake: tuple[int, int] = (-1, -1)
        self._handlers: dict[int, Any] = {}

    def run(self) -> int:
        import select
        import signal
        import time

        # signal handlers only note the signal (set_wakeup_fd writes its number to a pipe);
        # the loop below does the work, so a fork never happens inside a handler
        self._wake = os.pipe()
        for fd in self._wake:
            os.set_blocking(fd, False)
        watched = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
        self._handlers = {sig: signal.signal(sig, lambda *_: None) for sig in watched}
        old_wakeup = signal.set_wakeup_fd(self._wake[1])
        try:
            for slot in range(len(self.sockets)):
                self._start(slot)
            address = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
            logging.getLogger("uvicorn.error").info(  # the line `lookalike serve` shows with one worker too
                "Uvicorn running on http://%s:%d with %d workers (Press CTRL+C to quit)", address,
                self.config.port, len(self.sockets))
            while self.workers:
                ready, _, _ = select.select([self._wake[0]], [], [], 1.0)
                received = os.read(self._wake[0], 512) if ready else b""
                for signum in received:
                    if signum in (signal.SIGTERM, signal.SIGINT):
                        self._stop(signal.Signals(signum).name)
                self._reap()
                if self.stop_at is not None and not self.killed and time.monotonic() > self.stop_at + SHUTDOWN_GRACE:
                    for pid in self.workers:
                        logger.warning("worker %d did not stop within %g s: killing it", pid, SHUTDOWN_GRACE)
                        self._signal(pid, signal.SIGKILL)
                    self.killed = True
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in self._handlers.items():
                signal.signal(sig, handler)
            for fd in self._wake:
                os.close(fd)
        return self.code

    def _start(self, slot: int) -> None:
        import signal

        watched = set(self._handlers)
        signal.pthread_sigmask(signal.SIG_BLOCK, watched)  # none lands in the child before it resets them
        try:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                self._worker(slot)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, watched)
        self.workers[pid] = slot
        logger.debug("started worker %d", pid)

    def _worker(self, slot: int) -> None:  # pragma: no cover - runs in the child, never returns
        import signal

        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig, handler in self._handlers.items():
                signal.signal(sig, handler)
            for fd in self._wake:
                os.close(fd)
            for i, sock in enumerate(self.sockets):
                if i != slot:
                    sock.close()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, set(self._handlers))
            _die_with_parent(self.parent)
            server = self.uvicorn.Server(self.config)
            server.run(sockets=[self.sockets[slot]])
            code = 0 if server.started else _STARTUP_FAILURE
        except KeyboardInterrupt:  # uvicorn re-raises the SIGINT that stopped it
            code = 0
        except SystemExit as exc:  # uvicorn's own exit when the app's startup fails
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except BaseException:
            logger.exception("worker %d failed", os.getpid())
        finally:
            os._exit(code)

    def _reap(self) -> None:
        for pid in list(self.workers):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done == 0:
                continue
            slot = self.workers.pop(pid)
            if self.stop_at is None:
                self._died(pid, slot, status)

    def _died(self, pid: int, slot: int, status: int) -> None:
        import time

        now = time.monotonic()
        self.deaths = [t for t in self.deaths if t > now - WORKER_DEATHS_WINDOW] + [now]
        how = _exit_status(status)
        if len(self.deaths) >= MAX_WORKER_DEATHS:
            logger.error("worker %d %s: %d worker deaths within %g s, a crash loop: stopping the server", pid, how,
                         len(self.deaths), WORKER_DEATHS_WINDOW)
            self.code = 1
            self._stop("a crash loop")
            return
        logger.warning("worker %d %s; starting another (deaths within %g s: %d; %d stop the server)", pid, how,
                       WORKER_DEATHS_WINDOW, len(self.deaths), MAX_WORKER_DEATHS)
        self._start(slot)

    def _stop(self, why: str) -> None:
        import signal
        import time

        if self.stop_at is not None:  # a second Ctrl-C: the workers stop without waiting for requests
            for pid in self.workers:
                self._signal(pid, signal.SIGINT)
            return
        logger.info("stopping %d workers (%s)", len(self.workers), why)
        self.stop_at = time.monotonic()
        for sock in self.sockets:  # no new connections queue up for workers that are leaving
            sock.close()
        for pid in self.workers:
            self._signal(pid, signal.SIGTERM)

    @staticmethod
    def _signal(pid: int, signum: int) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:  # gone already; reaped on the next round
            pass


def _exit_status(status: int) -> str:
    """A wait status in words: ``was killed by SIGKILL (signal 9)``, ``exited with status 3``."""
    import signal

    if os.WIFSIGNALED(status):
        num = os.WTERMSIG(status)
        try:
            name = signal.Signals(num).name
        except ValueError:
            name = "an unknown signal"
        return f"was killed by {name} (signal {num})"
    return f"exited with status {os.WEXITSTATUS(status)}"


def _die_with_parent(parent: int) -> None:  # pragma: no cover - runs in the worker
    """Have this worker get SIGTERM when the supervisor dies, however it dies (kill -9 included).

    Linux: ``prctl(PR_SET_PDEATHSIG)``, then a check that the parent did not die before the call
    (the worker would never get the signal). Elsewhere a thread watches the parent.
    """
    import signal
    import sys

    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, signal.SIGTERM, 0, 0, 0) == 0:  # 1: PR_SET_PDEATHSIG
            if os.getppid() != parent:
                os._exit(1)
            return
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="lookalike-parent-watch", daemon=True).start()
