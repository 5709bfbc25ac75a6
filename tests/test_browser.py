"""End to end: ``lookalike app`` on loopback, driven by Debian's Chromium through Playwright."""

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

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

if not CHROMIUM.is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the Python package) is not installed")
pytest.importorskip("streamlit", reason="streamlit (extra: ui) is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"lookalike app exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"lookalike app did not answer on {url} within {timeout} s")


@pytest.fixture
def server(demo_index):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "lookalike", "app", str(demo_index), "--host", "127.0.0.1", "--port", str(port)]
    env = {k: v for k, v in os.environ.items() if k != "LOOKALIKE_INDEX"}
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
                os.killpg(proc.pid, signal.SIGKILL)  # the group this test started
                proc.wait()
        if proc.stdout:
            proc.stdout.close()


# result cards (one per "More like this" button) whose photo has loaded
_LOADED_CARDS = """() => [...document.querySelectorAll('button')]
    .filter(b => b.innerText.trim() === 'More like this')
    .map(b => b.closest('[data-testid="stVerticalBlock"]'))
    .filter(card => {
        const img = card && card.querySelector('img');
        return img && img.complete && img.naturalWidth > 0;
    })
    .map(card => card.innerText)"""


def test_type_an_id_and_see_five_photos(server, demo_rec):
    expected = demo_rec.similar("13683", k=5, same="Gender").ids
    title = demo_rec.product("13683")["ProductTitle"]
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "app-13683.png"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1500})
            page.goto(server)
            box = page.get_by_label("Product id")
            box.wait_for(timeout=60_000)
            box.fill("13683")
            box.press("Enter")
            page.get_by_role("heading", name=title).wait_for(timeout=30_000)
            # wait until the five cards are this query's results and their photos have loaded
            page.wait_for_function(
                f"""() => {{
                    const cards = ({_LOADED_CARDS})();
                    const want = {expected!r};
                    return cards.length === 5 && want.every((id, i) => cards[i].includes(`id ${{id}} ·`));
                }}""",
                timeout=30_000,
            )
            page.wait_for_timeout(300)  # let the last photos paint
            page.screenshot(path=str(shot), full_page=True)
            cards = page.evaluate(f"({_LOADED_CARDS})()")
            assert len(cards) == 5
            assert [demo_rec.product(pid)["Gender"] for pid in expected] == ["Men"] * 5
            assert page.get_by_role("button", name="More like this").count() == 5
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
