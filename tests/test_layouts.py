"""Platform exports as they come (reading/layouts, ``build --layout``): a file in each platform's
published layout, written from the 25 real products of ../shared/datasets/store-demos, builds
into the index a user expects. Photo URLs are served by a loopback HTTP server the fixture starts."""

from __future__ import annotations

import csv
import functools
import json
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from xml.sax.saxutils import escape

import pandas as pd
import pytest

from lookalike import Recommender
from lookalike.cli import main
from lookalike.errors import CatalogError
from lookalike.reading.layouts import LAYOUTS, read_layout


@pytest.fixture(scope="module")
def store(store_dir) -> pd.DataFrame:
    t = pd.read_csv(store_dir / "catalog.csv", dtype=str, keep_default_na=False)
    t["photos"] = t["images"].str.split("|")
    return t


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def cdn(store_dir):
    """The store's photos at http://127.0.0.1:PORT/<path>, as a shop's CDN serves them."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(store_dir / "images")))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    thread.join(5)


CAMERAS = ("oc-30", "oc-31")  # variants of one parent in the files below


def _shopify(store: pd.DataFrame, cdn: str, out: Path) -> Path:
    """Shopify's product CSV: a product's first row holds its cells and first variant; later rows
    of its Handle hold another variant, or one more image (Image Src, Image Position) alone."""
    header = ["Handle", "Title", "Body (HTML)", "Vendor", "Type", "Tags", "Published", "Option1 Name",
              "Option1 Value", "Variant SKU", "Variant Price", "Image Src", "Image Position", "Image Alt Text",
              "Variant Image", "Status"]
    rows = []
    for _, p in store.iterrows():
        photos = p["photos"]
        rows.append({"Handle": p["product_id"], "Title": p["name"], "Body (HTML)": f"<p>{p['name']}</p>",
                     "Vendor": p["platform"], "Type": p["category"], "Published": "TRUE", "Option1 Name": "Size",
                     "Option1 Value": "M", "Variant SKU": f"{p['product_id']}-M", "Variant Price": p["price"],
                     "Image Src": cdn + photos[-1], "Image Position": str(len(photos)), "Status": "active"})
        rows.append({"Handle": p["product_id"], "Option1 Value": "L", "Variant SKU": f"{p['product_id']}-L",
                     "Variant Price": str(float(p["price"]) + 5)})
        rows += [{"Handle": p["product_id"], "Image Src": cdn + ph, "Image Position": str(n)}
                 for n, ph in enumerate(photos[:-1], 1)]
    path = out / "products_export.csv"
    pd.DataFrame(rows, columns=header).fillna("").to_csv(path, index=False)
    return path


def _magento(store: pd.DataFrame, media: Path, out: Path) -> Path:
    """Magento 2's export: media paths rooted at pub/media/catalog/product (``/o/p/oc_x.jpg``),
    additional_images comma-separated, a configurable parent naming its simples, a store view row."""
    def rooted(photo: str) -> str:
        name = photo.replace("/", "_")
        (media / name[0] / name[1]).mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(store.attrs["images"]) / photo, media / name[0] / name[1] / name)
        return f"/{name[0]}/{name[1]}/{name}"

    rows = []
    for _, p in store.iterrows():
        paths = [rooted(ph) for ph in p["photos"]]
        rows.append({"sku": p["product_id"], "store_view_code": "", "product_type": "simple", "name": p["name"],
                     "price": p["price"], "visibility": "Catalog, Search", "base_image": paths[0],
                     "additional_images": ",".join(paths[1:]), "configurable_variations": ""})
    rows.append({"sku": "cameras", "store_view_code": "", "product_type": "configurable", "name": "Cameras",
                 "price": "", "visibility": "Catalog, Search", "base_image": rows[2]["base_image"],
                 "additional_images": "", "configurable_variations": "|".join(
                     f"sku={s},color=Black" for s in CAMERAS)})
    rows.append({**rows[0], "store_view_code": "fr", "name": "Traduction"})
    path = out / "catalog_product.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _merchant(store: pd.DataFrame, cdn: str, out: Path, xml: bool) -> Path:
    """A Merchant Center feed: image_link, additional_image_link, item_group_id for variants."""
    items = [{"id": p["product_id"], "title": p["name"], "price": f"{p['price']} USD", "condition": "new",
              "item_group_id": "cameras" if p["product_id"] in CAMERAS else "",
              "image_link": cdn + p["photos"][0], "additional_image_link": [cdn + ph for ph in p["photos"][1:]]}
             for _, p in store.iterrows()]
    if not xml:
        path = out / "feed.tsv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(list(items[0]))
            w.writerows([[",".join(v) if isinstance(v, list) else v for v in it.values()] for it in items])
        return path
    parts = ['<?xml version="1.0"?>\n<rss xmlns:g="http://base.google.com/ns/1.0" version="2.0"><channel>'
             "<title>store</title>"]
    for it in items:
        fields = "".join(f"<g:{k}>{escape(u)}</g:{k}>" for k, v in it.items() for u in (v if isinstance(v, list) else [v]))
        parts.append(f"<item>{fields}</item>")
    path = out / "feed.xml"
    path.write_text("".join(parts) + "</channel></rss>\n")
    return path


def _woocommerce(store: pd.DataFrame, cdn: str, out: Path) -> Path:
    """WooCommerce's product CSV: Images as comma-separated URLs, a variable product and its
    variations under ``Parent`` (``id:N`` or the parent's SKU)."""
    camera = store.loc[store["product_id"] == CAMERAS[0], "photos"].iat[0][0]
    rows = [{"ID": "100", "Type": "variable", "SKU": "cameras", "Name": "Cameras", "Parent": "", "Regular price": "",
             "Categories": "Cameras", "Images": cdn + camera}]
    for n, (_, p) in enumerate(store.iterrows(), 1):
        parent = {"oc-30": "id:100", "oc-31": "cameras"}.get(p["product_id"], "")
        rows.append({"ID": str(n), "Type": "variation" if parent else "simple", "SKU": p["product_id"],
                     "Name": p["name"], "Parent": parent, "Regular price": p["price"], "Categories": p["category"],
                     "Images": ", ".join(cdn + ph for ph in p["photos"])})
    path = out / "wc-product-export.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory, store, store_dir, cdn) -> dict[str, tuple[Path, Path]]:
    """Each layout's file and its --images folder."""
    out = tmp_path_factory.mktemp("platforms")
    store.attrs["images"] = str(store_dir / "images")
    media = out / "pub" / "media" / "catalog" / "product"
    return {"shopify": (_shopify(store, cdn, out), out), "magento": (_magento(store, media, out), media),
            "merchant": (_merchant(store, cdn, out, xml=False), out),
            "merchant-xml": (_merchant(store, cdn, out, xml=True), out),
            "woocommerce": (_woocommerce(store, cdn, out), out)}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_each_readers_products_photos_and_parents(files, store, layout):
    path, _ = files[layout]
    laid = read_layout(path, layout)
    opts = laid.options()
    table = laid.table.set_index(opts["id_column"])
    sku = {str(i): p for i, p in zip(range(1, 26), store["product_id"])}
    key = (lambda pid: next(k for k, v in sku.items() if v == pid)) if layout == "woocommerce" else (lambda pid: pid)
    for _, p in store.iterrows():
        cells = table.loc[key(p["product_id"])]
        photos = [x.strip() for c in opts["image_column"] for x in str(cells[c]).split(opts["image_separator"])
                  if x.strip()]
        assert [Path(x).name.split("_", 1)[-1] if layout == "magento" else x.rsplit("/", 1)[-1] for x in photos] == \
            [ph.rsplit("/", 1)[-1] for ph in p["photos"]]
    if opts["parent_column"]:
        parents = {c: table.loc[key(c), opts["parent_column"]] for c in CAMERAS}
        assert set(parents.values()) == {"100" if layout == "woocommerce" else "cameras"}
    assert len(laid.table) == {"shopify": 25, "magento": 26, "woocommerce": 26}.get(layout, 25)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_each_layout_builds_as_documented(files, layout, tmp_path, capsys, restore_logging):
    path, images = files[layout]
    out = tmp_path / "index"
    code = main(["build", "--layout", layout, str(path), "--images", str(images), "--out", str(out), "--quiet"])
    said = capsys.readouterr()
    assert code == 0, said
    rec = Recommender.load(out)
    extra = {"magento": 1, "woocommerce": 1}.get(layout, 0)  # the configurable / variable parent
    assert len(rec) == 25 + extra and rec.n_rows == 97 + extra
    assert rec.settings.catalog.layout == layout
    ids = {p: p for p in rec.products}
    if layout == "woocommerce":
        ids = {rec.product(p)["SKU"]: p for p in rec.products}
    first, second = ids[CAMERAS[0]], ids[CAMERAS[1]]
    if layout != "shopify":  # variants of one parent are not recommended for one another
        assert second not in rec.similar(first, k=25).ids
        assert second in rec.similar(first, k=25, siblings=True).ids
    else:
        assert second in rec.similar(first, k=25).ids
    if layout in ("shopify", "woocommerce"):  # a sync of the same file fetches again only what changed
        code = main(["sync", str(out), str(path), "--images", str(images), "--format", "json", "--quiet"])
        assert code == 0
        counts = json.loads(capsys.readouterr().out)["counts"]
        assert counts["unchanged"] == 25 + extra and counts["re-embedded"] == counts["added"] == 0


def test_a_broken_file_is_one_line(tmp_path, capsys, restore_logging):
    bad = tmp_path / "feed.xml"
    bad.write_text('<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY x "y">]><rss><channel><item/></channel></rss>')
    with pytest.raises(CatalogError, match="DTD or entities"):
        read_layout(bad, "merchant-xml")
    other = tmp_path / "p.csv"
    other.write_text("sku,name\na,b\n")
    with pytest.raises(CatalogError, match="not a Shopify product CSV: no column 'Handle'"):
        read_layout(other, "shopify")
    code = main(["build", "--layout", "nope", str(other), "--out", str(tmp_path / "i")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err == ["lookalike: error: unknown layout 'nope'; choose one of "
                                 "shopify, magento, merchant, merchant-xml, woocommerce"]
    code = main(["build", "--layout", "shopify", str(other), "--id-column", "sku", "--out", str(tmp_path / "i")])
    assert code == 1 and "--layout names the id" in capsys.readouterr().err
