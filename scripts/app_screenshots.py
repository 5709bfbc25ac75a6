"""The screenshots of docs/app.md: ``lookalike app`` in headless Chromium (Debian's, through
Playwright) on the 2,906-product reference catalogue and on store-demos (prices, several photos).

    python scripts/app_screenshots.py [--fashion-index DIR] [--store-index DIR] [--out docs/img]

Without an index folder the script builds one in a temporary folder (about 30 s for the
reference catalogue on 2 cores). store-demos is served from a copy with ``--allow-writes``, so
the pin it makes never touches the index given.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.streamlit_page import (  # noqa: E402
    browser,
    choose,
    open_expander,
    open_page,
    press_on_thumb,
    serve,
    settle,
    shoot,
    type_into,
    wait_for_cards,
)

SHARED = ROOT.parent / "shared" / "datasets"
FASHION_CREDIT = "Photos: Kaggle Fashion Images data set (Myntra)"
STORE_CREDIT = "Photos: OpenCart and PrestaShop demo data (licences in ../shared/datasets/store-demos/README.md)"


def _indexes(args: argparse.Namespace, tmp: Path) -> tuple[Path, Path]:
    from lookalike import build

    fashion, store = args.fashion_index, args.store_index
    if fashion is None:
        fashion = tmp / "fashion"
        build(SHARED / "fashion-images" / "fashion.csv", fashion, backend="hnsw", photo_credit=FASHION_CREDIT)
    if store is None:
        store = tmp / "store"
        build(SHARED / "store-demos" / "catalog.csv", store, images=SHARED / "store-demos" / "images",
              id_column="product_id", image_column="images", photo_credit=STORE_CREDIT)
    copy = tmp / "store-copy"
    shutil.copytree(store, copy)
    return Path(fashion), copy


def fashion_shots(pw, index: Path, out: Path) -> None:
    from lookalike import Recommender

    rec = Recommender.load(index)
    with serve(index, "--photo-credit", FASHION_CREDIT) as url, browser(pw) as b:
        page = open_page(b, url, width=1400, height=1200)
        type_into(page, "Product id", "13683")
        wait_for_cards(page, rec.similar("13683", k=5, same="Gender").ids)
        shoot(page, out / "app-recommendations.png")

        page.get_by_text("Browse", exact=True).click()
        settle(page)
        choose(page, "Gender", "Men")
        choose(page, "SubCategory", "Shoes")
        type_into(page, "Search", "brown formal")
        shoot(page, out / "app-browse.png")

        page.get_by_text("By photo", exact=True).click()
        settle(page)
        photo = rec.image_path("13683")
        page.locator('input[type="file"]').set_input_files(str(photo))
        settle(page)
        open_expander(page, "Search with a region of the photo")
        press_on_thumb(page, "from left to right (%)", 1, "ArrowLeft", 45)
        press_on_thumb(page, "from top to bottom (%)", 0, "ArrowRight", 30)
        shoot(page, out / "app-photo-region.png")

        page.get_by_text("Catalogue", exact=True).click()
        settle(page)
        shoot(page, out / "app-catalogue.png")


def store_shots(pw, index: Path, out: Path) -> None:
    from lookalike import Recommender

    rec = Recommender.load(index)
    with serve(index, "--allow-writes") as url, browser(pw) as b:
        page = open_page(b, url, width=1400, height=1200)
        type_into(page, "Product id", "oc-44")
        wait_for_cards(page, rec.similar("oc-44", k=5).ids)
        open_expander(page, "Filters")
        press_on_thumb(page, "price", 1, "ArrowLeft", 1)  # 2000 → 1999: leaves out the MacBook Pro
        open_expander(page, "Steer")
        box = page.get_by_role("textbox", name="Boosts, one a line")
        box.fill("price<150:+0.1")
        box.press("Control+Enter")
        settle(page)
        want = rec.similar("oc-44", k=5, where=["price=16..1999"], boost=["price<150:+0.1"])
        wait_for_cards(page, want.ids)
        page.get_by_role("button", name="Pin", exact=True).nth(3).click()
        settle(page)
        shoot(page, out / "app-steer.png")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fashion-index", type=Path, default=None)
    p.add_argument("--store-index", type=Path, default=None)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = p.parse_args(argv)
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        fashion, store = _indexes(args, Path(tmp))
        fashion_shots(pw, fashion, args.out)
        store_shots(pw, store, args.out)
    for png in sorted(args.out.glob("app-*.png")):
        print(png.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
