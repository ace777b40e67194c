"""The evaluation splits of Kareinen et al. (2025): 5 stratified folds, validation, labelled fractions.

For each *group* of a labelled dataset (DAPlankton: one group per subset and instrument, e.g.
``daplankton/lab/CS``; elsewhere one per dataset/instrument):

* **folds** - every sample is in the test set of exactly one of ``folds`` folds (20 % each for 5 folds),
  assigned class by class so every fold holds ``floor`` or ``ceil`` of ``n_c / folds`` of each class ``c``;
* **validation** - in each fold, ``val_share`` (15 %) of each class's train part (rounded half up, but
  never the class's last train sample) is validation;
* **fractions** - the rest is the fold's training pool; the labelled fraction ``f`` takes
  ``min(n_train_c, max(1, floor(f * n_train_c)))`` samples of each class ``c``: rounded down, but at least
  one per class. This is the paper's rule: on the published DAPlankton class counts it reproduces the
  per-class ranges of its Table 4 (``tests/train/test_splits.py``). Fractions are nested (the 1 % set is
  inside the 5 % set ...), so accuracy-vs-fraction curves compare the same images, and validation/test never
  change with the fraction.

Everything is deterministic from ``seed``, the group name and the sample keys (not the manifest row order).
The result is a long Parquet table, one row per (sample, fold):

======== ============================================================================
key      sample key (manifest ``key``)
group    ``/``-joined group values (empty values dropped), e.g. ``daplankton/lab/CS``
label    normalised label
fold     0 .. folds-1
role     ``train``, ``val`` or ``test`` in this fold
in_Xpct  bool, one column per fraction (``in_1pct``, ``in_5pct``, ``in_10pct``, ``in_100pct``):
         the sample is in the fold's training set at fraction X %
======== ============================================================================
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from plankton_data.format.manifest import read_manifest
from plankton_train.errors import SplitError

FRACTIONS: tuple[float, ...] = (0.01, 0.05, 0.10, 1.0)
ROLES: tuple[str, ...] = ("train", "val", "test")
DEFAULT_GROUP_BY: tuple[str, ...] = ("dataset", "subset", "instrument")


@dataclass(frozen=True)
class SplitConfig:
    """How splits are drawn; stored in the Parquet metadata so a file says how it was made."""

    folds: int = 5  # test folds; each sample is test in exactly one
    val_share: float = 0.15  # share of each class's train part held out for validation (best-epoch choice)
    fractions: tuple[float, ...] = FRACTIONS  # labelled fractions of the training pool, in (0, 1]
    seed: int = 0


def fraction_column(fraction: float) -> str:
    """Column name of a fraction's membership flag: ``0.01 -> "in_1pct"``, ``1.0 -> "in_100pct"``."""
    return f"in_{fraction * 100:g}pct"


def _round_half_up(x: float) -> int:
    """Validation share rounding (the fractions round down, see :func:`_fraction_size`)."""
    return int(math.floor(x + 0.5))


def _fraction_size(fraction: float, n_train: int) -> int:
    """Training samples a class contributes at ``fraction``: ``floor(fraction * n_train)``, at least one.

    The paper's rule (Table 4). The ``1e-9`` only absorbs binary round-off, so a product that is an integer
    in decimal (``0.29 * 100``) is not floored one below it.
    """
    return min(n_train, max(1, math.floor(fraction * n_train + 1e-9))) if n_train else 0


def _check(cfg: SplitConfig) -> None:
    if cfg.folds < 2:
        raise SplitError(f"need at least 2 folds, got {cfg.folds}")
    if not 0 <= cfg.val_share < 1:
        raise SplitError(f"val_share must be in [0, 1), got {cfg.val_share}")
    if not cfg.fractions or any(not 0 < f <= 1 for f in cfg.fractions):
        raise SplitError(f"fractions must be in (0, 1], got {cfg.fractions}")


def _split_group(keys: np.ndarray, labels: np.ndarray, cfg: SplitConfig, rng: np.random.Generator) -> pd.DataFrame:
    """Splits of one group. ``keys``/``labels``: (N,) arrays sorted by key. Returns folds x N rows."""
    n = len(keys)
    test_fold = np.empty(n, dtype=np.int64)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for idx in by_class:
        perm = rng.permutation(idx)
        test_fold[perm] = (rng.integers(cfg.folds) + np.arange(len(perm))) % cfg.folds  # random start balances folds
    frames = []
    for fold in range(cfg.folds):
        role = np.where(test_fold == fold, "test", "train").astype(object)
        member = {f: np.zeros(n, dtype=bool) for f in cfg.fractions}
        for idx in by_class:
            train = rng.permutation(idx[test_fold[idx] != fold])
            n_val = min(_round_half_up(cfg.val_share * len(train)), max(0, len(train) - 1))
            role[train[:n_val]] = "val"
            pool = train[n_val:]  # order = rank: the first k are the fraction's k samples (nested fractions)
            for f in cfg.fractions:
                member[f][pool[: _fraction_size(f, len(pool))]] = True
        frame = pd.DataFrame({"key": keys, "label": labels, "fold": fold, "role": role})
        for f in cfg.fractions:
            frame[fraction_column(f)] = member[f]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def group_names(frame: pd.DataFrame, group_by: Sequence[str]) -> pd.Series:
    """``/``-joined values of ``group_by`` columns per row, skipping empty values (``zoolake/DSPC``)."""
    missing = [c for c in group_by if c not in frame.columns]
    if missing:
        raise SplitError(f"cannot group by {missing}: the table has no such columns")
    parts = frame[list(group_by)].astype(str).to_numpy()
    return pd.Series(["/".join(v for v in row if v) for row in parts], index=frame.index, dtype=object)


def make_splits(
    samples: pd.DataFrame, *, cfg: SplitConfig = SplitConfig(), group_by: Sequence[str] = DEFAULT_GROUP_BY
) -> pd.DataFrame:
    """Draw the splits of every group in ``samples`` (columns ``key``, ``label`` and ``group_by``).

    Unlabelled rows (empty ``label``) are dropped. Returns the long table described in the module
    docstring, ``folds x n_labelled`` rows, sorted by group, fold and key.
    """
    _check(cfg)
    labelled = samples[samples["label"].astype(str) != ""].copy()
    if labelled.empty:
        raise SplitError("no labelled samples: splits need a manifest with labels")
    labelled["group"] = group_names(labelled, group_by)
    out = []
    for group, rows in labelled.groupby("group", sort=True):
        rows = rows.sort_values("key")
        rng = np.random.default_rng([cfg.seed, zlib.crc32(str(group).encode())])
        part = _split_group(rows["key"].to_numpy(dtype=object), rows["label"].to_numpy(dtype=object), cfg, rng)
        part.insert(1, "group", group)
        out.append(part)
    return pd.concat(out, ignore_index=True).sort_values(["group", "fold", "key"], ignore_index=True)


def splits_from_manifest(
    manifest: Path | str, *, cfg: SplitConfig = SplitConfig(), group_by: Sequence[str] = DEFAULT_GROUP_BY
) -> pd.DataFrame:
    """:func:`make_splits` over a validated manifest Parquet file (not a rejects list: it has no samples)."""
    full = read_manifest(manifest)
    wanted = ["key", "label", *[c for c in group_by if c not in ("key", "label")]]
    missing = [c for c in wanted if c not in full.column_names]
    if missing:
        raise SplitError(
            f"{manifest} has no column {', '.join(missing)}"
            + ("" if "key" in full.column_names else " (a rejects list? pass the manifest)")
            + f"; --by takes manifest columns such as {', '.join(DEFAULT_GROUP_BY)}"
        )
    table = full.select(wanted)
    return make_splits(table.to_pandas(), cfg=cfg, group_by=group_by)


def write_splits(splits: pd.DataFrame, path: Path | str, *, cfg: SplitConfig) -> Path:
    """Write the table with the config in the Parquet metadata (``plankton_splits``, JSON)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(splits, preserve_index=False)
    meta = dict(table.schema.metadata or {}, plankton_splits=json.dumps(asdict(cfg)))
    pq.write_table(table.replace_schema_metadata(meta), path, compression="zstd")
    return path


def read_splits(path: Path | str) -> tuple[pd.DataFrame, SplitConfig]:
    """Read a splits file written by :func:`write_splits`; returns the table and its config."""
    path = Path(path)
    if not path.is_file():
        raise SplitError(f"no splits file at {path} (make one with `plankton-train splits`)")
    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(b"plankton_splits")
    if raw is None:
        raise SplitError(f"{path} is not a splits file (no plankton_splits metadata)")
    cfg = json.loads(raw)
    cfg["fractions"] = tuple(cfg["fractions"])
    return table.to_pandas(), SplitConfig(**cfg)


def select(splits: pd.DataFrame, group: str, fold: int, fraction: float) -> dict[str, list[str]]:
    """Keys of each role for one cell: ``{"train": [...], "val": [...], "test": [...]}``.

    ``train`` is the fraction's training set; ``val``/``test`` do not depend on the fraction.
    """
    col = fraction_column(fraction)
    if col not in splits.columns:
        raise SplitError(f"fraction {fraction} is not in the splits file (columns: {list(splits.columns)})")
    cell = splits[(splits["group"] == group) & (splits["fold"] == fold)]
    if cell.empty:
        groups = sorted(splits["group"].unique())
        raise SplitError(f"no rows for group {group!r} fold {fold}; groups are {groups}")
    return {
        "train": cell.loc[cell[col], "key"].tolist(),
        "val": cell.loc[cell["role"] == "val", "key"].tolist(),
        "test": cell.loc[cell["role"] == "test", "key"].tolist(),
    }


def per_class_ranges(splits: pd.DataFrame) -> pd.DataFrame:
    """Table 4 of the paper: per group and fraction, the fewest and most training images of any class.

    Taken over classes and folds (only classes with training images in the fold). Columns ``group``,
    ``fraction``, ``min``, ``max``, ``classes``, ``train_images`` (mean over folds).
    """
    cols = [c for c in splits.columns if c.startswith("in_") and c.endswith("pct")]
    rows = []
    for group, g in splits.groupby("group", sort=True):
        for col in cols:
            counts = g[g[col]].groupby(["fold", "label"]).size()
            rows.append(
                {
                    "group": group,
                    "fraction": float(col[3:-3]) / 100,
                    "min": int(counts.min()),
                    "max": int(counts.max()),
                    "classes": int(g["label"].nunique()),
                    "train_images": float(counts.groupby(level="fold").sum().mean()),
                }
            )
    return pd.DataFrame(rows).sort_values(["group", "fraction"], ignore_index=True)
