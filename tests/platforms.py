"""Platform export files written from store-demos' real products, each in its platform's published
layout, for tests/test_layouts.py: Shopify's product CSV (its classic header and 2024's), a
Magento 2 product export with its media folder, Merchant Center's text and XML feeds, and
WooCommerce's product CSV. Photos are served by a loopback HTTP server (``PhotoServer``) where
the platform names them by URL, and copied into a media folder where Magento roots its paths.

The variants: store-demos has two "Printed Dress" products (ps-3, ps-4) and two "Printed Summer
Dress" ones (ps-5, ps-6); each pair is written as one product with a variant (``FAMILIES``)."""

from __future__ import annotations

import csv
import shutil
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from xml.etree import ElementTree

#: the parent product of each variant (Magento's configurable, WooCommerce's variable product)
FAMILIES = {"ps-4": "ps-3", "ps-6": "ps-5"}
#: Merchant Center's item_group_id of each pair
GROUPS = {"ps-3": "printed-dress", "ps-4": "printed-dress", "ps-5": "printed-summer-dress", "ps-6": "printed-summer-dress"}
#: written with its photo rows out of Image Position order (an edited Shopify file)
SHUFFLED = "ps-2"
GOOGLE = "http://base.google.com/ns/1.0"


@dataclass(frozen=True)
class Product:
    id: str
    name: str
    category: str
    price: str
    photos: tuple[str, ...]  # relative to store-demos/images, main first


def store_products(store: Path) -> list[Product]:
    with open(store / "catalog.csv", newline="", encoding="utf-8") as f:
        return [Product(r["product_id"], r["name"], r["category"], r["price"], tuple(r["images"].split("|")))
                for r in csv.DictReader(f)]


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[dict[str, str]], *, bom: bool = False,
               delimiter: str = ",") -> Path:
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        out = csv.DictWriter(f, header, delimiter=delimiter, lineterminator="\n")
        out.writeheader()
        out.writerows(rows)
    return path


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class _Seen(_Quiet):
    seen: list[tuple[str, int]]

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.seen.append((urllib.parse.unquote(self.path), int(code)))


@contextmanager
def photo_server(root: Path, seen: list[tuple[str, int]] | None = None) -> Iterator[Callable[[str], str]]:
    """Serve ``root`` on 127.0.0.1 (port 0); yields the URL of a path below it. Stopped after.
    ``seen`` gets each request's path and status (``304``: a conditional request answered)."""
    handler = _Quiet if seen is None else type("Seen", (_Seen,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="test-photos", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        yield lambda rel: base + urllib.parse.quote(rel)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- Shopify ---------------------------------------------------------------------------------

SHOPIFY_HEADER = [
    "Handle", "Title", "Body (HTML)", "Vendor", "Product Category", "Type", "Tags", "Published",
    "Option1 Name", "Option1 Value", "Option2 Name", "Option2 Value", "Option3 Name", "Option3 Value",
    "Variant SKU", "Variant Grams", "Variant Inventory Tracker", "Variant Inventory Qty", "Variant Inventory Policy",
    "Variant Fulfillment Service", "Variant Price", "Variant Compare At Price", "Variant Requires Shipping",
    "Variant Taxable", "Variant Barcode", "Image Src", "Image Position", "Image Alt Text", "Gift Card",
    "SEO Title", "SEO Description", "Google Shopping / Google Product Category", "Variant Image",
    "Variant Weight Unit", "Variant Tax Code", "Cost per item", "Status",
]
#: the 2024 header's names of the classic columns (Shopify's export since then)
SHOPIFY_2024 = {
    "Handle": "URL handle", "Body (HTML)": "Description", "Product Category": "Product category",
    "Published": "Published on online store", "Option1 Name": "Option1 name", "Option1 Value": "Option1 value",
    "Variant SKU": "SKU", "Variant Price": "Price", "Variant Compare At Price": "Compare-at price",
    "Variant Inventory Qty": "Inventory quantity", "Image Src": "Product image URL", "Image Position": "Image position",
    "Image Alt Text": "Image alt text", "Variant Image": "Variant image URL", "Gift Card": "Gift card",
    "SEO Title": "SEO title", "SEO Description": "SEO description",
}


def _shopify_variants(p: Product) -> list[tuple[str, str, str]]:
    """(option name, value, price) of each variant: clothes come in S and M, the rest in one."""
    if p.id.startswith("ps-"):
        return [("Size", "S", p.price), ("Size", "M", f"{float(p.price) + 2:.2f}")]
    return [("Title", "Default Title", p.price)]


def _shopify_rows(p: Product, url: Callable[[str], str]) -> list[dict[str, str]]:
    """A product as Shopify exports it: row k holds variant k and photo k, as far as each goes."""
    variants = _shopify_variants(p)
    order = list(range(len(p.photos)))
    if p.id == SHUFFLED:
        order.reverse()
    rows = []
    for k in range(max(len(variants), len(p.photos))):
        row = {"Handle": p.id}
        if k == 0:
            row.update({"Title": p.name, "Body (HTML)": f"<p>{p.name}</p>", "Vendor": "store-demos",
                        "Type": p.category, "Tags": p.category.lower(), "Published": "true", "Gift Card": "false",
                        "Status": "active"})
        if k < len(variants):
            name, value, price = variants[k]
            row.update({"Option1 Name": name, "Option1 Value": value, "Variant SKU": f"{p.id}-{value}".replace(" ", "-"),
                        "Variant Grams": "500", "Variant Inventory Tracker": "shopify", "Variant Inventory Qty": "3",
                        "Variant Inventory Policy": "deny", "Variant Fulfillment Service": "manual",
                        "Variant Price": price, "Variant Requires Shipping": "true", "Variant Taxable": "true",
                        "Variant Image": url(p.photos[min(k, len(p.photos) - 1)]), "Variant Weight Unit": "kg"})
        if k < len(p.photos):
            row.update({"Image Src": url(p.photos[order[k]]), "Image Position": str(order[k] + 1),
                        "Image Alt Text": f"{p.name} {order[k] + 1}"})
        rows.append(row)
    return rows


def write_shopify(path: Path, products: Sequence[Product], url: Callable[[str], str], *, header: str = "classic") -> Path:
    """``products_export.csv``; ``header="2024"`` writes the column names of Shopify's current export."""
    rows = [row for p in products for row in _shopify_rows(p, url)]
    if header == "2024":
        rename = SHOPIFY_2024
        rows = [{rename.get(k, k): v for k, v in r.items()} for r in rows]
        return _write_csv(path, [rename.get(c, c) for c in SHOPIFY_HEADER], rows)
    return _write_csv(path, SHOPIFY_HEADER, rows)


# -- Magento 2 -------------------------------------------------------------------------------

MAGENTO_HEADER = [
    "sku", "store_view_code", "attribute_set_code", "product_type", "categories", "product_websites", "name",
    "description", "short_description", "weight", "product_online", "tax_class_name", "visibility", "price",
    "special_price", "url_key", "meta_title", "base_image", "base_image_label", "small_image", "small_image_label",
    "thumbnail_image", "thumbnail_image_label", "swatch_image", "swatch_image_label", "created_at", "updated_at",
    "additional_attributes", "qty", "is_in_stock", "website_id", "related_skus", "additional_images",
    "additional_image_labels", "hide_from_product_page", "custom_options", "configurable_variations",
    "configurable_variation_labels", "associated_skus",
]
#: a product written with base_image "no_selection" (its photo only in additional_images)
MAGENTO_NO_BASE = "oc-42"
#: a product with a hidden swatch (in additional_images and hide_from_product_page; no such file)
MAGENTO_HIDDEN = ("oc-29", "/p/a/palm_treo_pro_swatch.jpg")
#: a product with a French store view's row
MAGENTO_TRANSLATED = "oc-28"


def magento_path(rel: str) -> str:
    """A photo's path as Magento writes it: rooted at the media folder, dispersed by its first letters."""
    name = Path(rel).name
    return f"/{name[0]}/{name[1]}/{name}"


def magento_media(store: Path, products: Sequence[Product], media: Path) -> Path:
    """``pub/media/catalog/product`` with the products' photos where Magento keeps them."""
    for p in products:
        for rel in p.photos:
            target = media / magento_path(rel).lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(store / "images" / rel, target)
    return media


def _magento_row(p: Product, children: Sequence[Product]) -> dict[str, str]:
    paths = [magento_path(r) for r in p.photos]
    variant = p.id in FAMILIES
    row = {
        "sku": p.id, "attribute_set_code": "Default", "product_type": "configurable" if children else "simple",
        "categories": f"Default Category/{p.category}", "product_websites": "base", "name": p.name,
        "description": f"<p>{p.name}</p>", "weight": "1.000000", "product_online": "1", "tax_class_name": "Taxable Goods",
        "visibility": "Not Visible Individually" if variant else "Catalog, Search", "price": f"{float(p.price):.6f}",
        "url_key": p.id, "meta_title": p.name, "base_image": paths[0], "base_image_label": p.name,
        "small_image": paths[0], "small_image_label": p.name, "thumbnail_image": paths[0],
        "thumbnail_image_label": p.name, "created_at": "10/15/26, 9:12 AM", "updated_at": "10/15/26, 9:12 AM",
        "additional_attributes": "color=Blue" if p.id.startswith("ps-") else "", "qty": "100.0000", "is_in_stock": "1",
        "website_id": "0", "additional_images": ",".join(paths),  # the export lists every gallery image, base too
        "additional_image_labels": ",".join(p.name for _ in paths),
    }
    if children:
        row["configurable_variations"] = "|".join(f"sku={c.id},size=M,color=Blue" for c in children)
        row["configurable_variation_labels"] = "size=Size,color=Color"
    if p.id == MAGENTO_NO_BASE:
        row.update({"base_image": "no_selection", "small_image": "no_selection", "thumbnail_image": "no_selection"})
    if p.id == MAGENTO_HIDDEN[0]:
        row["additional_images"] += "," + MAGENTO_HIDDEN[1]
        row["hide_from_product_page"] = MAGENTO_HIDDEN[1]
    return row


def write_magento(path: Path, products: Sequence[Product]) -> Path:
    """``export_catalog_product.csv`` (System > Data Transfer > Export, Products)."""
    rows = []
    for p in products:
        rows.append(_magento_row(p, [c for c in products if FAMILIES.get(c.id) == p.id]))
        if p.id == MAGENTO_TRANSLATED:  # a store view's row: the sku, its scope and what differs there
            rows.append({"sku": p.id, "store_view_code": "fr", "attribute_set_code": "Default",
                         "product_type": "simple", "name": f"{p.name} (fr)", "url_key": f"{p.id}-fr"})
    return _write_csv(path, MAGENTO_HEADER, rows)


# -- Google Merchant Center ------------------------------------------------------------------

MERCHANT_HEADER = ["id", "title", "description", "link", "image_link", "additional_image_link", "availability",
                   "price", "brand", "condition", "item_group_id", "product_type", "shipping"]


def _merchant_item(p: Product, url: Callable[[str], str]) -> dict[str, str]:
    return {"id": p.id, "title": p.name, "description": f"{p.name}, from the store demos",
            "link": f"https://shop.example.com/products/{p.id}", "image_link": url(p.photos[0]),
            "additional_image_link": ",".join(url(r) for r in p.photos[1:]), "availability": "in_stock",
            "price": f"{float(p.price):.2f} USD", "brand": "store-demos", "condition": "new",
            "item_group_id": GROUPS.get(p.id, ""), "product_type": f"Home > {p.category}",
            "shipping": "US:CA:Ground:5.00 USD"}


def write_merchant_tsv(path: Path, products: Sequence[Product], url: Callable[[str], str]) -> Path:
    """A text feed: tab-separated, a header of attribute names, comma-separated additional images."""
    return _write_csv(path, MERCHANT_HEADER, [_merchant_item(p, url) for p in products], delimiter="\t")


def write_merchant_xml(path: Path, products: Sequence[Product], url: Callable[[str], str]) -> Path:
    """An RSS 2.0 feed: RSS's own <title>, <link> and <description>, the rest in the g: namespace,
    one <g:additional_image_link> per extra photo, <g:shipping> with its sub-attributes."""
    ElementTree.register_namespace("g", GOOGLE)
    rss = ElementTree.Element("rss", {"version": "2.0"})
    channel = ElementTree.SubElement(rss, "channel")
    for tag, text in (("title", "store-demos"), ("link", "https://shop.example.com"), ("description", "a feed")):
        ElementTree.SubElement(channel, tag).text = text
    for p in products:
        item, fields = ElementTree.SubElement(channel, "item"), _merchant_item(p, url)
        for name in MERCHANT_HEADER:
            if name in ("additional_image_link", "shipping") or not fields[name]:
                continue
            tag = name if name in ("title", "link", "description") else f"{{{GOOGLE}}}{name}"
            ElementTree.SubElement(item, tag).text = fields[name]
        for rel in p.photos[1:]:
            ElementTree.SubElement(item, f"{{{GOOGLE}}}additional_image_link").text = url(rel)
        shipping = ElementTree.SubElement(item, f"{{{GOOGLE}}}shipping")
        for name, text in (("country", "US"), ("region", "CA"), ("service", "Ground"), ("price", "5.00 USD")):
            ElementTree.SubElement(shipping, f"{{{GOOGLE}}}{name}").text = text
    ElementTree.ElementTree(rss).write(path, encoding="utf-8", xml_declaration=True)
    return path


# -- WooCommerce -----------------------------------------------------------------------------

WOO_HEADER = [
    "ID", "Type", "SKU", "Name", "Published", "Is featured?", "Visibility in catalog", "Short description",
    "Description", "Date sale price starts", "Date sale price ends", "Tax status", "Tax class", "In stock?", "Stock",
    "Backorders allowed?", "Sold individually?", "Weight (kg)", "Length (cm)", "Width (cm)", "Height (cm)",
    "Allow customer reviews?", "Purchase note", "Sale price", "Regular price", "Categories", "Tags",
    "Shipping class", "Images", "Download limit", "Download expiry days", "Parent", "Grouped products", "Upsells",
    "Cross-sells", "External URL", "Button text", "Position", "Attribute 1 name", "Attribute 1 value(s)",
    "Attribute 1 visible", "Attribute 1 global",
]
#: the variation whose Parent names its parent as id:N (the other names the parent's SKU)
WOO_BY_ID = "ps-6"


def woo_id(products: Sequence[Product], pid: str) -> str:
    return str(100 + [p.id for p in products].index(pid))


def _woo_row(products: Sequence[Product], p: Product, url: Callable[[str], str]) -> dict[str, str]:
    parent = FAMILIES.get(p.id, "")
    kind = "variation" if parent else "variable" if p.id in FAMILIES.values() else "simple"
    row = {"ID": woo_id(products, p.id), "Type": kind, "SKU": p.id, "Name": p.name + (" - M" if parent else ""),
           "Published": "1", "Is featured?": "0", "Visibility in catalog": "visible",
           "Short description": "" if parent else f"This is a {kind} product.", "Description": f"{p.name}.",
           "Tax status": "taxable", "In stock?": "1", "Backorders allowed?": "0", "Sold individually?": "0",
           "Allow customer reviews?": "0" if parent else "1", "Regular price": "" if kind == "variable" else p.price,
           "Categories": "" if parent else f"Shop > {p.category}",
           "Images": ", ".join(url(r) for r in p.photos),  # the exporter's implode_values: ", "
           "Position": "1" if parent else "0"}
    if parent:
        row["Parent"] = f"id:{woo_id(products, parent)}" if p.id == WOO_BY_ID else parent
    if p.id.startswith("ps-"):
        row.update({"Attribute 1 name": "Size", "Attribute 1 value(s)": "M" if parent else "S, M",
                    "Attribute 1 visible": "" if parent else "1", "Attribute 1 global": "1"})
    return row


def write_woocommerce(path: Path, products: Sequence[Product], url: Callable[[str], str]) -> Path:
    """``wc-product-export-*.csv`` (Products > Export), with the byte-order mark WooCommerce writes."""
    return _write_csv(path, WOO_HEADER, [_woo_row(products, p, url) for p in products], bom=True)
