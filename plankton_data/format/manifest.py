"""The one manifest schema: column names, types and meanings, plus read/write helpers.

Every manifest (one per ingested dataset, one per shard set) is a Parquet file with these columns, one row
per sample. ``docs/manifest.md`` documents each column; a test keeps the two in step. Readers in
``plankton_train`` go through :func:`read_manifest`, which validates.
"""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from plankton_data.errors import SchemaError
from plankton_data.format import atomic

SCHEMA_VERSION = "1"

#: (name, arrow type, nullable, one-line meaning). The order is the column order on disk.
COLUMNS: tuple[tuple[str, pa.DataType, bool, str], ...] = (
    (
        "key",
        pa.string(),
        False,
        "sample key: `<dataset>_<16 hex>`; tar members are `<key>.<image_format>` and `<key>.json`",
    ),
    (
        "dataset",
        pa.string(),
        False,
        "dataset id (kaggle, zoolake, syke_zooscan, pmid2019, syke_ifcb, ude_diatoms, daplankton)",
    ),
    ("source", pa.string(), False, "path of the input inside `--raw`, `/`-joined through archives"),
    (
        "label_raw",
        pa.string(),
        False,
        "label exactly as published (folder name, XML `<name>`, CSV value); empty if unlabelled",
    ),
    ("label", pa.string(), False, "normalised label: lower case, spaces and hyphens as `_`; empty if unlabelled"),
    ("split", pa.string(), False, "split published with the dataset (train/val/test/unlabeled); empty if none"),
    ("subset", pa.string(), False, "DAPlankton subset (`lab` or `sea`); empty elsewhere"),
    ("instrument", pa.string(), False, "imaging instrument (IFCB, CS, FC, ZooScan, ISIIS, DSPC, microscope)"),
    ("orig_width", pa.int32(), False, "width of the published image in pixels, before any crop"),
    ("orig_height", pa.int32(), False, "height of the published image in pixels, before any crop"),
    (
        "crop_x0",
        pa.int32(),
        True,
        "left edge of the crop box in published-image pixels (0-based, inclusive); null if no crop",
    ),
    ("crop_y0", pa.int32(), True, "top edge of the crop box (0-based, inclusive); null if no crop"),
    ("crop_x1", pa.int32(), True, "right edge of the crop box (exclusive); null if no crop"),
    ("crop_y1", pa.int32(), True, "bottom edge of the crop box (exclusive); null if no crop"),
    ("width", pa.int32(), False, "width of the stored image in pixels"),
    ("height", pa.int32(), False, "height of the stored image in pixels"),
    ("image_format", pa.string(), False, "encoding of the stored image member: `jpg` or `png`"),
    ("image_sha256", pa.string(), False, "sha256 (hex) of the stored image bytes"),
    (
        "pixel_sha256",
        pa.string(),
        False,
        "sha256 of the gray pixels (and shape) before padding and resizing: equal for identical published "
        "images in any dataset; used for duplicate and leak detection",
    ),
    ("pixel_sum", pa.int64(), False, "sum of the stored image's pixel values (0-255): exact set mean without decoding"),
    ("pixel_sq_sum", pa.int64(), False, "sum of the squared pixel values: exact set std without decoding"),
    (
        "shard",
        pa.string(),
        False,
        "tar holding the sample, relative to the shards root (e.g. `kaggle/kaggle-000000.tar`)",
    ),
    ("offset", pa.int64(), False, "byte offset of the image member's data inside the tar"),
    ("length", pa.int64(), False, "byte length of the image member's data"),
    ("preprocess", pa.string(), False, "JSON of the preprocessing applied (version, steps, size, encoding, seed)"),
    (
        "meta",
        pa.string(),
        False,
        "JSON of dataset-specific extras (ZooLake features, VOC flags, UDE columns...); `{}` if none",
    ),
)

#: Columns that only shard sets (``plankton-data shard``) carry: where the sample came from.
SHARDSET_COLUMNS: tuple[tuple[str, pa.DataType, bool, str], ...] = (
    ("origin_shard", pa.string(), False, "tar the sample was copied from (the ingested dataset's shard)"),
    ("origin_offset", pa.int64(), False, "byte offset of the image data inside `origin_shard`"),
)

#: Rejected inputs: every raw input is either a manifest row or a reject row.
REJECT_COLUMNS: tuple[tuple[str, pa.DataType, bool, str], ...] = (
    ("dataset", pa.string(), False, "dataset id"),
    ("source", pa.string(), False, "path of the rejected input inside `--raw`"),
    ("label_raw", pa.string(), False, "label as published, if known"),
    ("reason", pa.string(), False, "why it was rejected or skipped (one line)"),
    (
        "kind",
        pa.string(),
        False,
        "`reject` (an input that should have been a sample) or `skipped` (not a sample: e.g. a PDF)",
    ),
)

COLUMN_NAMES = tuple(c[0] for c in COLUMNS)


def _schema(columns: tuple[tuple[str, pa.DataType, bool, str], ...]) -> pa.Schema:
    fields = [pa.field(n, t, nullable=nul, metadata={"description": d}) for n, t, nul, d in columns]
    return pa.schema(fields, metadata={"plankton_schema_version": SCHEMA_VERSION})


MANIFEST_SCHEMA = _schema(COLUMNS)
SHARDSET_SCHEMA = _schema(COLUMNS + SHARDSET_COLUMNS)
REJECTS_SCHEMA = _schema(REJECT_COLUMNS)


def to_table(rows: list[dict], schema: pa.Schema = MANIFEST_SCHEMA) -> pa.Table:
    """Build a validated table from row dicts (missing nullable columns become null)."""
    cols = {f.name: [r.get(f.name) for r in rows] for f in schema}
    try:
        table = pa.table(cols, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise SchemaError(f"manifest rows do not match the schema: {exc}") from exc
    validate(table)
    return table


def validate(table: pa.Table) -> None:
    """Raise :class:`SchemaError` unless ``table`` has the manifest columns and unique keys."""
    names = set(table.column_names)
    if "reason" in names:
        return
    missing = [c for c in COLUMN_NAMES if c not in names]
    if missing:
        raise SchemaError(f"manifest lacks columns {missing}")
    keys = table.column("key")
    if pc.count_distinct(keys).as_py() != len(keys):
        raise SchemaError("manifest has duplicate sample keys")


def pixel_stats(table: pa.Table) -> tuple[float, float]:
    """Exact pixel mean and std of all stored images in ``table``, in [0, 1] units, from the per-row sums."""
    n = pc.sum(pc.multiply(pc.cast(table["width"], pa.int64()), pc.cast(table["height"], pa.int64()))).as_py()
    if not n:
        return 0.0, 0.0
    mean = pc.sum(table["pixel_sum"]).as_py() / n / 255.0
    var = pc.sum(table["pixel_sq_sum"]).as_py() / n / 65025.0 - mean * mean
    return mean, math.sqrt(max(0.0, var))


def dataset_pixel_stats(table: pa.Table) -> dict[str, list[float]]:
    """:func:`pixel_stats` of each dataset's rows: ``{dataset id: [mean, std]}``, ids sorted."""
    sums = table.select(["dataset", "width", "height", "pixel_sum", "pixel_sq_sum"])  # filter no string columns
    datasets = pc.unique(sums["dataset"]).to_pylist()
    return {d: list(pixel_stats(sums.filter(pc.equal(sums["dataset"], d)))) for d in sorted(datasets)}


def write_table(table: pa.Table, path: Path, *, rename: bool = True) -> None:
    """Write Parquet atomically: a temp file in the same folder, fsync, then rename.

    ``rename=False`` leaves the finished temp file (:func:`~plankton_data.format.atomic.partial_path`) for the
    caller to rename when everything it commits together is written.
    """
    with atomic.atomic_path(path, rename=rename) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_manifest(path: Path | str) -> pa.Table:
    """Read and validate a manifest (or rejects list) Parquet file."""
    path = Path(path)
    if not path.is_file():
        raise SchemaError(f"no manifest at {path}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SchemaError(f"cannot read manifest {path}: {exc}") from exc
    validate(table)
    return table
