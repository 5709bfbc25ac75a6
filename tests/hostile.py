"""Hostile photos made on the fly (a few kB each on the wire): nothing big is committed."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(width: int, height: int, *, channels: int = 3, rows: bytes | None = None) -> bytes:
    """An 8-bit PNG of ``width`` x ``height`` written row by row without holding its pixels.

    Without ``rows`` it is white with a blue band (compresses to ~0.1% of its pixels);
    with ``rows=b""`` it claims the size but holds a few bytes of pixel data (a header-only
    decompression bomb).
    """
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    head = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0))
    if rows is not None:
        return head + _chunk(b"IDAT", zlib.compress(b"\0" * 16 + rows)) + _chunk(b"IEND", b"")
    white = b"\0" + b"\xff" * (width * channels)
    pixel = bytes([30, 60, 200, 255][:channels]) if channels >= 3 else bytes([90, 255][:channels])
    band = b"\0" + b"\xff" * (width // 3 * channels) + pixel * (width // 3) + b"\xff" * ((width - 2 * (width // 3)) * channels)
    z = zlib.compressobj(6)
    parts = [z.compress(band if height // 3 <= y < 2 * height // 3 else white) for y in range(height)]
    return head + _chunk(b"IDAT", b"".join(parts) + z.flush()) + _chunk(b"IEND", b"")


def lying_jpeg(width: int = 7000, height: int = 7000) -> bytes:
    """A 16x16 JPEG whose frame header claims ``width`` x ``height``: 16 px of data for millions."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 10)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def cut_jpeg(data: bytes, keep: float = 0.3) -> bytes:
    """A JPEG cut short and given its end marker back: libjpeg decodes it without an error."""
    return data[: int(len(data) * keep)] + b"\xff\xd9"


def eps(side: int = 16) -> bytes:
    """A small valid EPS: Pillow's EPS plugin opens it (and would run Ghostscript to draw it)."""
    return (f"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 {side} {side}\n%%EndComments\n"
            f"newpath 0 0 moveto {side} 0 lineto {side} {side} lineto closepath fill\nshowpage\n%%EOF\n").encode()


def pillow_file(fmt: str, size: tuple[int, int] = (32, 24)) -> bytes:
    """A real file in a format Pillow reads and writes (PCX, PPM, TGA…), made by Pillow."""
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 40)).save(buf, format=fmt)
    return buf.getvalue()
