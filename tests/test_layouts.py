"""Platform exports as they come (reading/layouts, ``build --layout``): a file in each platform's
published layout, written from the 25 real products of ../shared/datasets/store-demos, builds
into the index a user expects. Photo URLs are served by a loopback HTTP server the fixture starts.

The second half reads the files of tests/platforms.py (the platforms' full headers, Shopify's
2024 one, Magento's store views, no_selection and hidden images, Merchant's XML nesting,
WooCommerce's escaped commas): each reader's products, photos in order and parents, its refusals
in one line, the generic loader's 97 photos, and an index built from each."""

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
import platforms
import pytest
from platforms import FAMILIES, GROUPS, Product

from lookalike import Recommender
from lookalike.cli import main
from lookalike.errors import CatalogError, InvalidQueryError
from lookalike.reading.catalog import load_catalog, split_photos
from lookalike.reading.layouts import LAYOUTS, LaidOut, read_layout


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


# == the platforms' files of tests/platforms.py ==================================================

@pytest.fixture(scope="module")
def products(store_dir) -> list[Product]:
    got = platforms.store_products(store_dir)
    assert len(got) == 25 and sum(len(p.photos) for p in got) == 97
    return got


@pytest.fixture(scope="module")
def url(store_dir):
    with platforms.photo_server(store_dir / "images") as url:
        yield url


@pytest.fixture(scope="module")
def exports(tmp_path_factory, store_dir, products, url) -> dict[str, Path]:
    """Every layout's file of the 25 products (and Magento's media folder, ``magento-media``)."""
    d = tmp_path_factory.mktemp("exports")
    return {
        "shopify": platforms.write_shopify(d / "products_export.csv", products, url),
        "shopify-2024": platforms.write_shopify(d / "products_export_1.csv", products, url, header="2024"),
        "magento": platforms.write_magento(d / "export_catalog_product.csv", products),
        "magento-media": platforms.magento_media(store_dir, products, d / "pub" / "media" / "catalog" / "product"),
        "merchant": platforms.write_merchant_tsv(d / "feed.txt", products, url),
        "merchant-xml": platforms.write_merchant_xml(d / "feed.xml", products, url),
        "woocommerce": platforms.write_woocommerce(d / "wc-product-export-3-12-2026.csv", products, url),
    }


def _photos(laid: LaidOut) -> dict[str, list[str]]:
    """Each product's photo references as the generic loader will split them."""
    t = laid.table
    return {str(pid): split_photos([str(t[c].iloc[i]) for c in laid.image_columns], laid.image_separator)
            for i, pid in enumerate(t[laid.id_column])}


def _parents(laid: LaidOut) -> dict[str, str]:
    assert laid.parent_column is not None
    t = laid.table
    return {str(a): str(b) for a, b in zip(t[laid.id_column], t[laid.parent_column]) if str(b)}


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert text and "\n" not in text, text
    return text


# -- the presets ---------------------------------------------------------------------------------

def test_every_layout_is_a_preset_the_reader_knows():
    assert list(LAYOUTS) == ["shopify", "magento", "merchant", "merchant-xml", "woocommerce"]
    for name, layout in LAYOUTS.items():
        assert layout.name == name and layout.image_columns and layout.description


def test_an_unknown_layout_lists_the_known_ones(tmp_path):
    (tmp_path / "x.csv").write_text("a\n1\n")
    with pytest.raises(InvalidQueryError) as exc:
        read_layout(tmp_path / "x.csv", "prestashop")
    assert "shopify, magento, merchant, merchant-xml, woocommerce" in _one_line(exc)


def test_a_missing_file_is_a_catalog_error(tmp_path):
    with pytest.raises(CatalogError) as exc:
        read_layout(tmp_path / "none.csv", "shopify")
    assert "not found" in _one_line(exc)


# -- readers: products, photos in order, parents -------------------------------------------------

@pytest.mark.parametrize("which", ["shopify", "shopify-2024"])
def test_shopify_a_handle_is_one_product_with_its_photos_by_position(exports, products, url, which):
    laid = read_layout(exports[which], "shopify")
    photos = _photos(laid)
    assert list(photos) == [p.id for p in products]
    assert photos == {p.id: [url(r) for r in p.photos] for p in products}  # SHUFFLED's rows too
    assert laid.parent_column is None and laid.image_separator == "|"
    assert laid.id_column == ("Handle" if which == "shopify" else "URL handle")
    first = laid.table.set_index(laid.id_column).loc["ps-1"]
    assert first["Title"] == "Faded Short Sleeves T-shirt"
    sku = "Variant SKU" if which == "shopify" else "SKU"
    assert first[sku] == "ps-1-S"  # the first variant's cells; ps-1-M's are left
    assert laid.file_row(2) == 4  # oc-28's 3 rows (a variant, 3 photos) come first


def test_magento_photos_parents_and_the_store_view_rows(exports, products):
    laid = read_layout(exports["magento"], "magento")
    photos = _photos(laid)
    assert list(photos) == [p.id for p in products]  # the fr row of oc-28 is left out
    assert photos == {p.id: [platforms.magento_path(r) for r in p.photos] for p in products}
    assert platforms.MAGENTO_HIDDEN[1] not in str(laid.table["additional_images"].tolist())
    assert "no_selection" not in laid.table["base_image"].tolist()
    assert _parents(laid) == FAMILIES
    assert laid.options() == {"id_column": "sku", "image_column": ["base_image", "additional_images"],
                              "image_separator": ",", "parent_column": "parent_sku"}
    assert laid.file_row(2) == 3  # row 2 of the file is oc-28's store view
    assert laid.table.set_index("sku").loc["oc-28", "name"] == "HTC Touch HD"


@pytest.mark.parametrize("name", ["merchant", "merchant-xml"])
def test_merchant_feeds_name_images_and_item_groups(exports, products, url, name):
    laid = read_layout(exports[name], name)
    assert _photos(laid) == {p.id: [url(r) for r in p.photos] for p in products}
    assert _parents(laid) == GROUPS
    row = laid.table.set_index("id").loc["oc-30"]
    assert row["title"] == "Canon EOS 5D" and row["price"] == "100.00 USD"
    assert row["shipping"] == "US:CA:Ground:5.00 USD"


def test_woocommerce_parent_by_sku_or_id_becomes_the_parents_id(exports, products, url):
    laid = read_layout(exports["woocommerce"], "woocommerce")
    ids = {p.id: platforms.woo_id(products, p.id) for p in products}
    assert _photos(laid) == {ids[p.id]: [url(r) for r in p.photos] for p in products}
    assert _parents(laid) == {ids[child]: ids[parent] for child, parent in FAMILIES.items()}
    t = laid.table.set_index("SKU")
    assert t.loc["ps-6", "Parent"] == f"id:{ids['ps-5']}" and t.loc["ps-4", "Parent"] == "ps-3"  # kept as written


# -- readers: what the platforms write at their edges --------------------------------------------

def test_woocommerce_escaped_commas_and_a_file_without_ids(tmp_path):
    path = tmp_path / "import.csv"
    path.write_text('ID,Type,SKU,Name,Parent,Images\n'
                    ',variable,tee,Tee,,"https://x.test/a\\,b.jpg, https://x.test/c.jpg"\n'
                    ',variation,tee-red,Tee - Red,tee,https://x.test/d.jpg\n')
    laid = read_layout(path, "woocommerce")
    assert laid.id_column == "SKU"
    assert _photos(laid) == {"tee": ["https://x.test/a%2Cb.jpg", "https://x.test/c.jpg"],
                             "tee-red": ["https://x.test/d.jpg"]}
    assert _parents(laid) == {"tee-red": "tee"}


def test_shopify_variant_images_the_file_does_not_list_come_last(tmp_path):
    path = tmp_path / "products_export.csv"
    path.write_text("Handle,Title,Option1 Value,Image Src,Image Position,Variant Image\n"
                    "tee,Tee,S,https://x.test/b.jpg,2,https://x.test/b.jpg\n"
                    "tee,,M,https://x.test/a.jpg,1,https://x.test/m.jpg\n")
    assert _photos(read_layout(path, "shopify")) == {"tee": ["https://x.test/a.jpg", "https://x.test/b.jpg",
                                                             "https://x.test/m.jpg"]}


def test_merchant_atom_feed_and_plain_rss_elements(tmp_path):
    path = tmp_path / "feed.atom"
    path.write_text(
        '<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom" xmlns:g="http://base.google.com/ns/1.0">'
        '<title>shop</title><entry><g:id>A1</g:id><title>RSS title</title><g:title>G title</g:title>'
        '<link href="https://shop.test/a1"/><g:image_link>https://x.test/a,1.jpg</g:image_link>'
        '<g:additional_image_link>https://x.test/a2.jpg</g:additional_image_link>'
        '<g:additional_image_link>https://x.test/a3.jpg</g:additional_image_link></entry></feed>')
    laid = read_layout(path, "merchant-xml")
    row = laid.table.iloc[0]
    assert (row["id"], row["title"], row["link"]) == ("A1", "G title", "https://shop.test/a1")
    assert _photos(laid) == {"A1": ["https://x.test/a%2C1.jpg", "https://x.test/a2.jpg", "https://x.test/a3.jpg"]}
    assert laid.parent_column is None  # no item_group_id in this feed


def test_rows_cut_short_are_the_readers_problems(tmp_path, exports):
    text = exports["magento"].read_text().rstrip("\n")
    cut = tmp_path / "cut.csv"
    cut.write_text(text[: text.rindex(",")])  # the last row ends mid-way, no newline: a truncated export
    laid = read_layout(cut, "magento")
    assert len(laid.table) == 24 and len(laid.problems) == 1
    assert laid.problems[0].id == "ps-7" and "cut short" in laid.problems[0].reason


# -- readers: broken files, one line each --------------------------------------------------------

@pytest.mark.parametrize("name, text, says", [
    ("shopify", "Title,Vendor\nA,B\n", "no column 'Handle', 'Image Src' (nor the 2024 export's 'URL handle')"),
    ("magento", "sku,name\nA,B\n", "no column 'base_image'"),
    ("merchant", "id\ttitle\nA\tB\n", "no column 'image_link'"),
    ("woocommerce", "ID,Name\n1,B\n", "no column 'Images'"),
    ("shopify", 'Handle,Image Src\na,"unclosed\n', "ends inside a quoted field"),
])
def test_a_file_of_another_layout_is_refused_in_one_line(tmp_path, name, text, says):
    path = tmp_path / "file.csv"
    path.write_text(text)
    with pytest.raises(CatalogError) as exc:
        read_layout(path, name)
    assert says in _one_line(exc)


@pytest.mark.parametrize("text, says", [
    ('<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY a "aaaa">]><rss><channel><item>&a;</item></channel></rss>',
     "declares a DTD or entities"),
    ('<rss><channel><item><g:id>1</g:id></item></channel></rss>', "unbound prefix"),
    ('<rss><channel><item><id>1</id></channel></rss>', "mismatched tag"),
    ('<html><body>not a feed</body></html>', "no <item>"),
])
def test_a_broken_xml_feed_is_refused_in_one_line(tmp_path, text, says):
    path = tmp_path / "feed.xml"
    path.write_text(text)
    with pytest.raises(CatalogError) as exc:
        read_layout(path, "merchant-xml")
    assert says in _one_line(exc)


# -- the generic loader reads what the readers give ----------------------------------------------

def _load(exports: dict[str, Path], name: str, tmp_path: Path):
    laid = read_layout(exports[name], "shopify" if name == "shopify-2024" else name)
    images = exports["magento-media"] if name == "magento" else tmp_path
    return laid, load_catalog(laid.table, images=images, photo_cache=tmp_path / "photos", show_progress_bar=False,
                              **laid.options())


@pytest.mark.parametrize("name", ["shopify", "shopify-2024", "magento", "merchant", "merchant-xml", "woocommerce"])
def test_each_layout_loads_25_products_and_97_photos(exports, tmp_path, name):
    laid, cat = _load(exports, name, tmp_path)
    assert not cat.problems, cat.problems[:3]
    assert len(cat.image_paths) == 97 and cat.table[laid.id_column].nunique() == 25
    assert cat.parent_column == laid.parent_column


# -- built: each layout into an index ------------------------------------------------------------

#: the products most layouts are built from: both families (ps-3/ps-4, ps-5/ps-6), and the
#: product Shopify's file lists out of Image Position order (ps-2); 15 photos
SUBSET = ("ps-2", "ps-3", "ps-4", "ps-5", "ps-6")


@pytest.fixture(scope="module")
def built(tmp_path_factory, store_dir, products, url, encoder) -> dict[str, tuple[LaidOut, Path]]:
    """Magento's export of all 25 products, and each other layout's of SUBSET, built once each."""
    from lookalike import build

    d = tmp_path_factory.mktemp("built")
    few = [p for p in products if p.id in SUBSET]
    files = {
        "magento": (platforms.write_magento(d / "export_catalog_product.csv", products),
                    platforms.magento_media(store_dir, products, d / "pub" / "media" / "catalog" / "product")),
        "shopify": (platforms.write_shopify(d / "products_export.csv", few, url), d),
        "merchant": (platforms.write_merchant_tsv(d / "feed.txt", few, url), d),
        "merchant-xml": (platforms.write_merchant_xml(d / "feed.xml", few, url), d),
        "woocommerce": (platforms.write_woocommerce(d / "wc-product-export.csv", few, url), d),
    }
    out = {}
    for name, (file, images) in files.items():
        laid = read_layout(file, name)
        build(laid.table, d / name, images=images, photo_cache=d / "photos", encoder=encoder,
              show_progress_bar=False, **laid.options())
        out[name] = (laid, d / name)
    return out


def _expected(name: str, products: list[Product], url) -> dict[str, list[str]]:
    if name == "magento":
        return {p.id: [platforms.magento_path(r) for r in p.photos] for p in products}
    few = [p for p in products if p.id in SUBSET]
    if name == "woocommerce":
        return {platforms.woo_id(few, p.id): [url(r) for r in p.photos] for p in few}
    return {p.id: [url(r) for r in p.photos] for p in few}


@pytest.mark.parametrize("name", ["magento", "shopify", "merchant", "merchant-xml", "woocommerce"])
def test_each_layout_builds_its_products_with_their_photos(built, products, url, name):
    from lookalike import Recommender

    laid, index = built[name]
    rec = Recommender.load(index)
    want = _expected(name, products, url)
    assert rec.products == list(want)
    assert {pid: rec.photos(pid) for pid in rec.products} == want
    assert sum(map(len, want.values())) == (97 if name == "magento" else 15)
    assert rec.settings.catalog.parent_column == laid.parent_column


@pytest.mark.parametrize("name", ["magento", "merchant", "merchant-xml", "woocommerce"])
def test_a_variant_is_not_recommended_its_parent_or_sibling(built, products, name):
    from lookalike import Recommender

    laid, index = built[name]
    rec = Recommender.load(index)
    few = [p for p in products if p.id in SUBSET]
    pid = (lambda sku: platforms.woo_id(few, sku)) if name == "woocommerce" else (lambda sku: sku)
    kin = {pid("ps-3"), pid("ps-4")}
    assert laid.parent_column is not None
    assert rec.product(pid("ps-4"))[laid.parent_column] == (GROUPS["ps-4"] if name.startswith("merchant")
                                                            else pid("ps-3"))
    for query in kin:
        found = rec.similar(query, k=len(rec.products)).ids
        assert not kin & set(found), (query, found)
        assert set(rec.similar(query, k=len(rec.products), siblings=True).ids) & kin == kin - {query}


def test_magento_variations_can_be_kept_out_by_their_visibility(built):
    """docs/catalogues.md: ``--where 'visibility!=Not Visible Individually'``."""
    from lookalike import Recommender

    rec = Recommender.load(built["magento"][1])
    found = rec.similar("ps-1", k=len(rec.products), where=["visibility!=Not Visible Individually"]).ids
    assert len(found) == 22 and not {"ps-4", "ps-6"} & set(found)


def test_a_cut_short_row_is_reported_by_build_and_refuses_a_sync(tmp_path, exports, capsys, restore_logging):
    """A truncated export: build reports the cut row (file row, reason; exit 3), and a sync of it
    changes nothing (the row left out would read as a removal)."""
    text = exports["magento"].read_text().rstrip("\n")
    cut = tmp_path / "cut.csv"
    cut.write_text(text[: text.rindex(",")])
    out = tmp_path / "index"
    code = main(["build", "--layout", "magento", str(cut), "--images", str(exports["magento-media"]),
                 "--out", str(out), "--quiet"])
    capsys.readouterr()
    assert code == 3
    report = pd.read_csv(next((out / "generations").glob("*.report.csv")), dtype=str, keep_default_na=False)
    skipped = report[report["status"] == "skipped"]
    assert skipped["id"].tolist() == ["ps-7"] and "cut short" in skipped["reason"].iat[0]
    assert int(skipped["row"].iat[0]) == len(text.splitlines()) - 1  # the file's own data row
    code = main(["sync", str(out), str(cut), "--images", str(exports["magento-media"])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "nothing was changed" in err[0]
