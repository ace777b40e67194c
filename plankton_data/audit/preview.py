"""A contact sheet of stored samples, one row per dataset (like Figure 2 of the paper), as PNG and PDF.

It shows the images exactly as training will see them (after crop, legend removal, padding and resize), so
a glance tells whether preprocessing looks right. Samples are picked per dataset with a seeded RNG; each tile
has its class name under it. The PNG declares :data:`DPI` (``pHYs``), and a PDF of the same pixels at that
resolution is written beside it (same name, ``.pdf``), for papers. Both are written without matplotlib.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa

from plankton_data.audit.stats import dataset_order, resolve_target
from plankton_data.errors import PlanktonDataError
from plankton_data.format import atomic
from plankton_data.format.manifest import read_manifest

_LABEL_W = 220  # px of the name column
_GAP = 4  # px between tiles
_BACKGROUND = 228  # light gray, so that white-background tiles keep visible edges
_FONT = cv2.FONT_HERSHEY_SIMPLEX
DPI = 200  # resolution the PNG declares and the PDF page is laid out at


def contact_sheet(
    target: Path | str,
    out: Path | str,
    per_dataset: int = 8,
    tile: int = 128,
    seed: int = 0,
    shards_root: Path | str = "shards",
    manifests_root: Path | str = "manifests",
) -> Path:
    """Write a PNG of ``per_dataset`` samples of each dataset in ``target`` (a shard folder, manifest or name)
    and a PDF of it beside ``out``; returns the PNG's path.

    Rows follow the registry order of the datasets; each starts with the dataset id and its sample count, and
    each tile has its class (``label``; ``(unlabelled)`` if empty) under it, on up to two lines.
    Every image is read from its tar at the manifest's offset/length and checked against its sha256.

    Raises:
        PlanktonDataError: nothing to show, or a sample that cannot be read or decoded.
    """
    if seed < 0:
        raise PlanktonDataError(f"seed must be 0 or more (numpy seeds are non-negative), not {seed}")
    found = resolve_target(target, shards_root, manifests_root)
    table = read_manifest(found.manifest)
    if table.num_rows == 0 or per_dataset < 1:
        raise PlanktonDataError(f"nothing to preview in {found.manifest}")
    datasets = table.column("dataset").to_numpy(zero_copy_only=False)
    order = dataset_order(datasets)
    rng = np.random.default_rng(seed)
    scale = max(0.3, tile / 320)  # class-name font: 0.4 at 128 px tiles
    line_h = cv2.getTextSize("Ag", _FONT, scale, 1)[0][1] + 6
    caption = 2 * line_h + 2  # up to two lines of class name under each tile
    row_h = tile + caption
    width = _LABEL_W + per_dataset * (tile + _GAP) + _GAP
    sheet = np.full((len(order) * (row_h + _GAP) + _GAP, width), _BACKGROUND, np.uint8)
    for r, dataset in enumerate(order):
        rows = np.flatnonzero(datasets == dataset)
        picked = np.sort(rng.choice(rows, size=min(per_dataset, len(rows)), replace=False))
        y = _GAP + r * (row_h + _GAP)
        cv2.putText(sheet, str(dataset), (8, y + tile // 2 - 4), _FONT, 0.7, 0, 2, cv2.LINE_AA)
        cv2.putText(sheet, f"{len(rows):,} samples", (8, y + tile // 2 + 22), _FONT, 0.5, 90, 1, cv2.LINE_AA)
        for c, row in enumerate(table.take(pa.array(picked)).to_pylist()):
            img = cv2.imdecode(np.frombuffer(_stored_image(found.shards_root, row), np.uint8), cv2.IMREAD_GRAYSCALE)
            if img is None:
                raise PlanktonDataError(f"cannot decode the stored image of {row['key']}")
            x = _LABEL_W + _GAP + c * (tile + _GAP)
            sheet[y : y + tile, x : x + tile] = cv2.resize(img, (tile, tile), interpolation=cv2.INTER_AREA)
            for i, text in enumerate(_caption_lines(row.get("label") or "(unlabelled)", tile - 2, scale)):
                cv2.putText(sheet, text, (x + 1, y + tile + (i + 1) * line_h - 2), _FONT, scale, 0, 1, cv2.LINE_AA)
    out = Path(out)
    pdf = out.with_suffix(".pdf")
    if pdf == out:
        raise PlanktonDataError(f"--out {out} is the PNG to write; its PDF is written beside it")
    png = _write_png(sheet, out)
    atomic.write_bytes(pdf, _pdf(sheet, DPI))
    return png


def _text_width(text: str, scale: float) -> int:
    return cv2.getTextSize(text, _FONT, scale, 1)[0][0]


def _caption_lines(name: str, width: int, scale: float) -> list[str]:
    """``name`` in at most two lines of ``width`` px: whole, else split at ``_``/space/char, else cut with ``..``."""
    if _text_width(name, scale) <= width:
        return [name]
    cut = max(i for i in range(1, len(name) + 1) if i == 1 or _text_width(name[:i], scale) <= width)
    breaks = [i + 1 for i, ch in enumerate(name[:cut]) if ch in "_ -"]
    split = breaks[-1] if breaks and breaks[-1] > cut // 2 else cut
    first, rest = name[:split], name[split:]
    if _text_width(rest, scale) > width:
        while len(rest) > 1 and _text_width(rest + "..", scale) > width:
            rest = rest[:-1]
        rest += ".."
    return [first, rest]


def _pdf(gray: np.ndarray, dpi: int) -> bytes:
    """A one-page PDF showing the 8-bit gray image at ``dpi`` (page size = pixels / dpi inches)."""
    h, w = gray.shape
    pw, ph = w * 72 / dpi, h * 72 / dpi
    pixels = zlib.compress(np.ascontiguousarray(gray).tobytes(), 9)
    content = f"q {pw:.2f} 0 0 {ph:.2f} 0 0 cm /Im0 Do Q".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {pw:.2f} {ph:.2f}] /Resources << /XObject << /Im0 4 0 R >> >>"
        " /Contents 5 0 R >>".encode(),
        f"<< /Type /XObject /Subtype /Image /Width {w} /Height {h} /ColorSpace /DeviceGray /BitsPerComponent 8"
        f" /Filter /FlateDecode /Length {len(pixels)} >>\nstream\n".encode()
        + pixels
        + b"\nendstream",
        f"<< /Length {len(content)} >>\nstream\n".encode() + content + b"\nendstream",
    ]
    doc, offsets = bytearray(b"%PDF-1.4\n"), []
    for i, body in enumerate(objects, 1):
        offsets.append(len(doc))
        doc += f"{i} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(doc)
    doc += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    doc += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    doc += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(doc)


def _with_dpi(png: bytes, dpi: int) -> bytes:
    """``png`` with a ``pHYs`` chunk (pixels per metre) right after its IHDR chunk."""
    ppm = round(dpi / 0.0254)
    data = struct.pack(">IIB", ppm, ppm, 1)
    chunk = struct.pack(">I", len(data)) + b"pHYs" + data + struct.pack(">I", zlib.crc32(b"pHYs" + data))
    end_of_ihdr = 8 + 8 + 13 + 4  # signature, IHDR length+type, IHDR data, CRC
    return png[:end_of_ihdr] + chunk + png[end_of_ihdr:]


def _stored_image(shards_root: Path, row: dict) -> bytes:
    """The image bytes of a manifest row, read at its ``offset``/``length`` and checked against its sha256."""
    path = shards_root / row["shard"]
    try:
        with open(path, "rb") as fh:
            data = os.pread(fh.fileno(), row["length"], row["offset"])
    except OSError as exc:
        raise PlanktonDataError(f"cannot read {path}: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != row["image_sha256"]:
        raise PlanktonDataError(f"corrupt shard {row['shard']}: image of {row['key']} fails its sha256")
    return data


def _write_png(img: np.ndarray, path: Path) -> Path:
    ok, buf = cv2.imencode(".png", img)
    if not ok:  # pragma: no cover - cv2 only fails on invalid arrays
        raise PlanktonDataError(f"cannot encode {path}")
    if path.is_dir():
        raise PlanktonDataError(f"--out {path} is a folder: give the path of the PNG file to write")
    return atomic.write_bytes(path, _with_dpi(buf.tobytes(), DPI))  # no temp file is left behind if the write fails
