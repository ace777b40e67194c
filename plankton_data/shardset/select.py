"""Which input rows a shard set keeps, and why each of the others is left out (steps 1b-4 of the build).

Every input row gets exactly one fate: kept, or removed for one of :data:`REASONS`, with a detail naming the
matching key where there is one. All of it is vectorised over the manifests' columns; nothing is decoded.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass
from importlib import resources

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from plankton_data.format.index import ShardIndex
from plankton_data.ingest.adapters import dataset_info, normalize_label, registry_order

REASONS = ("split_rule", "shared_taxon", "leak", "duplicate", "remainder")
#: One row per input row left out of a shard set: ``manifests/<name>.removed.parquet``.
REMOVED_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("label_raw", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False, metadata={"description": " | ".join(REASONS)}),
        pa.field("detail", pa.string(), nullable=False, metadata={"description": "why, naming the matching key"}),
    ]
)
TAXA_RESOURCE = "daplankton_shared_taxa.csv"


@dataclass
class Source:
    """One ingested dataset a set is built from (or compared against): its manifest and index."""

    dataset: str
    table: pa.Table
    index: ShardIndex
    digest: str  # sha256 of index.json + manifest bytes: identifies the ingested data

    def encoding(self) -> tuple:
        cfg = self.index.args.get("config", {})
        return self.index.image_format, self.index.size, cfg.get("quality")


@dataclass(frozen=True)
class SharedTaxon:
    """A DAPlankton class and its SYKE-plankton_IFCB_2022 counterpart(s)."""

    daplankton: str
    syke_ifcb: tuple[str, ...]
    confidence: str  # "exact" (same name after `_`/`-`) or "probable" (the uncertain 33rd taxon)


class Selection:
    """The fate of every input row: per included dataset, 0 (kept) or 1 + index into REASONS, and a detail."""

    def __init__(self, sources: dict[str, Source]) -> None:
        self.fates = {d: np.zeros(s.table.num_rows, np.int8) for d, s in sources.items()}
        self.details = {d: np.full(s.table.num_rows, "", object) for d, s in sources.items()}
        self.leaks: list[tuple[str, str]] = []
        self.duplicates: list[tuple[str, str]] = []

    def remove(self, dataset: str, rows: np.ndarray, reason: str, detail: str | list[str]) -> None:
        self.fates[dataset][rows] = REASONS.index(reason) + 1
        self.details[dataset][rows] = detail

    def rows(self, dataset: str, reason: str | None = None) -> np.ndarray:
        """Rows of ``dataset`` removed for ``reason``, or kept so far (``None``)."""
        return np.flatnonzero(self.fates[dataset] == (REASONS.index(reason) + 1 if reason else 0))

    def counts(self, reason: str) -> dict[str, int]:
        return {d: len(self.rows(d, reason)) for d in self.fates if len(self.rows(d, reason))}


def load_shared_taxa(uncertain: bool = True) -> list[SharedTaxon]:
    """The DAPlankton / SYKE-plankton_IFCB_2022 shared taxa; ``uncertain=False`` drops the probable one."""
    text = (resources.files("plankton_data.shardset") / "resources" / TAXA_RESOURCE).read_text()
    taxa = [
        SharedTaxon(r["daplankton_name"], tuple(r["syke_ifcb_names"].split(";")), r["confidence"])
        for r in csv.DictReader(io.StringIO(text))
    ]
    return [t for t in taxa if uncertain or t.confidence == "exact"]


def select(
    sources: dict[str, Source],
    refs: dict[str, Source],
    taxa: list[SharedTaxon],
    drop_duplicates: bool,
    all_splits: bool,
) -> Selection:
    """Steps 1b-4 of the module docstring, vectorised over ``pixel_sha256``."""
    sel = Selection(sources)
    if not all_splits:
        _apply_split_rules(sources, sel)
    shared = {normalize_label(n): t for t in taxa for n in (t.daplankton, *t.syke_ifcb)}
    why = {label: f"taxon shared with DAPlankton {t.daplankton} ({t.confidence})" for label, t in shared.items()}
    for d, s in sources.items():
        live = sel.rows(d)
        labels = s.table.column("label").take(pa.array(live))
        hit = np.flatnonzero(pc.is_in(labels, value_set=pa.array(list(why), pa.string())).to_numpy())
        sel.remove(d, live[hit], "shared_taxon", [why[label] for label in labels.take(pa.array(hit)).to_pylist()])
    excluded = [  # every excluded image, in registry order then manifest order: the first match is named
        refs[d].table.select(["key", "pixel_sha256"])
        if d in refs
        else sources[d].table.select(["key", "pixel_sha256"]).take(pa.array(sel.rows(d, "shared_taxon")))
        for d in registry_order([*refs, *sources])
    ]
    gone = pa.concat_tables(excluded).combine_chunks()
    for d, s in sources.items():
        live = sel.rows(d)
        match = pc.index_in(s.table.column("pixel_sha256").take(pa.array(live)), value_set=_array(gone, "pixel_sha256"))
        hit = pc.is_valid(match).to_numpy()
        excluded_keys = keys_of(gone, pc.filter(match, pa.array(hit)).to_numpy())
        sel.remove(d, live[hit], "leak", [f"pixels identical to excluded image {k}" for k in excluded_keys])
        sel.leaks += zip(keys_of(s.table, live[hit]), excluded_keys, strict=True)
    _find_duplicates(sources, sel, drop_duplicates)
    return sel


def _apply_split_rules(sources: dict[str, Source], sel: Selection) -> None:
    """Step 1b: remove the rows whose ``split`` is not among their dataset's ``pretrain_splits``."""
    for d, s in sources.items():
        info = dataset_info(d)
        if info.pretrain_splits is None:
            continue
        splits = s.table.column("split")
        hit = np.flatnonzero(pc.invert(pc.is_in(splits, value_set=pa.array(info.pretrain_splits))).to_numpy())
        keeps = "/".join(info.pretrain_splits)
        sel.remove(
            d,
            hit,
            "split_rule",
            [
                f"split {x!r}: only {keeps} is pretraining data ({info.pretrain_why})"
                for x in splits.take(pa.array(hit)).to_pylist()
            ],
        )


def split_rule_text(dataset: str) -> str:
    info = dataset_info(dataset)
    return f"keeps only split {'/'.join(info.pretrain_splits or ())}: {info.pretrain_why}"


def _find_duplicates(sources: dict[str, Source], sel: Selection, drop: bool) -> None:
    """Step 4: group the rows still kept by ``pixel_sha256``; the first of a group (registry, then manifest
    order) is kept, and every row of the group from another dataset is a duplicate of it."""
    live = {d: sel.rows(d) for d in sources}
    kept = pa.concat_tables(
        [s.table.select(["key", "pixel_sha256"]).take(pa.array(live[d])) for d, s in sources.items()]
    )
    ids = _array(kept, "pixel_sha256").dictionary_encode().indices.to_numpy()
    owner = np.repeat(np.arange(len(sources)), [len(v) for v in live.values()])
    keeper = np.unique(ids, return_index=True)[1][ids]  # position of the first row with the same pixels
    dup = np.flatnonzero(owner != owner[keeper])
    bases = np.cumsum([0] + [len(v) for v in live.values()])
    for k, d in enumerate(sources):
        mine = dup[owner[dup] == k]
        pairs = list(zip(keys_of(kept, mine), keys_of(kept, keeper[mine]), strict=True))
        sel.duplicates += pairs
        if drop:
            sel.remove(
                d, live[d][mine - bases[k]], "duplicate", [f"pixels identical to {b}, which is kept" for _, b in pairs]
            )


def removed_table(sources: dict[str, Source], sel: Selection) -> pa.Table:
    parts = []
    for d, s in sources.items():
        rows = np.flatnonzero(sel.fates[d])
        picked = s.table.take(pa.array(rows))
        columns = {
            "key": picked.column("key"),
            "dataset": pa.array([d] * len(rows), pa.string()),
            "label_raw": picked.column("label_raw"),
            "reason": pa.array(np.array(REASONS, object)[sel.fates[d][rows] - 1], pa.string()),
            "detail": pa.array(sel.details[d][rows], pa.string()),
        }
        parts.append(pa.table(columns, schema=REMOVED_SCHEMA))
    return pa.concat_tables(parts)


def taxa_removed(sources: dict[str, Source], sel: Selection) -> dict[str, dict[str, int]]:
    out = {}
    for d, s in sources.items():
        labels = s.table.column("label_raw").take(pa.array(sel.rows(d, "shared_taxon"), pa.int64())).to_pylist()
        if labels:
            out[d] = dict(sorted(Counter(labels).items()))
    return out


def _array(table: pa.Table, column: str) -> pa.Array:
    return table.column(column).combine_chunks()


def keys_of(table: pa.Table, rows: np.ndarray) -> list[str]:
    return table.column("key").take(pa.array(rows, pa.int64())).to_pylist()
