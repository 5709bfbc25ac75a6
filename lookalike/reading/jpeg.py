"""Progressive JPEGs decoded at 1/8 scale: skip the scans that cannot change the pixels.

At 1/8 scale libjpeg turns each 8x8 block of a full-resolution component (luma, in the usual
4:2:0 photo) into one pixel, from the block's DC coefficient alone. A progressive JPEG stores
the DC coefficients in their own scans, and the luma AC coefficients, most of the file, in
others; libjpeg still entropy-decodes all of them, which is most of a phone photo's decode
time even in draft mode.

:func:`eighth_scale_scans` rewrites such a file without the AC scans of those components and
appends one complete AC scan of zeros for each, so libjpeg sees their coefficients as
complete: it then applies no block smoothing, which would otherwise estimate the missing
coefficients and move the DC-only pixels. The decoded 1/8-scale image is bit-identical to
the full file's (tests/test_jpeg.py checks every progressive photo of the sample sets).

Only the segment structure is read here, never the entropy-coded data; anything this does not
expect (another coding process, restart intervals, a missing end marker, a malformed segment)
gives ``None`` and the caller decodes the file as it is, so libjpeg keeps judging the input.
"""

from __future__ import annotations

import re
import struct

__all__ = ["eighth_scale_scans"]

# a marker inside entropy-coded data: 0xFF followed by neither a stuffed zero, a restart
# marker (RST0-7) nor a fill byte
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_SOF2 = 0xC2  # progressive DCT, Huffman coding: the only frame type rewritten
_OTHER_SOF = frozenset({0xC0, 0xC1, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_MAX_SCANS = 1000  # far more than any encoder writes; libjpeg-turbo refuses hostile scan counts too
_MAX_RUN = (1 << 15) - 1  # the longest end-of-band run one Huffman symbol can code (EOB14)

# An AC Huffman table holding the 15 end-of-band-run symbols (0x00, 0x10, ... 0xE0), each with
# a 4-bit code: symbol n<<4 gets code n (canonical order), never the all-ones code.
_EOB_TABLE = bytes([0x10]) + bytes([0, 0, 0, 15] + [0] * 12) + bytes(n << 4 for n in range(15))
_DHT = b"\xff\xc4" + struct.pack(">H", 2 + len(_EOB_TABLE)) + _EOB_TABLE


def _zero_ac_scan(component: int, blocks: int) -> bytes:
    """A first and final AC scan (coefficients 1-63, full precision) of one component in which
    every one of its ``blocks`` blocks is empty: end-of-band runs covering them all."""
    acc, nbits = 0, 0
    out = bytearray()
    left = blocks
    while left:
        run = min(left, _MAX_RUN)
        n = run.bit_length() - 1
        acc = (acc << (4 + n)) | (n << n) | (run - (1 << n))  # code n (4 bits), then n extra bits
        nbits += 4 + n
        while nbits >= 8:
            nbits -= 8
            out.append((acc >> nbits) & 0xFF)
        acc &= (1 << nbits) - 1
        left -= run
    if nbits:
        out.append(((acc << (8 - nbits)) | ((1 << (8 - nbits)) - 1)) & 0xFF)  # pad with ones
    data = bytes(out).replace(b"\xff", b"\xff\x00")
    header = bytes([1, component, 0x00, 1, 63, 0x00])  # Ns=1, Cs, Td/Ta=0, Ss=1, Se=63, Ah/Al=0
    return b"\xff\xda" + struct.pack(">H", 2 + len(header)) + header + data


def eighth_scale_scans(data: bytes) -> bytes | None:
    """``data`` (a progressive JPEG) without what its 1/8-scale decode does not read, or
    ``None`` when the file is not one this can rewrite; see the module's docstring."""
    if data[:2] != b"\xff\xd8":
        return None
    n = len(data)
    pos = 2
    kept = [data[:2]]
    frame: dict[int, tuple[int, int]] | None = None  # component id -> (h, v) sampling factors
    full: set[int] = set()  # components at full resolution: one pixel per block at 1/8 scale
    width = height = 0
    dropped = False
    scans = 0
    while True:
        if pos + 2 > n or data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0xD9:  # end of image
            break
        if pos + 4 > n:
            return None
        length = struct.unpack_from(">H", data, pos + 2)[0]
        end = pos + 2 + length
        if length < 2 or end > n:
            return None
        if marker in _OTHER_SOF:
            return None
        if marker == _SOF2:
            if frame is not None or length < 8:
                return None
            height, width, count = struct.unpack_from(">HHB", data, pos + 5)
            if length != 8 + 3 * count or not count or not width or not height:
                return None
            frame = {}
            for i in range(count):
                cid, sampling = data[pos + 10 + 3 * i], data[pos + 11 + 3 * i]
                h, v = sampling >> 4, sampling & 15
                if not (1 <= h <= 4 and 1 <= v <= 4) or cid in frame:
                    return None
                frame[cid] = (h, v)
            most = (max(h for h, _ in frame.values()), max(v for _, v in frame.values()))
            full = {cid for cid, hv in frame.items() if hv == most}
        elif marker == 0xDD:  # restart interval: the appended scan would need restart markers
            if length != 4 or struct.unpack_from(">H", data, pos + 4)[0] != 0:
                return None
        elif marker == 0xDA:  # start of scan: its header, then entropy-coded data
            scans += 1
            if frame is None or length < 6 or scans > _MAX_SCANS:
                return None
            count = data[pos + 4]
            if length != 6 + 2 * count or not count:
                return None
            ids = [data[pos + 5 + 2 * i] for i in range(count)]
            if any(c not in frame for c in ids):
                return None
            spectral_start = data[pos + 5 + 2 * count]
            found = _NEXT_MARKER.search(data, end)
            if found is None:
                return None
            if spectral_start > 0 and count == 1 and ids[0] in full:
                dropped = True  # AC of a component that decodes to one pixel per block
            else:
                kept.append(data[pos:found.start()])
            pos = found.start()
            continue
        kept.append(data[pos:end])
        pos = end
    if frame is None or not dropped:
        return None
    blocks = ((width + 7) // 8) * ((height + 7) // 8)  # a full-resolution component, non-interleaved
    kept.append(_DHT)
    kept.extend(_zero_ac_scan(cid, blocks) for cid in frame if cid in full)
    kept.append(b"\xff\xd9")
    return b"".join(kept)
