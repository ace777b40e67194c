"""Pixel questions about stored samples, answered from manifests and source tars: which images are identical
across datasets, and what the pixel mean/std of a selection is.

**Identical images.** Stored bytes (or stored pixels) cannot be compared: ingest pads every image to a square
with noise seeded by its sample key, so one published image ingested by two datasets is stored as two
different images. Only the pixels that the padding cannot reach are shared, and those are what is hashed:

* the *content box* of a stored image follows from its manifest row: the content (the published image, or
  its crop box) of ``cw x ch`` pixels is centred on a ``max(cw, ch)`` square, which is resized to ``width``;
* the *pure region* is the content box shrunk by 2 source pixels (the reach of the bicubic kernel used when
  enlarging; area averaging when shrinking reaches less) and 1 output pixel of rounding slack, then, for
  JPEG, to whole 8x8 blocks: JPEG encodes and decodes each block on its own, so a block without padding
  pixels decodes to the same values whatever noise lies around it;
* the *fingerprint* is sha256 of (``cw``, ``ch``, stored size, format, decoded pure-region pixels).

Equal fingerprints mean the published images are pixel-identical (up to a 2-pixel border band) and were
ingested with the same settings. Only *candidates* are decoded: rows whose content size and padding
background (``pad_mode``/``pad_std`` in the manifest, computed by ingest from the published pixels) also
occur in a reference row or in another dataset. An image too thin to hold a whole pure block has no
fingerprint: when it looks like a reference row (same size and background), it is a *possible* match.
"""

from __future__ import annotations

import hashlib
import math
import mmap
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from plankton_data.adapters import DATASET_IDS
from plankton_data.errors import PlanktonDataError

_THREADS = 4  # cv2 decodes and sha256 hashes without the GIL
_READ = ["key", "shard", "offset", "length", "image_sha256", "width", "height", "image_format"]
_CROP = ["crop_x0", "crop_y0", "crop_x1", "crop_y1"]

Row = tuple[str, int]  # (dataset, manifest row)


class SourceReader:
    """Read-only maps of the tars under a shards root, opened on first use (thread-safe), closed on exit."""

    def __init__(self, shards_root: Path) -> None:
        self.root = Path(shards_root)
        self._maps: dict[str, mmap.mmap] = {}
        self._views: dict[str, memoryview] = {}
        self._lock = threading.Lock()

    def view(self, tar: str) -> memoryview:
        """The bytes of ``tar`` (a manifest ``shard`` value, relative to the shards root); slicing copies nothing."""
        view = self._views.get(tar)
        if view is None:
            with self._lock:
                if tar not in self._views:
                    path = self.root / tar
                    try:
                        with open(path, "rb") as fh:
                            self._maps[tar] = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
                    except (OSError, ValueError) as exc:
                        raise PlanktonDataError(f"corrupt source shard {path}: cannot read it ({exc})") from exc
                    self._views[tar] = memoryview(self._maps[tar])
                view = self._views[tar]
        return view

    def image(self, row: dict) -> bytes:
        """The image bytes of a manifest row, checked against its ``image_sha256``."""
        data = bytes(self.view(row["shard"])[row["offset"] : row["offset"] + row["length"]])
        if hashlib.sha256(data).hexdigest() != row["image_sha256"]:
            raise PlanktonDataError(f"corrupt source shard {row['shard']}: image of {row['key']} fails its sha256")
        return data

    def __enter__(self) -> SourceReader:
        return self

    def __exit__(self, *exc) -> None:
        for view in self._views.values():
            view.release()
        for mm in self._maps.values():
            mm.close()
        self._views.clear()
        self._maps.clear()


def pure_region(cw: int, ch: int, width: int, height: int, image_format: str) -> tuple[int, int, int, int] | None:
    """``(x0, x1, y0, y1)`` of the stored pixels no padding can reach (module docstring), or ``None``."""
    side = max(cw, ch)

    def axis(content: int, out: int) -> tuple[int, int]:
        origin = (side - content) // 2
        if out == side:
            lo, hi = origin, origin + content
        else:
            scale = out / side
            lo, hi = math.ceil((origin + 2) * scale) + 1, math.floor((origin + content - 2) * scale) - 1
        if image_format == "jpg":
            lo, hi = -(-lo // 8) * 8, hi // 8 * 8
        return lo, hi

    (x0, x1), (y0, y1) = axis(cw, width), axis(ch, height)
    return (x0, x1, y0, y1) if x1 > x0 and y1 > y0 else None


def fingerprint(row: dict, data: bytes) -> str | None:
    """The pixel fingerprint of a stored image (module docstring); ``None`` if it has no pure region."""
    if row["crop_x0"] is None:
        cw, ch = row["orig_width"], row["orig_height"]
    else:
        cw, ch = row["crop_x1"] - row["crop_x0"], row["crop_y1"] - row["crop_y0"]
    region = pure_region(cw, ch, row["width"], row["height"], row["image_format"])
    if region is None:
        return None
    x0, x1, y0, y1 = region
    img = _decode(data, row["key"])
    head = f"{cw}x{ch}:{row['width']}x{row['height']}:{row['image_format']}:".encode()
    return hashlib.sha256(head + np.ascontiguousarray(img[y0:y1, x0:x1]).tobytes()).hexdigest()


@dataclass
class Matches:
    """What :func:`find_matches` found."""

    leaks: list[tuple[Row, str, bool]] = field(default_factory=list)  # (row, reference key, exact?)
    duplicates: list[tuple[Row, str]] = field(default_factory=list)  # (row, key of the copy that is kept)
    unchecked: int = 0  # rows of cross-dataset look-alike groups without a fingerprint


def find_matches(
    tables: dict[str, pa.Table],
    candidates: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
    reader: SourceReader,
) -> Matches:
    """Candidate rows (bool mask per dataset) that copy a reference row or a candidate of another dataset.

    A candidate with the fingerprint of a reference row is an exact leak; one without a fingerprint but
    with the size and background of a reference row, a possible leak. Among the other candidates, a row
    with the fingerprint of a candidate of another dataset is a duplicate of the first such row in
    registry order (dataset, then manifest row), which is the copy kept.
    """
    looks = {d: _content_size(t) for d, t in tables.items()}
    candidates, reference = _narrow(looks, candidates, reference)
    for d, t in tables.items():  # refine the look with the padding background, for the survivors only
        idx = np.flatnonzero(candidates.get(d, False) | reference.get(d, False))
        looks[d][idx] = looks[d][idx] * np.int64(1_000_003) + _background(t.take(pa.array(idx, pa.int64())))
    candidates, reference = _narrow(looks, candidates, reference)
    entries = [(d, int(i), True) for d, m in candidates.items() for i in np.flatnonzero(m)]
    entries += [(d, int(i), False) for d, m in reference.items() for i in np.flatnonzero(m)]
    if not entries:
        return Matches()
    rows = _fetch(tables, entries)
    with ThreadPoolExecutor(_THREADS) as pool:
        prints = list(pool.map(lambda e: fingerprint(rows[e[:2]], reader.image(rows[e[:2]])), entries))
    rank = {d: i for i, d in enumerate(DATASET_IDS)}
    groups: dict[tuple, list] = defaultdict(list)
    for e, fp in zip(entries, prints, strict=True):
        groups[(True, fp) if fp else (False, int(looks[e[0]][e[1]]))].append(e)
    found = Matches()
    for (exact, _), group in groups.items():
        refs = [e for e in group if not e[2]]
        datasets = {e[0] for e in group}
        if refs:
            ref_key = rows[min(refs, key=lambda e: (rank[e[0]], e[1]))[:2]]["key"]
            found.leaks += [(e[:2], ref_key, exact) for e in group if e[2]]
        elif len(datasets) > 1 and not exact:
            found.unchecked += len(group)
        elif len(datasets) > 1:
            keep = min(group, key=lambda e: (rank[e[0]], e[1]))
            found.duplicates += [(e[:2], rows[keep[:2]]["key"]) for e in group if e[0] != keep[0]]
    found.leaks.sort(key=lambda x: (rank[x[0][0]], x[0][1]))
    found.duplicates.sort(key=lambda x: (rank[x[0][0]], x[0][1]))
    return found


def pixel_stats(parts: list[tuple[pa.Table, float, float, np.ndarray]], reader: SourceReader) -> tuple[float, float]:
    """Pixel mean/std, in [0, 1] units, of the kept rows of several datasets, decoding as few images as possible.

    ``parts`` holds per dataset its manifest, the mean/std of all its rows (from its index.json, taken by
    ingest on the pixels before encoding) and the mask of kept rows. A fully kept dataset adds its exact
    sums; otherwise whichever is fewer is decoded: the kept rows (added) or the others (subtracted).
    """
    s1 = s2 = n = 0.0
    for table, mean, std, kept in parts:
        pixels = float(
            np.dot(
                table.column("width").to_numpy().astype(np.float64),
                table.column("height").to_numpy().astype(np.float64),
            )
        )
        whole = (mean * 255 * pixels, (std * std + mean * mean) * 65025 * pixels, pixels)
        if kept.all():
            part = whole
        elif kept.sum() <= (~kept).sum():
            part = _sums(table, np.flatnonzero(kept), reader)
        else:
            gone = _sums(table, np.flatnonzero(~kept), reader)
            part = (whole[0] - gone[0], whole[1] - gone[1], whole[2] - gone[2])
        s1, s2, n = s1 + part[0], s2 + part[1], n + part[2]
    mean = s1 / n / 255
    return mean, math.sqrt(max(0.0, s2 / n / 65025 - mean * mean))


def _sums(table: pa.Table, rows: np.ndarray, reader: SourceReader) -> tuple[int, int, int]:
    """Exact ``(sum, sum of squares, count)`` of the decoded pixels of ``rows``."""

    def sums(row: dict) -> tuple[int, int, int]:
        img = _decode(reader.image(row), row["key"])
        return int(cv2.sumElems(img)[0]), int(cv2.norm(img, cv2.NORM_L2SQR)), img.size

    picked = table.take(pa.array(rows, pa.int64())).select(_READ).to_pylist()
    with ThreadPoolExecutor(_THREADS) as pool:
        parts = list(pool.map(sums, picked))
    return sum(p[0] for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts)


def _decode(data: bytes, key: str) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise PlanktonDataError(f"cannot decode the stored image of {key}")
    return img


def _content_size(table: pa.Table) -> np.ndarray:
    """Content width and height per row as one int64 (``cw << 32 | ch``)."""

    def col(name: str) -> np.ndarray:
        return table.column(name).fill_null(-1).to_numpy().astype(np.int64)

    x0, y0, x1, y1 = (col(c) for c in _CROP)
    cw = np.where(x0 >= 0, x1 - x0, col("orig_width"))
    ch = np.where(x0 >= 0, y1 - y0, col("orig_height"))
    return (cw << 32) | ch


def _background(table: pa.Table) -> np.ndarray:
    """``pad_mode * 10**6 + pad_std * 1000`` per row from the ``preprocess`` JSON (-1 where absent)."""
    pre = table.column("preprocess")
    mode = pc.struct_field(pc.extract_regex(pre, r'"pad_mode": (?P<v>\d+)'), [0])
    std = pc.struct_field(pc.extract_regex(pre, r'"pad_std": (?P<v>[0-9.eE+-]+)'), [0])
    mode = pc.cast(pc.fill_null(mode, "-1"), pa.int64()).to_numpy()
    std = np.round(pc.cast(pc.fill_null(std, "-1"), pa.float64()).to_numpy() * 1000).astype(np.int64)
    return mode * 1_000_000 + std


def _narrow(
    looks: dict[str, np.ndarray], candidates: dict[str, np.ndarray], reference: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Keep candidates whose look occurs in a reference row or in another dataset's candidates, and the
    reference rows whose look occurs in a kept candidate. Equal images always have equal looks."""
    empty = np.empty(0, np.int64)
    ref_looks = np.unique(np.concatenate([looks[d][m] for d, m in reference.items()] + [empty]))
    per_dataset = [np.unique(looks[d][m]) for d, m in candidates.items()]
    values, counts = np.unique(np.concatenate(per_dataset + [empty]), return_counts=True)
    wanted = np.union1d(ref_looks, values[counts > 1])
    cands = {d: m & np.isin(looks[d], wanted) for d, m in candidates.items()}
    kept_looks = np.unique(np.concatenate([looks[d][m] for d, m in cands.items()] + [empty]))
    return cands, {d: m & np.isin(looks[d], kept_looks) for d, m in reference.items()}


def _fetch(tables: dict[str, pa.Table], entries: list[tuple[str, int, bool]]) -> dict[Row, dict]:
    """Manifest fields of the entries' rows, one ``take`` per dataset."""
    by_dataset: dict[str, list[int]] = defaultdict(list)
    for d, i, _ in entries:
        by_dataset[d].append(i)
    rows = {}
    for d, idx in by_dataset.items():
        picked = tables[d].take(pa.array(idx, pa.int64())).select(_READ + _CROP + ["orig_width", "orig_height"])
        rows.update({(d, i): r for i, r in zip(idx, picked.to_pylist(), strict=True)})
    return rows
