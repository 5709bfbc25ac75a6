"""Driving ``lookalike app`` in Debian's Chromium with Playwright: start the page on a free loopback
port, and the few gestures the browser tests and ``scripts/app_screenshots.py`` need (Streamlit's
widgets as a shopper uses them: clicks, typing, keys on a slider's thumb)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
#: the cards of the results grid (one per "More like this" button) whose photo has loaded: their text
LOADED_CARDS = """() => [...document.querySelectorAll('button')]
    .filter(b => b.innerText.trim() === 'More like this')
    .map(b => b.closest('[data-testid="stVerticalBlock"]'))
    .filter(card => {
        const img = card && card.querySelector('img');
        return img && img.complete && img.naturalWidth > 0;
    })
    .map(card => card.innerText)"""
#: where each card's photo box and title box sit (to check that cards line up)
CARD_BOXES = """() => [...document.querySelectorAll('button')]
    .filter(b => b.innerText.trim() === 'More like this')
    .map(b => b.closest('[data-testid="stVerticalBlock"]'))
    .map(card => {
        const img = card.querySelector('img').getBoundingClientRect();
        const title = card.querySelector('.lk-title').getBoundingClientRect();
        const more = [...card.querySelectorAll('button')].find(b => b.innerText.trim() === 'More like this')
            .getBoundingClientRect();
        return {imgTop: img.top, imgHeight: img.height, titleTop: title.top, titleHeight: title.height,
                buttonTop: more.top};
    })"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"lookalike app exited with {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:  # noqa: S310 - loopback
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"lookalike app did not answer on {url} within {timeout} s")


@contextlib.contextmanager
def serve(index: Path | str, *args: str) -> Iterator[str]:
    """``lookalike app INDEX ARGS`` on a free loopback port until the block ends; yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "lookalike", "app", str(index), "--host", "127.0.0.1", "--port", str(port), *args]
    env = {k: v for k, v in os.environ.items() if k not in ("LOOKALIKE_INDEX", "LOOKALIKE_APP_WRITES",
                                                             "LOOKALIKE_APP_CREDIT")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        _wait_healthy(url, proc)
        yield url
    finally:
        if proc.poll() is None:
            proc.terminate()  # run_app passes it on to Streamlit
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the group this helper started
                proc.wait()
        if proc.stdout:
            proc.stdout.close()


@contextlib.contextmanager
def browser(playwright: Any) -> Iterator[Any]:
    b = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
    try:
        yield b
    finally:
        b.close()


def open_page(b: Any, url: str, *, width: int = 1400, height: int = 1400) -> Any:
    page = b.new_page(viewport={"width": width, "height": height})
    page.goto(url)
    page.get_by_text("Find a product").wait_for(timeout=60_000)
    settle(page)  # the first run done: a gesture now never interrupts it
    return page


def settle(page: Any, timeout: float = 30_000) -> None:
    """Wait until Streamlit has finished its run (no running indicator) and photos have painted."""
    page.wait_for_timeout(200)  # let a gesture's rerun start
    page.wait_for_function(
        """() => {
            const app = document.querySelector('[data-testid="stApp"]');
            return app && app.dataset.testScriptState === 'notRunning'
                && !document.querySelector('[data-stale="true"]')
                && [...document.images].every(i => i.complete);
        }""", timeout=timeout)
    page.wait_for_timeout(150)


def wait_for_cards(page: Any, ids: list[str], timeout: float = 30_000) -> list[str]:
    """Wait until the results grid shows exactly ``ids``, in order, photos loaded; their texts."""
    page.wait_for_function(
        f"""() => {{
            const cards = ({LOADED_CARDS})();
            const want = {ids!r};
            return cards.length === want.length && want.every((id, i) => cards[i].includes(`id ${{id}} ·`));
        }}""",
        timeout=timeout,
    )
    settle(page)
    return page.evaluate(f"({LOADED_CARDS})()")


def choose(page: Any, label: str, option: str) -> None:
    """Pick ``option`` in the selectbox labelled ``label`` (its text starts with the option)."""
    box = page.locator('[data-testid="stSelectbox"]').filter(has=page.get_by_text(label, exact=True))
    box.click()
    page.get_by_role("option").filter(has_text=option).first.click()
    settle(page)


def type_into(page: Any, label: str, text: str) -> None:
    box = page.get_by_role("textbox", name=label, exact=True)
    box.fill(text)
    box.press("Enter")
    settle(page)


def open_expander(page: Any, title: str) -> None:
    page.locator('[data-testid="stExpander"] summary').filter(has_text=title).first.click()
    page.wait_for_timeout(200)


def press_on_thumb(page: Any, label: str, which: int, key: str, times: int = 1) -> None:
    """Press ``key`` ``times`` on thumb ``which`` (0: low, 1: high) of the slider labelled ``label``."""
    slider = page.locator('[data-testid="stSlider"]').filter(has=page.get_by_text(label, exact=True))
    thumb = slider.get_by_role("slider").nth(which)
    thumb.focus()
    for _ in range(times):
        thumb.press(key)
    settle(page)


def shoot(page: Any, path: Path | str, *, width: int = 1400) -> None:
    """A screenshot of the whole page: Streamlit scrolls inside its own containers, so the window
    is made as tall as their content first."""
    height = page.evaluate("""() => {
        document.querySelectorAll('*').forEach(el => { if (el.scrollTop) el.scrollTop = 0; });
        return Math.max(...['stMainBlockContainer', 'stSidebarUserContent']
            .map(id => document.querySelector(`[data-testid="${id}"]`))
            .filter(Boolean).map(el => el.getBoundingClientRect().bottom));
    }""")
    page.set_viewport_size({"width": width, "height": min(max(int(height) + 20, 700), 5000)})
    settle(page)
    page.screenshot(path=str(path))
