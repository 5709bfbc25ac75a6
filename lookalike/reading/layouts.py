"""Platform exports as they come: a preset per platform and a reader that makes its file the one
table :func:`~lookalike.reading.catalog.load_catalog` reads (``lookalike build --layout NAME``;
what each takes and leaves: docs/catalogues.md).

Each reader translates only what the generic loader can't read as the platform writes it:

- ``shopify``: a product is a ``Handle``; its later rows are its variants and extra photos,
  most cells empty. The product is one row, its first (so its first variant's ``Option*`` and
  ``Variant *`` cells: lookalike recommends products, not sizes); its photos, ``|``-joined in
  ``Image Src``, are every row's ``Image Src`` in ``Image Position`` order, then its variants'
  ``Variant Image``. The 2024 header (``URL handle``, ``Product image URL``, ``Image position``,
  ``Variant image URL``) reads the same.
- ``magento``: a store view's rows (``store_view_code`` set) are a default row's translations and
  are left out; ``no_selection`` (Magento's "no image") and the ``hide_from_product_page`` images
  are dropped; a product named in a configurable one's ``configurable_variations`` gets its sku
  as ``parent_sku``. Photo paths are rooted at ``pub/media/catalog/product``: give that as images.
- ``merchant`` (TSV, any suffix) and ``merchant-xml`` (RSS 2.0 or Atom with the ``g:``
  namespace): ``image_link`` then ``additional_image_link`` (repeated elements in XML, joined by
  commas); ``item_group_id`` is the parent. A feed that declares a DTD or entities is refused.
- ``woocommerce``: ``Images`` as written (``, ``-separated; an escaped ``\\,`` inside a URL becomes
  ``%2C``); a row's ``Parent`` (the parent's SKU, or ``id:N``) becomes the parent's ``ID`` in
  ``parent_id``. Files without IDs (made for import) are read by ``SKU``.

A file that is not the layout it is read as (a needed column missing, not XML) is a
:class:`~lookalike.errors.CatalogError` with one line; rows cut short are the reader's
:attr:`LaidOut.problems`, as the generic loader reports them.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pandas as pd

from lookalike.errors import CatalogError, InvalidQueryError
from lookalike.reading.catalog import RowProblem, TableFile, read_table_file

logger = logging.getLogger(__name__)

__all__ = ["Layout", "LaidOut", "LAYOUTS", "read_layout"]

GOOGLE_NS = "http://base.google.com/ns/1.0"
ATOM_NS = "http://www.w3.org/2005/Atom"
#: the value Magento writes for an image role with no image
MAGENTO_NO_IMAGE = "no_selection"


@dataclass(frozen=True)
class Layout:
    """A platform's export as :func:`read_layout` returns it: its id column, photo columns (each
    cell split by ``image_separator``), parent column (``None``: no variants kept) and what it is."""

    name: str
    id_column: str
    image_columns: tuple[str, ...]
    image_separator: str
    parent_column: str | None
    description: str


@dataclass(frozen=True, eq=False)
class LaidOut:
    """A platform file read as a catalogue table (every cell text), and how to load it.

    The columns are the file's, as it names them (a Shopify export of 2024 says ``URL handle``
    where an older one says ``Handle``), so they may differ from :attr:`layout`'s. ``rows`` is
    the file's data row (1-based; the item's place in an XML feed) that each table row comes from:
    a problem of table row ``r`` (what :func:`load_catalog` reports) is file row ``rows[r - 1]``
    (:meth:`file_row`). ``problems`` are the file's rows the reader could not use (cut short)."""

    table: pd.DataFrame
    layout: Layout
    id_column: str
    image_columns: tuple[str, ...]
    image_separator: str
    parent_column: str | None
    rows: tuple[int, ...] = ()
    problems: tuple[RowProblem, ...] = field(default_factory=tuple)

    def options(self) -> dict[str, Any]:
        """The keyword options of :func:`~lookalike.reading.catalog.load_catalog` (and ``build``)
        that read :attr:`table`."""
        return {"id_column": self.id_column, "image_column": list(self.image_columns),
                "image_separator": self.image_separator, "parent_column": self.parent_column}

    def file_row(self, row: int) -> int:
        """The file's data row of table row ``row`` (both 1-based)."""
        return self.rows[row - 1] if 0 < row <= len(self.rows) else row


LAYOUTS: dict[str, Layout] = {
    "shopify": Layout(
        "shopify", "Handle", ("Image Src",), "|", None,
        "Shopify product CSV (Products > Export): a product per Handle, photos by Image Position"),
    "magento": Layout(
        "magento", "sku", ("base_image", "additional_images"), ",", "parent_sku",
        "Magento 2 product export CSV (System > Export > Products): photos rooted at pub/media/catalog/product, "
        "a configurable's variations as parent_sku"),
    "merchant": Layout(
        "merchant", "id", ("image_link", "additional_image_link"), ",", "item_group_id",
        "Google Merchant Center text feed (tab-separated), item_group_id as the parent"),
    "merchant-xml": Layout(
        "merchant-xml", "id", ("image_link", "additional_image_link"), ",", "item_group_id",
        "Google Merchant Center XML feed (RSS 2.0 or Atom, g: namespace), item_group_id as the parent"),
    "woocommerce": Layout(
        "woocommerce", "ID", ("Images",), ",", "parent_id",
        "WooCommerce product CSV (Products > Export): Parent (SKU or id:N) as parent_id"),
}


def read_layout(path: str | os.PathLike, name: str) -> LaidOut:
    """Read a platform's export file as a catalogue table; see the module's notes for what each
    layout translates. ``LaidOut.table`` with ``**LaidOut.options()`` is what ``load_catalog``
    and ``build`` take."""
    try:
        layout = LAYOUTS[name]
    except KeyError:
        raise InvalidQueryError(f"unknown layout {name!r}; choose one of {', '.join(LAYOUTS)}") from None
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"catalogue not found: {path}")
    laid = _READERS[name](path, layout)
    logger.info("%s read as %s: %d table rows, %d rows cut short", path.name, name, len(laid.table), len(laid.problems))
    return laid


# -- shared ----------------------------------------------------------------------------------

def _need(columns: Sequence[str], wanted: Sequence[str], path: Path, layout: Layout, hint: str = "") -> None:
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise CatalogError(f"{path.name} is not a {layout.description.split(' (')[0]}: no column "
                           f"{', '.join(map(repr, missing))}{hint}; its columns are: {', '.join(columns) or '(none)'}")


def _usable_rows(read: TableFile, id_column: str) -> tuple[list[int], list[RowProblem]]:
    """The 0-based positions of the rows not cut short, and a problem for each that is."""
    ids = read.table[id_column].astype(str).str.strip().tolist() if id_column in read.table.columns else []
    keep = [i for i in range(len(read.table)) if i + 1 not in read.short_rows]
    problems = [RowProblem(row, ids[row - 1] if ids else "", "", read.reason(row)) for row in sorted(read.short_rows)]
    return keep, problems


def _url_safe(ref: str, separator: str) -> str:
    """A photo reference with the separator percent-encoded where it is a URL's own character."""
    if separator and separator in ref and re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", ref):
        return ref.replace(separator, urllib.parse.quote(separator, safe=""))
    return ref


def _joined(refs: Sequence[str], separator: str) -> str:
    return separator.join(_url_safe(r.strip(), separator) for r in refs if r.strip())


def _picked(read: TableFile, keep: Sequence[int]) -> pd.DataFrame:
    return read.table.iloc[list(keep)].reset_index(drop=True).copy()


def _add_column(table: pd.DataFrame, name: str, values: Sequence[str], path: Path) -> None:
    if name in table.columns:
        raise CatalogError(f"{path.name} already has a column {name!r}, the one lookalike writes the parent to")
    table[name] = list(values)


# -- Shopify ---------------------------------------------------------------------------------

#: (Handle, Image Src, Image Position, Variant Image) as each header names them: the classic one, and 2024's
_SHOPIFY_HEADERS = (("Handle", "Image Src", "Image Position", "Variant Image"),
                    ("URL handle", "Product image URL", "Image position", "Variant image URL"))


def _position(text: str) -> tuple[int, float]:
    """An ``Image Position`` as a sort key: numbers first, in order; blank or odd ones after."""
    try:
        return 0, float(text)
    except ValueError:
        return 1, 0.0


def _shopify(path: Path, layout: Layout) -> LaidOut:
    read = read_table_file(path)
    columns = list(read.table.columns)
    handle, src, position, variant = next((h for h in _SHOPIFY_HEADERS if h[0] in columns), _SHOPIFY_HEADERS[0])
    _need(columns, (handle, src), path, layout,
          "" if handle in columns else f" (nor the 2024 export's {_SHOPIFY_HEADERS[1][0]!r})")
    keep, problems = _usable_rows(read, handle)
    handles = read.table[handle].astype(str).str.strip().tolist()
    photos = read.table[src].astype(str).str.strip().tolist()
    places = read.table[position].astype(str).str.strip().tolist() if position in columns else [""] * len(handles)
    variants = read.table[variant].astype(str).str.strip().tolist() if variant in columns else [""] * len(handles)
    products: dict[str, list[int]] = {}
    for i in keep:  # a row without a Handle stays a row of its own (the loader reports its empty id)
        products.setdefault(handles[i] or f"\0{i}", []).append(i)
    firsts, cells = [], []
    for rows in products.values():
        named = sorted((_position(places[i]), n, photos[i]) for n, i in enumerate(rows) if photos[i])
        firsts.append(rows[0])  # a variant's image is one of the product's; a file made by hand may not list it
        cells.append(_joined([ref for _, _, ref in named] + [variants[i] for i in rows], layout.image_separator))
    table = _picked(read, firsts)
    table[src] = cells
    return LaidOut(table, layout, handle, (src,), layout.image_separator, None,
                   tuple(i + 1 for i in firsts), tuple(problems))


# -- Magento 2 -------------------------------------------------------------------------------

def _magento_parents(table: pd.DataFrame, sku: str) -> dict[str, str]:
    """Each variation's sku -> its configurable's, from ``configurable_variations``
    (``sku=MH01-XS-Black,size=XS,color=Black|sku=...``)."""
    if "configurable_variations" not in table.columns:
        return {}
    parents: dict[str, str] = {}
    for parent, cell in zip(table[sku].astype(str).str.strip(), table["configurable_variations"].astype(str)):
        for variation in filter(None, (v.strip() for v in cell.split("|"))):
            fields = dict(part.split("=", 1) for part in variation.split(",") if "=" in part)
            child = fields.get("sku", "").strip()
            if not child:
                logger.warning("configurable %s: a variation without sku= (%r) is left out", parent, variation)
            elif parents.setdefault(child, parent) != parent:
                logger.warning("%s is a variation of %s and of %s; its parent is %s",
                               child, parents[child], parent, parents[child])
    return parents


def _magento_photos(table: pd.DataFrame, separator: str) -> None:
    """Drop ``no_selection`` and the images hidden from the product page, in place."""
    base = table["base_image"].astype(str).str.strip()
    table["base_image"] = base.where(base != MAGENTO_NO_IMAGE, "")
    if "additional_images" not in table.columns:
        return
    hidden = (table["hide_from_product_page"].astype(str) if "hide_from_product_page" in table.columns
              else pd.Series([""] * len(table), index=table.index))
    kept = []
    for cell, hide in zip(table["additional_images"].astype(str), hidden):
        gone = {h.strip() for h in hide.split(separator)} | {MAGENTO_NO_IMAGE}
        kept.append(separator.join(r.strip() for r in cell.split(separator) if r.strip() and r.strip() not in gone))
    table["additional_images"] = kept


def _magento(path: Path, layout: Layout) -> LaidOut:
    read = read_table_file(path)
    columns = list(read.table.columns)
    _need(columns, ("sku", "base_image"), path, layout)
    keep, problems = _usable_rows(read, "sku")
    if "store_view_code" in columns:
        views = read.table["store_view_code"].astype(str).str.strip()
        translated = [i for i in keep if views.iloc[i]]
        if translated:
            logger.info("%s: %d rows of store views left out (the default rows name the products)",
                        path.name, len(translated))
        keep = [i for i in keep if not views.iloc[i]]
    table = _picked(read, keep)
    _magento_photos(table, layout.image_separator)
    parents = _magento_parents(table, "sku")
    assert layout.parent_column is not None
    _add_column(table, layout.parent_column, [parents.get(s, "") for s in table["sku"].astype(str).str.strip()], path)
    images = tuple(c for c in layout.image_columns if c in columns)
    return LaidOut(table, layout, "sku", images, layout.image_separator, layout.parent_column,
                   tuple(i + 1 for i in keep), tuple(problems))


# -- Google Merchant Center ------------------------------------------------------------------

def _merchant_table(path: Path, layout: Layout, records: list[dict[str, str]], rows: list[int],
                    problems: list[RowProblem], columns: list[str]) -> LaidOut:
    _need(columns, ("id", "image_link"), path, layout)
    table = pd.DataFrame([[r.get(c, "") for c in columns] for r in records], columns=columns, dtype=object)
    images = tuple(c for c in layout.image_columns if c in columns)
    parent = layout.parent_column if layout.parent_column in columns else None
    return LaidOut(table, layout, "id", images, layout.image_separator, parent, tuple(rows), tuple(problems))


def _merchant_tsv(path: Path, layout: Layout) -> LaidOut:
    """A tab-separated text feed, whatever its suffix (Merchant Center takes ``.txt`` and ``.tsv``)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            lines = [r for r in csv.reader(f, delimiter="\t") if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CatalogError(f"can't read feed {path}: {str(exc).strip().splitlines()[0]}") from None
    header = [c.strip() for c in (lines[0] if lines else [])]
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise CatalogError(f"feed {path.name} has repeated column names: {', '.join(map(repr, repeated))}")
    records, rows, problems = [], [], []
    for row, cells in enumerate(lines[1:], 1):
        if len(cells) < len(header):
            first = cells[header.index("id")].strip() if "id" in header and header.index("id") < len(cells) else ""
            problems.append(RowProblem(row, first, "", f"cut short: the row has {len(cells)} of {len(header)} cells"))
            continue
        records.append(dict(zip(header, cells)))
        rows.append(row)
    return _merchant_table(path, layout, records, rows, problems, header)


def _xml_parser() -> Callable[[bytes], ElementTree.Element]:
    """defusedxml's ``fromstring`` where it is installed, else the standard library's (after
    :func:`_parse_xml` checked that the feed declares nothing)."""
    try:
        from defusedxml.ElementTree import fromstring
    except ImportError:
        return ElementTree.fromstring
    return fromstring  # untyped package (Any): the same signature as ElementTree.fromstring


def _parse_xml(path: Path) -> ElementTree.Element:
    """The feed's root element; a feed declaring a DTD or entities (billion laughs, external
    entities) is refused before it is parsed."""
    data = path.read_bytes()
    text = data.decode("utf-16", "replace") if data[:2] in (b"\xff\xfe", b"\xfe\xff") else data.decode("latin-1")
    if re.search(r"<!(DOCTYPE|ENTITY)", text, re.IGNORECASE):
        raise CatalogError(f"feed {path.name} declares a DTD or entities (<!DOCTYPE>/<!ENTITY>): not read")
    try:
        return _xml_parser()(data)
    except ElementTree.ParseError as exc:
        raise CatalogError(f"can't read feed {path}: {exc}") from None
    except ValueError as exc:  # defusedxml's refusals (DTDForbidden, EntitiesForbidden) are ValueErrors
        raise CatalogError(f"can't read feed {path}: {type(exc).__name__}: {exc}") from None


def _xml_item(item: ElementTree.Element) -> dict[str, str]:
    """An item's attributes by name: a ``g:`` element over a plain one of the same name (RSS's
    own ``<title>``), repeated ones comma-joined, nested ones (``g:shipping``) colon-joined."""
    values: dict[str, tuple[int, list[str]]] = {}
    for child in item:
        if not isinstance(child.tag, str):  # a comment or processing instruction
            continue
        space, _, local = child.tag[1:].partition("}") if child.tag.startswith("{") else ("", "", child.tag)
        rank = 1 if space == GOOGLE_NS else 0
        if len(child):
            text = ":".join((sub.text or "").strip() for sub in child)
        else:
            text = (child.text or "").strip() or child.get("href", "").strip()  # Atom's <link href=...>
        if local.endswith("image_link"):
            text = _url_safe(text, ",")
        got = values.get(local)
        if got is None or rank > got[0]:
            values[local] = (rank, [text])
        elif rank == got[0]:
            got[1].append(text)
    return {name: ",".join(t for t in texts if t) for name, (_, texts) in values.items()}


def _merchant_xml(path: Path, layout: Layout) -> LaidOut:
    root = _parse_xml(path)
    items = [*root.iter("item"), *root.iter(f"{{{ATOM_NS}}}entry")]
    if not items:
        raise CatalogError(f"{path.name} is not a Merchant Center feed: no <item> (RSS) or <entry> (Atom) in it")
    records = [_xml_item(item) for item in items]
    columns = list(dict.fromkeys(name for r in records for name in r))
    return _merchant_table(path, layout, records, list(range(1, len(records) + 1)), [], columns)


# -- WooCommerce -----------------------------------------------------------------------------

def _woocommerce_parents(table: pd.DataFrame, id_column: str) -> list[str]:
    """Each row's parent as the parent's id: ``Parent`` names it by SKU, or ``id:N`` by ID."""
    if "Parent" not in table.columns:
        return [""] * len(table)
    ids = table[id_column].astype(str).str.strip().tolist()
    by_sku = dict(zip(table["SKU"].astype(str).str.strip(), ids)) if "SKU" in table.columns else {}
    by_id = dict(zip(table["ID"].astype(str).str.strip(), ids)) if "ID" in table.columns else {}
    by_sku.pop("", None)
    by_id.pop("", None)
    parents, unknown = [], 0
    for cell in table["Parent"].astype(str).str.strip():
        if cell.startswith("id:"):
            found = by_id.get(cell[3:].strip())
        else:
            found = by_sku.get(cell) if cell else ""
        unknown += found is None
        parents.append(cell if found is None else found)  # one not in the file still groups its variations
    if unknown:
        logger.warning("%d rows name a Parent that is not in the file; it is kept as written", unknown)
    return parents


def _woocommerce(path: Path, layout: Layout) -> LaidOut:
    read = read_table_file(path)
    columns = list(read.table.columns)
    has_ids = "ID" in columns and read.table["ID"].astype(str).str.strip().ne("").any()
    id_column = "ID" if has_ids or "SKU" not in columns else "SKU"
    _need(columns, (id_column, "Images"), path, layout)
    keep, problems = _usable_rows(read, id_column)
    table = _picked(read, keep)
    # WooCommerce escapes a comma inside a value as "\,": inside a URL it is that URL's %2C
    table["Images"] = table["Images"].astype(str).str.replace("\\,", "%2C", regex=False)
    assert layout.parent_column is not None
    _add_column(table, layout.parent_column, _woocommerce_parents(table, id_column), path)
    return LaidOut(table, layout, id_column, ("Images",), layout.image_separator, layout.parent_column,
                   tuple(i + 1 for i in keep), tuple(problems))


_READERS: dict[str, Callable[[Path, Layout], LaidOut]] = {
    "shopify": _shopify,
    "magento": _magento,
    "merchant": _merchant_tsv,
    "merchant-xml": _merchant_xml,
    "woocommerce": _woocommerce,
}
