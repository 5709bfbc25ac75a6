"""Contact sheets: the query and its results side by side, with titles and scores."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont

from lookalike.errors import ImageError
from lookalike.reading.images import ImageSource, open_image

if TYPE_CHECKING:
    from lookalike.search.recommender import Recommender, Results

__all__ = ["contact_sheet"]

_TILE = 220
_TEXT_H = 64
_PAD = 12


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _thumb(source: ImageSource | None, size: int) -> Image.Image:
    tile = Image.new("RGB", (size, size), "white")
    if source is None:
        return tile
    try:
        img = open_image(source, draft=size)
    except ImageError:
        ImageDraw.Draw(tile).text((10, size // 2), "photo unreadable", fill="red", font=_font(14))
        return tile
    img.thumbnail((size, size))
    tile.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return tile


def _caption(draw: ImageDraw.ImageDraw, x: int, y: int, lines: list[str], width: int, bold: bool = False) -> None:
    font = _font(13)
    wrapped: list[str] = []
    for line in lines:
        wrapped += textwrap.wrap(line, width=max(10, width // 7)) or [""]
    for j, line in enumerate(wrapped[:4]):
        draw.text((x, y + j * 15), line, fill="black" if bold or j else "#333333", font=font)


def contact_sheet(
    rec: "Recommender",
    results: "Results",
    out: str | os.PathLike,
    *,
    query_image: ImageSource | None = None,
    title_column: str = "ProductTitle",
) -> Path:
    """Draw the query (a product, a photo or words) and its results in one row; save as PNG/JPEG."""
    out = Path(out)
    ids = results.query.get("ids") or []
    queries: list[tuple[ImageSource | None, list[str]]] = []
    for pid in ids:
        meta = rec.product(pid)
        queries.append((rec.image_path(pid), [f"QUERY {pid}", meta.get(title_column, "")]))
    if not ids and results.query.get("text"):
        queries.append((None, ["QUERY text", str(results.query["text"])]))  # a blank tile, the words below
    elif not ids:
        queries.append((query_image, ["QUERY photo", Path(str(query_image)).name if query_image else ""]))
    tiles = len(queries) + max(1, len(results))
    width = _PAD + tiles * (_TILE + _PAD) + _PAD
    height = _PAD * 2 + 24 + _TILE + _TEXT_H
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    filters = [f"same {c}" for c in results.query.get("same", [])] + [
        f"{c} in {v}" for c, v in results.query.get("where", {}).items()
    ] + list(results.query.get("conditions", []))
    header = f"lookalike: {len(results)} most alike" + (f" ({', '.join(filters)})" if filters else "")
    draw.text((_PAD, _PAD), header, fill="black", font=_font(16))
    x, y = _PAD, _PAD + 24
    for src, caption in queries:
        sheet.paste(_thumb(src, _TILE), (x, y))
        draw.rectangle((x - 3, y - 3, x + _TILE + 2, y + _TILE + 2), outline="#d62728", width=3)
        _caption(draw, x, y + _TILE + 6, caption, _TILE, bold=True)
        x += _TILE + _PAD
    x += _PAD
    for r in results:
        sheet.paste(_thumb(rec.photo_path(r.id, r.matched_photo), _TILE), (x, y))  # the photo that matched
        draw.rectangle((x - 1, y - 1, x + _TILE, y + _TILE), outline="#bbbbbb", width=1)
        _caption(draw, x, y + _TILE + 6,
                 [f"#{r.rank} {r.id}  score {r.score:.3f}", r.metadata.get(title_column, "")], _TILE)
        x += _TILE + _PAD
    if not len(results):
        draw.text((x, y + _TILE // 2), "no results", fill="black", font=_font(14))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
