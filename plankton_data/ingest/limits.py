"""What one input may cost an ingest: bytes read per archive member or file, pixels decoded per image.

A published dataset is a few hundred thousand small images, but one hostile or broken file (a zip member that
inflates to gigabytes, a PNG header declaring 60000 x 60000 pixels) must become a reject, not an out-of-memory
kill. Two bounds, both options of ``plankton-data ingest``:

* ``max_member_bytes`` (``--max-member-mb``, default 256 MiB): a member whose declared size is larger is
  rejected before any byte is read, and no read ever returns more than the limit + 1 bytes, even when the zip
  header lies about the size (:meth:`~plankton_data.ingest.sources.RawTree.read`);
* ``max_pixels`` (``--max-megapixels``, default 100 megapixels): counted on the square the image is padded to
  (longer side squared), which is what the preprocessing allocates. The dimensions come from the image header
  (:func:`image_size`, PNG/JPEG/TIFF/BMP/GIF/WebP) before anything is decoded; other formats are checked right
  after decoding, before the padding (OpenCV itself refuses more than 2^30 pixels).

Neither changes the bytes of an accepted sample, so neither is part of the plan id or of index.json: raising a
limit to take in one big image resumes the same staging folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DEFAULT_MAX_MEMBER_MB = 256
DEFAULT_MAX_MEGAPIXELS = 100


@dataclass(frozen=True)
class Limits:
    """Per-input bounds of an ingest run (module docstring)."""

    max_member_bytes: int = DEFAULT_MAX_MEMBER_MB << 20
    max_pixels: int = DEFAULT_MAX_MEGAPIXELS * 1_000_000

    @classmethod
    def of(cls, max_member_mb: float = DEFAULT_MAX_MEMBER_MB, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> Limits:
        """From the CLI's units: MiB and megapixels."""
        if max_member_mb <= 0 or max_megapixels <= 0:
            raise ValueError("limits must be positive")
        return cls(int(max_member_mb * (1 << 20)), int(max_megapixels * 1_000_000))

    def pixel_problem(self, width: int, height: int) -> str | None:
        """Why an image of ``width x height`` is too big to process, or ``None``."""
        side = max(width, height)
        if side * side <= self.max_pixels:
            return None
        return (
            f"image is {width}x{height}: padded to a square it is {side * side / 1e6:,.0f} megapixels, over the "
            f"limit of {self.max_pixels / 1e6:,.0f} (raise it with --max-megapixels)"
        )

    def size_problem(self, size: int, what: str = "uncompressed") -> str | None:
        """Why a member of ``size`` bytes is too big to read, or ``None``."""
        if size <= self.max_member_bytes:
            return None
        return (
            f"member is {_mib(size)} {what}, over the limit of {_mib(self.max_member_bytes)} "
            "(raise it with --max-member-mb)"
        )


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


Order = Literal["little", "big"]


def _u16(b: bytes, i: int, order: Order) -> int:
    return int.from_bytes(b[i : i + 2], order)


def _u32(b: bytes, i: int, order: Order) -> int:
    return int.from_bytes(b[i : i + 4], order)


#: JPEG start-of-frame markers (every SOFn but DHT C4, JPG C8 and DAC CC): they carry the frame's dimensions.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` read from the header of a PNG, JPEG, TIFF, BMP, GIF or WebP file, without decoding.

    ``None`` for any other format or a header too damaged to read (the caller then decodes and checks the
    result). Pure and cheap: a few header bytes, plus a walk over the JPEG segment lengths up to the frame.
    """
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return _u32(data, 16, "big"), _u32(data, 20, "big")
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    if data[:4] in (b"II*\0", b"MM\0*"):
        return _tiff_size(data, "little" if data[:2] == b"II" else "big")
    if data[:2] == b"BM" and len(data) >= 26:
        if _u32(data, 14, "little") == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
            return _u16(data, 18, "little"), _u16(data, 20, "little")
        width = int.from_bytes(data[18:22], "little", signed=True)
        height = int.from_bytes(data[22:26], "little", signed=True)  # negative: stored top-down
        return abs(width), abs(height)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return _u16(data, 6, "little"), _u16(data, 8, "little")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        chunk = data[12:16]
        if chunk == b"VP8 ":
            return _u16(data, 26, "little") & 0x3FFF, _u16(data, 28, "little") & 0x3FFF
        if chunk == b"VP8L":
            bits = _u32(data, 21, "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8X":
            return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        if marker in _SOF:
            if i + 9 > n:
                return None
            return _u16(data, i + 7, "big"), _u16(data, i + 5, "big")
        i += 2 + _u16(data, i + 2, "big")
    return None


def _tiff_size(data: bytes, order: Order) -> tuple[int, int] | None:
    ifd = _u32(data, 4, order)
    if ifd + 2 > len(data):
        return None
    found: dict[int, int] = {}
    for k in range(_u16(data, ifd, order)):
        entry = ifd + 2 + 12 * k
        if entry + 12 > len(data):
            break
        tag, kind = _u16(data, entry, order), _u16(data, entry + 2, order)
        if tag in (256, 257):
            found[tag] = _u16(data, entry + 8, order) if kind == 3 else _u32(data, entry + 8, order)
    if 256 in found and 257 in found:
        return found[256], found[257]
    return None
