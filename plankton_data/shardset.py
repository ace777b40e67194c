"""``shard``: ingested per-dataset shards -> one globally shuffled pretraining shard set ``shards/<name>/``.

Selection, in this order (every input row gets exactly one fate, so ``inputs = kept + removed``):

1. rows of the included datasets (default: every ingested dataset that is not excluded);
2. ``shared_taxon``: when ``daplankton`` is excluded, rows of any dataset whose normalised label is one of the
   taxa DAPlankton shares with SYKE-plankton_IFCB_2022 (``resources/daplankton_shared_taxa.csv``);
3. ``leak`` / ``possible_leak``: rows whose pixels equal an excluded image (a row of an excluded dataset, or
   one removed in step 2); see :mod:`plankton_data.pixels` for how pixels are compared;
4. ``duplicate``: rows whose pixels equal a row of another included dataset; always reported, removed only
   with ``drop_duplicates`` (the copy in the dataset listed first in the registry is kept);
5. a global seeded shuffle, then ``n // samples_per_shard`` tars of exactly ``samples_per_shard`` samples;
   the ``n % samples_per_shard`` rows after the last full shard are ``remainder``.

Every removed row is listed with its reason in ``manifests/<name>.removed.parquet``.

Copying (:mod:`plankton_data.shardcopy`): each sample's tar blocks are copied byte for byte from its source
tar (no decode, no re-encode) after the source tar has been checked against its ``index.json`` sha256.

Atomic and resumable, as ingest: tars are written as ``*.partial`` in ``shards/.<name>.staging-<plan>/`` and
renamed when complete, then a ``.done`` sidecar marks each; a rerun of the same plan skips marked tars.
``index.json`` is written last into the staging folder, which then replaces ``shards/<name>/``; the removed
list and the manifest follow. Same inputs and arguments give byte-identical outputs.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from plankton_data import __version__
from plankton_data.adapters import DATASET_IDS, get_adapter, normalize_label
from plankton_data.errors import PlanktonDataError
from plankton_data.manifest import MANIFEST_SCHEMA, SHARDSET_SCHEMA, read_manifest, to_table, validate, write_table
from plankton_data.pixels import SourceReader, find_matches, pixel_stats
from plankton_data.shard_index import INDEX_NAME, ShardIndex, ShardInfo, read_index, write_index
from plankton_data.shardcopy import Layout, plan_layout, verify_sources, write_tars

#: ``progress(done_samples, total_samples)``, called from the calling thread.
ProgressFn = Callable[[int, int], None]
REASONS = ("shared_taxon", "leak", "possible_leak", "duplicate", "remainder")
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
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


@dataclass(frozen=True)
class SharedTaxon:
    """A DAPlankton class and its SYKE-plankton_IFCB_2022 counterpart(s)."""

    daplankton: str
    syke_ifcb: tuple[str, ...]
    confidence: str  # "exact" (same name after `_`/`-`) or "probable" (the uncertain 33rd taxon)


@dataclass
class ShardSetReport:
    """What one :func:`build_shard_set` run wrote and removed; the CLI renders it."""

    name: str
    shard_dir: Path
    manifest: Path
    removed_path: Path
    included: list[str]
    excluded: list[str]
    inputs: dict[str, int]  # included dataset -> input rows
    kept: dict[str, int]  # included dataset -> samples in the set
    removed: dict[str, dict[str, int]]  # reason -> dataset -> rows
    taxa_removed: dict[str, dict[str, int]]  # dataset -> label_raw -> rows removed as shared taxa
    shared_taxa: list[str]  # DAPlankton classes whose taxa were removed (empty if the rule did not apply)
    leaks: list[tuple[str, str]]  # (removed key, excluded key with the same pixels)
    duplicates: list[tuple[str, str]]  # (duplicate key, key of the copy kept), found even if not dropped
    remainder: list[str]  # keys after the last full shard
    excluded_rows: dict[str, int]  # excluded, ingested dataset -> rows the leak guard compared against
    notes: list[str]
    shards: int
    samples_per_shard: int
    total: int
    bytes: int
    seconds: float
    mean: float
    std: float
    plan: str
    resumed_shards: int = 0


@dataclass
class _Source:
    dataset: str
    table: pa.Table
    index: ShardIndex
    digest: str  # sha256 of index.json + manifest bytes: identifies the ingested data

    def encoding(self) -> tuple:
        cfg = self.index.args.get("config", {})
        return self.index.image_format, self.index.size, cfg.get("quality")


@dataclass
class _Selection:
    fates: dict[str, np.ndarray]  # included dataset -> per row: 0 kept, else 1 + index into REASONS
    details: dict[tuple[str, int], str] = field(default_factory=dict)
    leaks: list[tuple[str, str]] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)

    def remove(self, dataset: str, row: int, reason: str, detail: str) -> None:
        self.fates[dataset][row] = REASONS.index(reason) + 1
        self.details[(dataset, row)] = detail


def load_shared_taxa(uncertain: bool = True) -> list[SharedTaxon]:
    """The DAPlankton / SYKE-plankton_IFCB_2022 shared taxa; ``uncertain=False`` drops the probable one."""
    text = (resources.files("plankton_data") / "resources" / TAXA_RESOURCE).read_text()
    taxa = [
        SharedTaxon(r["daplankton_name"], tuple(r["syke_ifcb_names"].split(";")), r["confidence"])
        for r in csv.DictReader(io.StringIO(text))
    ]
    return [t for t in taxa if uncertain or t.confidence == "exact"]


def build_shard_set(
    name: str,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    shards_root: Path | str = "shards",
    manifests_root: Path | str = "manifests",
    samples_per_shard: int = 2000,
    seed: int = 0,
    drop_class_overlap: bool = True,
    drop_duplicates: bool = False,
    progress: ProgressFn | None = None,
    uncertain_taxa: bool = True,
) -> ShardSetReport:
    """Build ``shards/<name>/`` and ``manifests/<name>.parquet`` from ingested datasets (module docstring).

    Args:
        name: shard-set name (``[a-z0-9_-]``, not a dataset id).
        include: dataset ids to mix; empty means every ingested dataset that is not excluded.
        exclude: dataset ids to leave out; when ingested, their images also feed the leak guard.
        shards_root: folder of the ingested shard folders; the set is written beside them.
        manifests_root: folder of the ingested manifests; the set's manifest is written there.
        samples_per_shard: samples in every tar (every tar holds exactly this many).
        seed: seed of the global shuffle.
        drop_class_overlap: with ``daplankton`` excluded, remove the taxa it shares with SYKE IFCB.
        drop_duplicates: remove cross-dataset duplicates (they are reported either way).
        progress: ``progress(done, total)`` over samples written.
        uncertain_taxa: treat the probable 33rd shared taxon (Peridiniella catenata) as shared.

    Raises:
        PlanktonDataError: bad name, unknown id, dataset not ingested, corrupt source shard, empty selection.
    """
    start = time.perf_counter()
    shards_root, manifests_root = Path(shards_root), Path(manifests_root)
    included, excluded = _resolve(name, include, exclude, manifests_root, samples_per_shard)
    sources = {d: _load(d, shards_root, manifests_root) for d in included}
    refs = {d: _load(d, shards_root, manifests_root) for d in excluded if (manifests_root / f"{d}.parquet").is_file()}
    notes = [f"leak guard: {d} is not ingested, so its pixels were not compared" for d in excluded if d not in refs]
    _check_encoding({**sources, **refs})
    taxa = load_shared_taxa(uncertain_taxa) if drop_class_overlap and "daplankton" in excluded else []
    args = {
        "include": included,
        "exclude": excluded,
        "samples_per_shard": samples_per_shard,
        "seed": seed,
        "drop_class_overlap": drop_class_overlap,
        "uncertain_taxa": uncertain_taxa,
        "drop_duplicates": drop_duplicates,
        "shared_taxa": [t.daplankton for t in taxa],
        "sources": {d: s.digest for d, s in sorted({**sources, **refs}.items())},
    }
    plan = hashlib.sha256(json.dumps([name, args, __version__], sort_keys=True).encode()).hexdigest()[:12]
    with SourceReader(shards_root) as reader, ThreadPoolExecutor(1) as background:
        sel = _select(sources, refs, taxa, drop_duplicates, reader, notes)
        combined, order = _shuffle(sources, sel, seed, samples_per_shard)
        # hashing and decoding release the GIL: each overlaps the Python-bound step beside it
        verified = background.submit(verify_sources, _used_tars(sources, sel), reader)
        layout = plan_layout(combined, order, reader, name, samples_per_shard)
        verified.result()  # a corrupt source stops the build before anything is written
        parts = [(s.table, s.index.mean, s.index.std, sel.fates[d] == 0) for d, s in sources.items()]
        stats = background.submit(pixel_stats, parts, reader)
        staging = shards_root / f".{name}.staging-{plan}"
        staging.mkdir(parents=True, exist_ok=True)
        infos, resumed = write_tars(staging, layout, reader, progress)
        mean, std = stats.result()
    args["plan"] = plan
    args["removed"] = {r: int(sum((f == i + 1).sum() for f in sel.fates.values())) for i, r in enumerate(REASONS)}
    first = next(iter(sources.values())).index
    manifest_path = manifests_root / f"{name}.parquet"
    index = ShardIndex(
        name=name,
        kind="shardset",
        image_format=first.image_format,
        size=first.size,
        total=len(order),
        mean=mean,
        std=std,
        shards=infos,
        manifest=str(manifest_path),
        args=args,
        version=__version__,
    )
    manifest = _output_manifest(combined, order, layout, name, plan)
    removed_path = manifests_root / f"{name}.removed.parquet"
    _commit(staging, shards_root / name, index, manifest, manifest_path, _removed_table(sources, sel), removed_path)
    return ShardSetReport(
        name=name,
        shard_dir=shards_root / name,
        manifest=manifest_path,
        removed_path=removed_path,
        included=included,
        excluded=excluded,
        inputs={d: s.table.num_rows for d, s in sources.items()},
        kept={d: int((f == 0).sum()) for d, f in sel.fates.items()},
        removed={
            r: {d: int((f == i + 1).sum()) for d, f in sel.fates.items() if (f == i + 1).any()}
            for i, r in enumerate(REASONS)
        },
        taxa_removed=_taxa_removed(sources, sel),
        shared_taxa=[t.daplankton for t in taxa],
        leaks=sel.leaks,
        duplicates=sel.duplicates,
        remainder=_keys_with(sources, sel, "remainder"),
        excluded_rows={d: s.table.num_rows for d, s in refs.items()},
        notes=notes,
        shards=len(infos),
        samples_per_shard=samples_per_shard,
        total=len(order),
        bytes=sum(i.bytes for i in infos),
        seconds=time.perf_counter() - start,
        mean=mean,
        std=std,
        plan=plan,
        resumed_shards=resumed,
    )


def _resolve(
    name: str, include: Sequence[str], exclude: Sequence[str], manifests_root: Path, per_shard: int
) -> tuple[list[str], list[str]]:
    """Included and excluded ids in registry order, after checking the arguments."""
    if not _NAME.fullmatch(name) or name in DATASET_IDS:
        raise PlanktonDataError(f"shard-set name {name!r} must match [a-z0-9][a-z0-9_-]* and not be a dataset id")
    if per_shard < 1:
        raise PlanktonDataError(f"samples per shard must be at least 1, not {per_shard}")
    for d in (*include, *exclude):
        get_adapter(d)  # raises UnknownDataset, listing the valid ids
    both = sorted(set(include) & set(exclude))
    if both:
        raise PlanktonDataError(f"{', '.join(both)} cannot be both included and excluded")
    excluded = [d for d in DATASET_IDS if d in exclude]
    if include:
        return [d for d in DATASET_IDS if d in include], excluded
    included = [d for d in DATASET_IDS if d not in exclude and (manifests_root / f"{d}.parquet").is_file()]
    if not included:
        raise PlanktonDataError(f"empty selection: no ingested dataset in {manifests_root}/ other than the excluded")
    return included, excluded


def _load(dataset: str, shards_root: Path, manifests_root: Path) -> _Source:
    path, folder = manifests_root / f"{dataset}.parquet", shards_root / dataset
    if not path.is_file() or not (folder / INDEX_NAME).is_file():
        raise PlanktonDataError(
            f"{dataset} is not ingested (no {path} or {folder / INDEX_NAME}): run plankton-data ingest {dataset}"
        )
    index, table = read_index(folder), read_manifest(path).cast(MANIFEST_SCHEMA)
    tars = {f"{dataset}/{s.name}" for s in index.shards}
    if table.num_rows != index.total or not set(pc.unique(table.column("shard")).to_pylist()) <= tars:
        raise PlanktonDataError(f"{path} and {folder / INDEX_NAME} disagree: re-ingest {dataset}")
    digest = hashlib.sha256((folder / INDEX_NAME).read_bytes() + path.read_bytes()).hexdigest()
    return _Source(dataset, table, index, digest)


def _check_encoding(sources: dict[str, _Source]) -> None:
    first = next(iter(sources.values()))
    for s in sources.values():
        if s.encoding() != first.encoding():
            raise PlanktonDataError(
                f"{s.dataset} was ingested as (format, size, quality) {s.encoding()} but {first.dataset} as"
                f" {first.encoding()}: a shard set holds one encoding, and the leak guard compares pixels"
            )


def _select(
    sources: dict[str, _Source],
    refs: dict[str, _Source],
    taxa: list[SharedTaxon],
    drop_duplicates: bool,
    reader: SourceReader,
    notes: list[str],
) -> _Selection:
    """Steps 2-4 of the module docstring."""
    sel = _Selection({d: np.zeros(s.table.num_rows, np.int8) for d, s in sources.items()})
    shared = {normalize_label(n): t for t in taxa for n in (t.daplankton, *t.syke_ifcb)}
    reference = {d: np.ones(s.table.num_rows, bool) for d, s in refs.items()}
    for d, s in sources.items():
        labels = s.table.column("label").to_pylist()
        hit = np.fromiter((lab in shared for lab in labels), bool, len(labels))
        for i in np.flatnonzero(hit):
            t = shared[labels[i]]
            sel.remove(d, int(i), "shared_taxon", f"taxon shared with DAPlankton {t.daplankton} ({t.confidence})")
        reference[d] = hit
    tables = {d: s.table for d, s in {**sources, **refs}.items()}
    found = find_matches(tables, {d: f == 0 for d, f in sel.fates.items()}, reference, reader)
    for (d, i), ref_key, exact in found.leaks:
        how = "pixels identical to" if exact else "too thin to compare exactly; same size and background as"
        sel.remove(d, i, "leak" if exact else "possible_leak", f"{how} excluded image {ref_key}")
        sel.leaks.append((tables[d].column("key")[i].as_py(), ref_key))
    for (d, i), kept_key in found.duplicates:
        sel.duplicates.append((tables[d].column("key")[i].as_py(), kept_key))
        if drop_duplicates:
            sel.remove(d, i, "duplicate", f"pixels identical to {kept_key}, which is kept")
    if found.unchecked:
        notes.append(f"{found.unchecked} look-alike images across datasets were too thin to compare exactly (kept)")
    return sel


def _shuffle(sources: dict[str, _Source], sel: _Selection, seed: int, per_shard: int) -> tuple[pa.Table, np.ndarray]:
    """All input rows, and the kept ones (global row numbers) permuted by ``seed`` and cut to whole shards."""
    combined = pa.concat_tables([s.table for s in sources.values()])
    bases = dict(zip(sources, np.cumsum([0] + [s.table.num_rows for s in sources.values()]), strict=False))
    kept = np.concatenate([np.flatnonzero(f == 0) + bases[d] for d, f in sel.fates.items()])
    if len(kept) == 0:
        raise PlanktonDataError(f"empty selection: all {combined.num_rows} input samples were removed")
    n_shards = len(kept) // per_shard
    if n_shards == 0:
        raise PlanktonDataError(f"only {len(kept)} samples selected: fewer than one shard of {per_shard}")
    order = kept[np.random.default_rng(seed).permutation(len(kept))]
    starts = np.array(list(bases.values()))
    for g in order[n_shards * per_shard :]:
        d = list(bases)[int(np.searchsorted(starts, g, side="right")) - 1]
        sel.remove(d, int(g - bases[d]), "remainder", f"after the last full shard of {per_shard}")
    return combined, order[: n_shards * per_shard]


def _used_tars(sources: dict[str, _Source], sel: _Selection) -> list[tuple[str, ShardInfo]]:
    """Source tars that hold at least one kept row, with their index.json entries."""
    todo = []
    for d, s in sources.items():
        used = set(pc.unique(s.table.column("shard").filter(pa.array(sel.fates[d] == 0))).to_pylist())
        todo += [(f"{d}/{i.name}", i) for i in s.index.shards if f"{d}/{i.name}" in used]
    return todo


def _output_manifest(combined: pa.Table, order: np.ndarray, layout: Layout, name: str, plan: str) -> pa.Table:
    """The source rows in set order, with the new ``shard``/``offset`` and the origin columns."""
    rows = combined.take(pa.array(order))
    shard = pa.array(np.repeat([f"{name}/{t}" for t in layout.tars], layout.start.shape[1]), pa.string())
    out = rows.set_column(rows.schema.get_field_index("shard"), "shard", shard)
    out = out.set_column(out.schema.get_field_index("offset"), "offset", pa.array(layout.offsets, pa.int64()))
    out = out.append_column("origin_shard", rows.column("shard")).append_column("origin_offset", rows.column("offset"))
    out = out.cast(SHARDSET_SCHEMA)
    validate(out)
    return out.replace_schema_metadata({**SHARDSET_SCHEMA.metadata, b"plankton_plan": plan.encode()})


def _removed_table(sources: dict[str, _Source], sel: _Selection) -> pa.Table:
    rows = []
    for d, s in sources.items():
        idx = np.flatnonzero(sel.fates[d])
        picked = s.table.take(pa.array(idx, pa.int64())).select(["key", "label_raw"]).to_pydict()
        for i, key, label in zip(idx, picked["key"], picked["label_raw"], strict=True):
            reason = REASONS[sel.fates[d][i] - 1]
            rows.append(
                {"key": key, "dataset": d, "label_raw": label, "reason": reason, "detail": sel.details[(d, int(i))]}
            )
    return to_table(rows, REMOVED_SCHEMA)


def _commit(
    staging: Path,
    final: Path,
    index: ShardIndex,
    manifest: pa.Table,
    manifest_path: Path,
    removed: pa.Table,
    removed_path: Path,
) -> None:
    """index.json into staging (the folder's commit marker), swap the folder in, then the two Parquet files."""
    write_index(index, staging)
    for done in staging.glob("*.done"):
        done.unlink()
    if final.exists():
        old = final.with_name(f".{final.name}.old-{index.args['plan']}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old)
    else:
        os.replace(staging, final)
    write_table(removed, removed_path)
    write_table(manifest, manifest_path)


def _taxa_removed(sources: dict[str, _Source], sel: _Selection) -> dict[str, dict[str, int]]:
    code = REASONS.index("shared_taxon") + 1
    out = {}
    for d, s in sources.items():
        labels = s.table.column("label_raw").filter(pa.array(sel.fates[d] == code)).to_pylist()
        if labels:
            out[d] = dict(sorted(Counter(labels).items()))
    return out


def _keys_with(sources: dict[str, _Source], sel: _Selection, reason: str) -> list[str]:
    code = REASONS.index(reason) + 1
    return [
        k for d, s in sources.items() for k in s.table.column("key").filter(pa.array(sel.fates[d] == code)).to_pylist()
    ]
