"""Start the web page (``lookalike/app.py``) with Streamlit as a child process."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from lookalike.errors import require
from lookalike.folder.store import Store

logger = logging.getLogger(__name__)

__all__ = ["run_app", "app_command", "app_environment", "APP_SCRIPT", "DEFAULT_APP_HOST", "DEFAULT_APP_PORT",
           "DEFAULT_MAX_UPLOAD_MB", "CREDIT_ENV", "WRITES_ENV"]

APP_SCRIPT = Path(__file__).with_name("app.py")
DEFAULT_APP_HOST = "127.0.0.1"
DEFAULT_APP_PORT = 8501
#: the largest photo the page accepts, as the HTTP service
DEFAULT_MAX_UPLOAD_MB = 10
#: the page's photo credit (unset: the index's), and "1" to let it change the index's rules
CREDIT_ENV = "LOOKALIKE_APP_CREDIT"
WRITES_ENV = "LOOKALIKE_APP_WRITES"


def app_command(index_path: str | os.PathLike, *, host: str = DEFAULT_APP_HOST, port: int = DEFAULT_APP_PORT) -> list[str]:
    """The command line that serves the page for one index folder."""
    return [
        sys.executable, "-m", "streamlit", "run", str(APP_SCRIPT),
        "--server.address", host,
        "--server.port", str(port),
        "--server.headless", "true",
        "--server.fileWatcherType", "none",
        "--server.maxUploadSize", str(DEFAULT_MAX_UPLOAD_MB),
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",
        "--", str(index_path),
    ]


def _open_when_ready(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    import webbrowser

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:  # noqa: S310 - loopback
                if r.status == 200:
                    webbrowser.open(url)
                    return
        except OSError:
            time.sleep(0.5)


def app_environment(index_path: str | os.PathLike, *, photo_credit: str | None = None,
                    allow_writes: bool = False) -> dict[str, str]:
    """What the page reads from its environment: the index (``LOOKALIKE_INDEX``), the photo
    credit (``LOOKALIKE_APP_CREDIT``; unset: the index's own) and whether it may change the
    index's rules (``LOOKALIKE_APP_WRITES=1``; read-only otherwise)."""
    env = {"LOOKALIKE_INDEX": str(index_path)}
    if photo_credit is not None:
        env[CREDIT_ENV] = photo_credit
    if allow_writes:
        env[WRITES_ENV] = "1"
    return env


def run_app(
    index_path: str | os.PathLike,
    *,
    host: str = DEFAULT_APP_HOST,
    port: int = DEFAULT_APP_PORT,
    open_browser: bool = False,
    photo_credit: str | None = None,
    allow_writes: bool = False,
) -> int:
    """Serve the web page over an index until the server stops; returns its exit code.

    ``photo_credit`` is shown under the photos (``None``: the credit the index records, if any);
    ``allow_writes`` lets the page pin and block products (:meth:`IndexWriter.change_rules
    <lookalike.writing.writer.IndexWriter.change_rules>`); without it the page only reads.

    The index is checked first, so a wrong folder fails at once with an
    :class:`~lookalike.errors.IndexFormatError`; a missing Streamlit raises
    :class:`~lookalike.errors.MissingDependencyError` naming the ``ui`` extra.
    """
    require("streamlit", "ui")
    require("matplotlib", "ui")
    index = Path(index_path).expanduser().resolve()
    Store(index).snapshot()  # a wrong or damaged folder fails here, with one line
    env = {**os.environ, **app_environment(index, photo_credit=photo_credit, allow_writes=allow_writes)}
    cmd = app_command(index, host=host, port=port)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"
    logger.info("web page for %s on %s", index, url)
    proc = subprocess.Popen(cmd, env=env)
    if open_browser:
        threading.Thread(target=_open_when_ready, args=(url, proc), daemon=True).start()
    # a SIGTERM to us stops the page too (Ctrl-C reaches both through the terminal)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
