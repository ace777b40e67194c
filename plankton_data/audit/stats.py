"""Summaries of a manifest as plain, JSON-able data: samples per dataset and class, published image sizes.

The target can be a manifest (``.parquet``), a shard folder (its manifest is found through ``index.json``), or
the name of an ingested dataset or shard set (``<manifests root>/<name>.parquet``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from plankton_data.errors import PlanktonDataError
from plankton_data.format.index import INDEX_NAME, ShardIndex, manifest_mismatch, manifest_path, read_index
from plankton_data.format.manifest import read_manifest
from plankton_data.ingest.adapters import registry_order

#: Upper edges (exclusive) of the bins of the longer published side, in pixels; the last bin is open.
SIZE_BINS = (64, 128, 256, 512, 1024)


@dataclass(frozen=True)
class Target:
    """A manifest and the shards root its ``shard`` paths are relative to."""

    manifest: Path
    shards_root: Path


def resolve_target(
    target: Path | str, shards_root: Path | str = "shards", manifests_root: Path | str = "manifests"
) -> Target:
    """Find the manifest behind ``target`` (see the module docstring).

    Raises:
        PlanktonDataError: ``target`` is none of the three, or the shard folder has no manifest.
    """
    path = Path(target)
    if path.is_file() and path.suffix == ".parquet":
        return Target(path, Path(shards_root))
    if (path / INDEX_NAME).is_file():
        index = read_index(path)
        manifest = manifest_path(path, index)
        if manifest is None:
            raise PlanktonDataError(f"no manifest found for the shard folder {path}")
        _check_pair(index, manifest)
        return Target(manifest, path.parent)
    named = Path(manifests_root) / f"{target}.parquet"
    if named.is_file():
        folder = Path(shards_root) / str(target)
        if (folder / INDEX_NAME).is_file():
            _check_pair(read_index(folder), named)
        return Target(named, Path(shards_root))
    raise PlanktonDataError(
        f"{target} is not a manifest, a shard folder, or an ingested dataset or shard set in {manifests_root}/"
    )


def _check_pair(index: ShardIndex, manifest: Path) -> None:
    """Refuse a manifest that is not the one its shard folder was committed with (it would describe other data)."""
    if mismatch := manifest_mismatch(index, manifest):
        raise PlanktonDataError(mismatch)


def summarize(target: Path | str, shards_root: Path | str = "shards", manifests_root: Path | str = "manifests") -> dict:
    """Counts and size distributions of ``target``'s manifest, as JSON-able data::

    {"manifest": str, "total": int,
     "datasets": {dataset: {"samples": int,
                            "classes": {label_raw: int},          # most common first
                            "orig_width": {"min", "p10", "median", "p90", "max"},
                            "orig_height": {...},
                            "longer_side": {"<64": int, "64-127": int, ..., ">=1024": int},
                            "stored": {"256x256": int}}}}
    """
    found = resolve_target(target, shards_root, manifests_root)
    table = read_manifest(found.manifest)
    datasets = table.column("dataset").to_numpy(zero_copy_only=False)
    out: dict = {"manifest": str(found.manifest), "total": table.num_rows, "datasets": {}}
    for dataset in dataset_order(datasets):
        part = table.filter(pa.array(datasets == dataset))
        w = part.column("orig_width").to_numpy()
        h = part.column("orig_height").to_numpy()
        stored = Counter(
            f"{a}x{b}" for a, b in zip(part.column("width").to_pylist(), part.column("height").to_pylist(), strict=True)
        )
        out["datasets"][dataset] = {
            "samples": part.num_rows,
            "classes": dict(Counter(part.column("label_raw").to_pylist()).most_common()),
            "orig_width": _quantiles(w),
            "orig_height": _quantiles(h),
            "longer_side": _histogram(np.maximum(w, h)),
            "stored": dict(stored.most_common()),
        }
    return out


def dataset_order(datasets: np.ndarray) -> list[str]:
    """The distinct dataset ids of a manifest column, in registry order (unknown ids last, sorted)."""
    return registry_order(str(d) for d in datasets)


def _quantiles(values: np.ndarray) -> dict[str, int]:
    q = np.percentile(values, [0, 10, 50, 90, 100], method="nearest")
    return dict(zip(("min", "p10", "median", "p90", "max"), (int(v) for v in q), strict=True))


def _histogram(values: np.ndarray) -> dict[str, int]:
    edges = (0, *SIZE_BINS)
    labels = [f"<{SIZE_BINS[0]}"] + [f"{a}-{b - 1}" for a, b in zip(SIZE_BINS, SIZE_BINS[1:], strict=False)]
    counts = np.bincount(np.searchsorted(SIZE_BINS, values, side="right"), minlength=len(edges))
    return dict(zip([*labels, f">={SIZE_BINS[-1]}"], (int(c) for c in counts), strict=True))
