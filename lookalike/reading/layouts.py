"""Platform exports as they come: Shopify, Magento 2, Google Merchant Center (TSV and XML) and
WooCommerce, each read into the one table :func:`~lookalike.reading.catalog.load_catalog` reads,
with the columns it needs named (``lookalike build --layout NAME``; docs/catalogues.md).

Each reader translates only what the generic loader can't read as it is:

- ``shopify``: a product is a ``Handle``; its later rows are its variants and extra photos, with
  most cells empty. The product keeps its first row's cells (its first variant's ``Option*`` and
  ``Variant *`` cells: lookalike recommends products, not sizes) and its photos are every row's
  ``Image Src`` in ``Image Position`` order, then the variants' ``Variant Image``.
- ``magento``: rows of a store view (``store_view_code`` set) are translations of a default row
  and are left out; ``base_image`` then ``additional_images`` (comma-separated) are paths rooted
  at ``pub/media/catalog/product`` (give that folder as ``--images``); a simple product listed in
  a configurable one's ``configurable_variations`` gets it as ``parent_sku``.
- ``merchant`` (TSV) and ``merchant-xml`` (RSS 2.0, the ``g:`` namespace): ``image_link`` then
  ``additional_image_link`` (comma-separated, or repeated elements in XML); ``item_group_id`` is
  the parent.
- ``woocommerce``: ``Images`` are comma-separated URLs; a variation's ``Parent`` (``id:123`` or
  the parent's SKU) becomes the parent's ``ID`` in ``parent_id``.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from lookalike.errors import CatalogError
from lookalike.reading.catalog import read_table

logger = logging.getLogger(__name__)

__all__ = ["Layout", "LaidOut", "LAYOUTS", "read_layout"]


@dataclass(frozen=True)
class Layout:
    """A platform's export: where its id, photos and parent are."""

    name: str
    id_column: str
    image_columns: tuple[str, ...]
    image_separator: str
    parent_column: str | None
    description: str


@dataclass(frozen=True)
class LaidOut:
    """A platform file read as a catalogue table, and how :func:`load_catalog` reads it."""

    table: pd.DataFrame
    layout: Layout

    def options(self) -> dict[str, Any]:
        """The keyword options of :func:`~lookalike.reading.catalog.load_catalog` and ``build``."""
        lay = self.layout
        return {"id_column": lay.id_column, "image_column": list(lay.image_columns),
                "image_separator": lay.image_separator, "parent_column": lay.parent_column}


LAYOUTS: dict[str, Layout] = {
    "shopify": Layout("shopify", "Handle", ("Image Src",), "|", None,
                      "Shopify product CSV: a product a Handle, photos on its rows (Image Src)"),
    "magento": Layout("magento", "sku", ("base_image", "additional_images"), ",", "parent_sku",
                      "Magento 2 product export: base_image, additional_images, configurable parents"),
    "merchant": Layout("merchant", "id", ("image_link", "additional_image_link"), ",", "item_group_id",
                       "Google Merchant Center feed, tab-separated"),
    "merchant-xml": Layout("merchant-xml", "id", ("image_link", "additional_image_link"), ",", "item_group_id",
                           "Google Merchant Center feed, RSS 2.0 XML"),
    "woocommerce": Layout("woocommerce", "ID", ("Images",), ",", "parent_id",
                          "WooCommerce product CSV: Images as URLs, variations under their Parent"),
}


def _need(table: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise CatalogError(f"not a {what}: no column {', '.join(map(repr, missing))}; "
                           f"its columns are: {', '.join(map(str, table.columns[:12]))}")


def _shopify(path: Path) -> pd.DataFrame:
    table = read_table(path)
    _need(table, ("Handle", "Image Src"), "Shopify product CSV")
    out = []
    for handle, rows in table.groupby(table["Handle"].str.strip(), sort=False):
        if not handle:
            out.append(rows)  # the loader reports each row without an id
            continue
        position = pd.to_numeric(rows.get("Image Position", pd.Series(dtype=str)), errors="coerce")
        ordered = rows.assign(_at=position.fillna(1e9)).sort_values("_at", kind="stable")
        photos = [p.strip() for p in ordered["Image Src"] if p.strip()]
        if "Variant Image" in rows.columns:
            photos += [p.strip() for p in rows["Variant Image"] if p.strip()]
        first = rows.iloc[[0]].copy()
        first["Image Src"] = "|".join(dict.fromkeys(photos))
        out.append(first)
    return pd.concat(out, ignore_index=True) if out else table


_VARIATION = re.compile(r"(?:^|[,|])sku=([^,|]*)")


def _magento(path: Path) -> pd.DataFrame:
    table = read_table(path)
    _need(table, ("sku", "base_image"), "Magento 2 product export")
    if "store_view_code" in table.columns:
        views = table["store_view_code"].str.strip() != ""
        if views.any():
            logger.info("%s: %d store-view rows left out (translations of default rows)", path, int(views.sum()))
        table = table[~views].reset_index(drop=True)
    if "additional_images" not in table.columns:
        table["additional_images"] = ""
    parent: dict[str, str] = {}
    if "configurable_variations" in table.columns:
        for sku, variations in zip(table["sku"], table["configurable_variations"]):
            for child in _VARIATION.findall(variations):
                parent.setdefault(child.strip(), sku.strip())
    table["parent_sku"] = [parent.get(s.strip(), "") for s in table["sku"]]
    return table


def _merchant_tsv(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE,
                            encoding="utf-8-sig")
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise CatalogError(f"can't read Merchant Center feed {path}: {str(exc).strip().splitlines()[0]}") from None
    table.columns = [str(c).strip() for c in table.columns]
    return _merchant_columns(table, "Merchant Center feed (TSV)")


def _merchant_columns(table: pd.DataFrame, what: str) -> pd.DataFrame:
    _need(table, ("id", "image_link"), what)
    for col in ("additional_image_link", "item_group_id"):
        if col not in table.columns:
            table[col] = ""
    return table


_G = "{http://base.google.com/ns/1.0}"


def _merchant_xml(path: Path) -> pd.DataFrame:
    import xml.etree.ElementTree as ET

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CatalogError(f"can't read Merchant Center feed {path}: {exc.strerror or exc}") from None
    if b"<!DOCTYPE" in data[:4096].upper() or b"<!ENTITY" in data.upper():
        raise CatalogError(f"{path}: a feed with a DTD or entities is refused (Merchant Center feeds have none)")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise CatalogError(f"can't read Merchant Center feed {path}: {exc}") from None
    records = []
    for item in root.iter("item"):
        record: dict[str, str] = {}
        for child in item:
            name = child.tag.removeprefix(_G)
            text = (child.text or "").strip()
            if name == "additional_image_link" and record.get(name):
                record[name] += "," + text  # repeated elements: one photo each
            elif not record.get(name):
                record[name] = text
        records.append(record)
    if not records:
        raise CatalogError(f"{path} holds no <item>: not a Merchant Center RSS feed")
    return _merchant_columns(pd.DataFrame(records).fillna("").astype(str), "Merchant Center feed (XML)")


def _woocommerce(path: Path) -> pd.DataFrame:
    table = read_table(path)
    _need(table, ("ID", "Images"), "WooCommerce product CSV")
    by_sku = {s.strip(): i.strip() for s, i in zip(table.get("SKU", pd.Series(dtype=str)), table["ID"]) if s.strip()}
    parents = table["Parent"] if "Parent" in table.columns else pd.Series([""] * len(table))

    def parent_id(value: str) -> str:
        value = value.strip()
        if value.startswith("id:"):
            return value[3:].strip()
        return by_sku.get(value, value)

    table["parent_id"] = [parent_id(v) for v in parents]
    return table


_READERS: dict[str, Callable[[Path], pd.DataFrame]] = {
    "shopify": _shopify, "magento": _magento, "merchant": _merchant_tsv, "merchant-xml": _merchant_xml,
    "woocommerce": _woocommerce,
}


def read_layout(path: str | os.PathLike, name: str) -> LaidOut:
    """A platform's export file as a catalogue table (see the module's doc), with its layout."""
    if name not in LAYOUTS:
        raise CatalogError(f"unknown layout {name!r}; choose one of {', '.join(LAYOUTS)}")
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"catalogue not found: {path}")
    return LaidOut(_READERS[name](path), LAYOUTS[name])
