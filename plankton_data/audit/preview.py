"""A contact sheet of stored samples, one row per dataset (like Figure 2 of the paper), as a PNG.

It shows the images exactly as training will see them (after crop, legend removal, padding and resize), so
a glance tells whether preprocessing looks right. Samples are picked per dataset with a seeded RNG.
"""

from __future__ import annotations

import hashlib
import os
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


def contact_sheet(
    target: Path | str,
    out: Path | str,
    per_dataset: int = 8,
    tile: int = 128,
    seed: int = 0,
    shards_root: Path | str = "shards",
    manifests_root: Path | str = "manifests",
) -> Path:
    """Write a PNG of ``per_dataset`` samples of each dataset in ``target`` (a shard folder, manifest or name).

    Rows follow the registry order of the datasets; each starts with the dataset id and its sample count.
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
    width = _LABEL_W + per_dataset * (tile + _GAP) + _GAP
    sheet = np.full((len(order) * (tile + _GAP) + _GAP, width), _BACKGROUND, np.uint8)
    for r, dataset in enumerate(order):
        rows = np.flatnonzero(datasets == dataset)
        picked = np.sort(rng.choice(rows, size=min(per_dataset, len(rows)), replace=False))
        y = _GAP + r * (tile + _GAP)
        cv2.putText(sheet, str(dataset), (8, y + tile // 2 - 4), _FONT, 0.7, 0, 2, cv2.LINE_AA)
        cv2.putText(sheet, f"{len(rows):,} samples", (8, y + tile // 2 + 22), _FONT, 0.5, 90, 1, cv2.LINE_AA)
        for c, row in enumerate(table.take(pa.array(picked)).to_pylist()):
            img = cv2.imdecode(np.frombuffer(_stored_image(found.shards_root, row), np.uint8), cv2.IMREAD_GRAYSCALE)
            if img is None:
                raise PlanktonDataError(f"cannot decode the stored image of {row['key']}")
            x = _LABEL_W + _GAP + c * (tile + _GAP)
            sheet[y : y + tile, x : x + tile] = cv2.resize(img, (tile, tile), interpolation=cv2.INTER_AREA)
    return _write_png(sheet, Path(out))


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
    return atomic.write_bytes(path, buf.tobytes())  # no temp file is left behind if the write fails
