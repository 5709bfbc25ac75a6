"""End to end: ``lookalike app`` on loopback, driven by Debian's Chromium through Playwright, on the
demo sample, the 2,906-product reference catalogue and store-demos (prices; a copy, for the pins)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.streamlit_page import (
    CARD_BOXES,
    CHROMIUM,
    LOADED_CARDS,
    browser,
    choose,
    open_expander,
    open_page,
    press_on_thumb,
    serve,
    settle,
    type_into,
    wait_for_cards,
)

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
#: the ids of the browse tiles (one per "Show" button), in order
TILE_IDS = """() => [...document.querySelectorAll('button')]
    .filter(b => b.innerText.trim() === 'Show')
    .map(b => b.closest('[data-testid="stVerticalBlock"]').innerText.match(/id (\\S+)/)[1])"""

if not CHROMIUM.is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (bash scripts/test-deps.sh, as root)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the Python package) is not installed")
pytest.importorskip("streamlit", reason="streamlit (extra: ui) is not installed")


def _caption(page) -> str:
    return page.locator('[data-testid="stMain"] [data-testid="stCaptionContainer"]').first.inner_text()


def test_type_an_id_and_see_five_photos(demo_index, demo_rec):
    expected = demo_rec.similar("13683", k=5, same="Gender").ids
    title = demo_rec.product("13683")["ProductTitle"]
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "app-13683.png"
    with serve(demo_index) as url, sync_api.sync_playwright() as p, browser(p) as b:
        page = open_page(b, url, height=1500)
        type_into(page, "Product id", "13683")
        page.get_by_role("heading", name=title).wait_for(timeout=30_000)
        cards = wait_for_cards(page, expected)
        page.screenshot(path=str(shot), full_page=True)
        assert len(cards) == 5
        assert [demo_rec.product(pid)["Gender"] for pid in expected] == ["Men"] * 5
        assert page.get_by_role("button", name="More like this").count() == 5
        assert page.get_by_role("button", name="Pin", exact=True).count() == 0  # read-only by default
    assert shot.stat().st_size > 10_000


def test_search_a_word_and_step_to_a_category_on_2906_products(fashion_hnsw_index):
    from lookalike import Recommender
    from lookalike.search.browse import ProductFinder

    rec = Recommender.load(fashion_hnsw_index)
    finder = ProductFinder.of(rec)
    steps = finder.facets.conditions({"Gender": ["Men"], "SubCategory": ["Shoes"]})
    with serve(fashion_hnsw_index, "--photo-credit", "Photos: Kaggle Fashion Images (Myntra)") as url, \
            sync_api.sync_playwright() as p, browser(p) as b:
        page = open_page(b, url, height=1300)
        page.get_by_text("Browse", exact=True).click()
        settle(page)
        assert _caption(page).startswith("2,906 products")
        choose(page, "Gender", "Men")
        choose(page, "SubCategory", "Shoes")
        assert _caption(page).startswith(f"{len(finder.find(where=steps))} products")
        type_into(page, "Search", "brown formal")
        found = finder.find("brown formal", where=steps)
        assert 0 < len(found) < 50
        assert _caption(page).startswith(f"{len(found)} products")
        shown = page.evaluate(TILE_IDS)
        assert shown == found.page(1, 18)  # the tiles: the library's products, in its order
        first = found.ids[0]
        page.get_by_role("button", name="Show", exact=True).first.click()
        page.get_by_role("heading", name=rec.product(first)["ProductTitle"]).wait_for(timeout=30_000)
        want = rec.similar(first, k=5, same="Gender", explain=True)
        cards = wait_for_cards(page, want.ids)
        assert all("shape " in text and "colour " in text for text in cards)  # explained
        # the cards line up: photo boxes, titles and buttons at one height in every card
        boxes = page.evaluate(f"({CARD_BOXES})()")
        for key in ("imgTop", "imgHeight", "titleTop", "titleHeight", "buttonTop"):
            assert max(b[key] for b in boxes) - min(b[key] for b in boxes) < 1.5, (key, boxes)
        assert page.get_by_text("Photos: Kaggle Fashion Images (Myntra)").is_visible()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "app-browse-2906.png"))


def test_price_range_boost_and_a_pin_when_writes_are_allowed(store_index, tmp_path):
    from lookalike import Recommender

    index = tmp_path / "index"
    shutil.copytree(store_index, index)
    rec = Recommender.load(index)
    with serve(index, "--allow-writes") as url, sync_api.sync_playwright() as p, browser(p) as b:
        page = open_page(b, url, height=1800)
        type_into(page, "Product id", "oc-44")
        wait_for_cards(page, rec.similar("oc-44", k=5).ids)
        open_expander(page, "Filters")
        press_on_thumb(page, "price", 1, "ArrowLeft")  # 2000 → 1999: the MacBook Pro (2000) leaves
        where = ["price=16..1999"]
        ranged = rec.similar("oc-44", k=5, where=where).ids
        assert "oc-45" in rec.similar("oc-44", k=5).ids and "oc-45" not in ranged
        wait_for_cards(page, ranged)
        open_expander(page, "Steer")
        box = page.get_by_role("textbox", name="Boosts, one a line")
        box.fill("price<150:+0.1")
        box.press("Control+Enter")
        boosted = rec.similar("oc-44", k=5, where=where, boost=["price<150:+0.1"], explain=True)
        assert boosted.ids != ranged
        cards = wait_for_cards(page, boosted.ids)
        assert all("price<150:+0.1" in text for text in cards)
        pinned = boosted.ids[3]
        page.get_by_role("button", name="Pin", exact=True).nth(3).click()
        settle(page)
        cards = wait_for_cards(page, [pinned, *[i for i in boosted.ids if i != pinned]])
        assert "pinned at rank 1" in cards[0]
        assert [str(r) for r in Recommender.load(index).rules] == [f"pin {pinned} at rank 1 for oc-44"]
        assert page.evaluate(f"({LOADED_CARDS})()")[0] == cards[0]
