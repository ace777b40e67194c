"""``shard``: ingested per-dataset shards -> one globally shuffled pretraining shard set ``shards/<name>/``.

Selection, in this order (every input row gets exactly one fate, so ``inputs = kept + removed``):

1. rows of the included datasets (default: every ingested built-in dataset that is not excluded, plus ``add``);
1b. ``split_rule``: rows whose native ``split`` the dataset registry leaves out of pretraining
   (:attr:`~plankton_data.ingest.adapters.base.AdapterInfo.pretrain_splits`: Kaggle NDSB keeps only its unlabelled
   test images, as the paper does); ``all_splits`` keeps them;
2. ``shared_taxon``: when ``daplankton`` is excluded, rows of any dataset whose normalised label is one of the
   taxa DAPlankton shares with SYKE-plankton_IFCB_2022 (``resources/daplankton_shared_taxa.csv``);
3. ``leak``: rows whose ``pixel_sha256`` equals that of an excluded image (a row of an excluded dataset, or
   one removed in step 2);
4. ``duplicate``: rows whose ``pixel_sha256`` equals that of a row of another included dataset; always
   reported, removed only with ``drop_duplicates``. The copy kept is the first in registry order, then
   manifest order; copies in its own dataset are not cross-dataset duplicates and stay;
5. a global seeded shuffle, then ``n // samples_per_shard`` tars of exactly ``samples_per_shard`` samples;
   the ``n % samples_per_shard`` rows after the last full shard are ``remainder``.

``pixel_sha256`` is taken by ingest on the gray pixels (and shape) before padding and resizing, so one
published image has the same value in every dataset that publishes it, although the seeded padding noise makes
the stored bytes differ. Nothing is decoded here: the set's pixel mean/std come from the manifest's exact
per-image sums (:func:`plankton_data.format.manifest.pixel_stats`). Every removed row is listed with its reason in
``manifests/<name>.removed.parquet``.

Selection: :mod:`plankton_data.shardset.select`. Copying: :mod:`plankton_data.shardset.copy` (byte-for-byte runs
of tar blocks, several tars at once), while a side thread builds and writes the manifest and removed list under
temporary names.

Atomic and resumable, as ingest: tars are written as ``*.partial`` in ``shards/.<name>.staging-<plan>/`` and
renamed when complete; a rerun of the same plan reuses them. ``index.json`` is written last into the staging
folder, which then replaces ``shards/<name>/``; the removed list and the manifest are renamed into place after
it. Renames, not fsyncs, protect against a killed process; docs/shardsets.md says why nothing but index.json is
fsynced. Same inputs and arguments give byte-identical outputs.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from plankton_data import __version__
from plankton_data.errors import PlanktonDataError, SchemaError, UnknownDataset
from plankton_data.format import atomic
from plankton_data.format.atomic import partial_path
from plankton_data.format.index import (
    INDEX_NAME,
    ShardIndex,
    file_sha256,
    manifest_mismatch,
    manifest_ref,
    read_index,
    swap_in,
    write_index,
)
from plankton_data.format.lock import output_lock
from plankton_data.format.manifest import (
    MANIFEST_SCHEMA,
    SHARDSET_SCHEMA,
    dataset_pixel_stats,
    pixel_stats,
    read_manifest,
    validate,
)
from plankton_data.ingest.adapters import DATASET_IDS, ingested_datasets
from plankton_data.shardset.copy import Layout, SourceTars, check_sources, plan_layout, prefetch_files, write_tars
from plankton_data.shardset.select import (
    REASONS,
    Selection,
    Source,
    keys_of,
    load_shared_taxa,
    removed_table,
    select,
    split_rule_text,
    taxa_removed,
)

#: ``progress(done_samples, total_samples)``, called from the calling thread.
ProgressFn = Callable[[int, int], None]
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
#: Manifest columns with few distinct values (Parquet dictionary encoding pays off only for these).
_DICTIONARY_COLUMNS = [
    "dataset",
    "label_raw",
    "label",
    "split",
    "subset",
    "instrument",
    "image_format",
    "shard",
    "origin_shard",
]


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
    split_rules: dict[str, str]  # dataset -> why its split rule removed rows (only datasets where it did)
    shared_taxa: list[str]  # DAPlankton classes whose taxa were removed (empty if the rule did not apply)
    leaks: list[tuple[str, str]]  # (removed key, excluded key with the same pixel_sha256)
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


def build_shard_set(
    name: str,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    add: Sequence[str] = (),
    shards_root: Path | str = "shards",
    manifests_root: Path | str = "manifests",
    samples_per_shard: int = 2000,
    seed: int = 0,
    drop_class_overlap: bool = True,
    drop_duplicates: bool = False,
    progress: ProgressFn | None = None,
    uncertain_taxa: bool = True,
    all_splits: bool = False,
) -> ShardSetReport:
    """Build ``shards/<name>/`` and ``manifests/<name>.parquet`` from ingested datasets (module docstring).

    Args:
        name: shard-set name (``[a-z0-9_-]``, not a dataset id).
        include: dataset ids to mix; empty means every ingested built-in dataset that is not excluded (so
            ``exclude=["daplankton"]`` is the paper's set, whatever else was ingested beside it).
        exclude: dataset ids to leave out; when ingested, their images also feed the leak guard.
        add: datasets mixed in on top of that selection: your own (``ingest folder|csv|ecotaxa|ifcb``), the
            paper's "target data in pretraining" setting.
        shards_root: folder of the ingested shard folders; the set is written beside them.
        manifests_root: folder of the ingested manifests; the set's manifest is written there.
        samples_per_shard: samples in every tar (every tar holds exactly this many).
        seed: seed of the global shuffle.
        drop_class_overlap: with ``daplankton`` excluded, remove the taxa it shares with SYKE IFCB.
        drop_duplicates: remove cross-dataset duplicates (they are reported either way).
        progress: ``progress(done, total)`` over samples written.
        uncertain_taxa: treat the probable 33rd shared taxon (Peridiniella catenata) as shared.
        all_splits: keep the rows the registry's per-dataset split rule leaves out (Kaggle's labelled images).

    Raises:
        PlanktonDataError: bad name, unknown id, dataset not ingested, corrupt source shard, empty selection.
    """
    start = time.perf_counter()
    shards_root, manifests_root = Path(shards_root), Path(manifests_root)
    included, excluded = _resolve(name, include, exclude, add, shards_root, manifests_root, samples_per_shard)
    if seed < 0:
        raise PlanktonDataError(f"seed must be 0 or more (numpy seeds are non-negative), not {seed}")
    with output_lock(shards_root / name):  # one writer per set name: refused at once, never waits
        sources = {d: _load(d, shards_root, manifests_root) for d in included}
        refs = {
            d: _load(d, shards_root, manifests_root) for d in excluded if (manifests_root / f"{d}.parquet").is_file()
        }
        # the disk reads the source tars while the rows are selected and laid out (after the manifests: not behind)
        prefetch_files([shards_root / d / i.name for d, s in sources.items() for i in s.index.shards])
        notes = [f"leak guard: {d} is not ingested, so its images were not compared" for d in excluded if d not in refs]
        _check_encoding(sources)
        taxa = load_shared_taxa(uncertain_taxa) if drop_class_overlap and "daplankton" in excluded else []
        args = {
            "include": included,
            "exclude": excluded,
            "samples_per_shard": samples_per_shard,
            "seed": seed,
            "drop_class_overlap": drop_class_overlap,
            "uncertain_taxa": uncertain_taxa,
            "drop_duplicates": drop_duplicates,
            "all_splits": all_splits,
            "shared_taxa": [t.daplankton for t in taxa],
            "sources": {d: s.digest for d, s in sorted({**sources, **refs}.items())},
        }
        plan = hashlib.sha256(json.dumps([name, args, __version__], sort_keys=True).encode()).hexdigest()[:12]
        sel = select(sources, refs, taxa, drop_duplicates, all_splits)
        combined, order = _shuffle(sources, sel, seed, samples_per_shard)
        args["plan"] = plan
        args["removed"] = {r: sum(sel.counts(r).values()) for r in REASONS}
        first = next(iter(sources.values())).index
        manifest_path, removed_path = manifests_root / f"{name}.parquet", manifests_root / f"{name}.removed.parquet"
        staging = shards_root / f".{name}.staging-{plan}"
        sizes = {f"{d}/{i.name}": i.bytes for d, s in sources.items() for i in s.index.shards}
        with SourceTars(shards_root, sizes) as tars, ThreadPoolExecutor(1) as side:
            layout = plan_layout(combined, order, tars, name, samples_per_shard, first.image_format)
            staged = side.submit(
                _stage_tables, combined, order, layout, plan, sources, sel, manifest_path, removed_path
            )
            try:
                check_sources(layout, tars)  # before anything is written
                staging.mkdir(parents=True, exist_ok=True)
                infos, resumed = write_tars(staging, layout, tars, progress)
                mean, std, dataset_stats, manifest_sha256 = staged.result()
            except BaseException:
                staged.exception()  # wait for the side thread, then drop what it wrote
                for path in (manifest_path, removed_path):
                    partial_path(path).unlink(missing_ok=True)
                raise
        index = ShardIndex(
            name=name,
            kind="shardset",
            image_format=first.image_format,
            size=first.size,
            total=len(order),
            mean=mean,
            std=std,
            dataset_stats=dataset_stats,
            shards=infos,
            manifest=manifest_ref(shards_root / name, manifest_path),
            manifest_sha256=manifest_sha256,
            args=args,
            version=__version__,
        )
        _commit(staging, shards_root / name, index, [removed_path, manifest_path])
        return ShardSetReport(
            name=name,
            shard_dir=shards_root / name,
            manifest=manifest_path,
            removed_path=removed_path,
            included=included,
            excluded=excluded,
            inputs={d: s.table.num_rows for d, s in sources.items()},
            kept={d: len(sel.rows(d)) for d in sources},
            removed={r: sel.counts(r) for r in REASONS},
            taxa_removed=taxa_removed(sources, sel),
            split_rules={d: split_rule_text(d) for d in sel.counts("split_rule")},
            shared_taxa=[t.daplankton for t in taxa],
            leaks=sel.leaks,
            duplicates=sel.duplicates,
            remainder=[k for d, s in sources.items() for k in keys_of(s.table, sel.rows(d, "remainder"))],
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
    name: str,
    include: Sequence[str],
    exclude: Sequence[str],
    add: Sequence[str],
    shards_root: Path,
    manifests_root: Path,
    per_shard: int,
) -> tuple[list[str], list[str]]:
    """Included and excluded ids in registry order (user datasets after the built-in ones), after checking the
    arguments."""
    known = ingested_datasets(shards_root)
    if not _NAME.fullmatch(name) or name in known:
        raise PlanktonDataError(f"shard-set name {name!r} must match [a-z0-9][a-z0-9_-]* and not be a dataset id")
    if per_shard < 1:
        raise PlanktonDataError(f"samples per shard must be at least 1, not {per_shard}")
    if unknown := [d for d in (*include, *exclude, *add) if d not in known]:
        raise UnknownDataset(
            f"unknown dataset {unknown[0]!r}; choose one of: {', '.join(known)} (your own data: ingest it first)"
        )
    both = sorted((set(include) | set(add)) & set(exclude))
    if both:
        raise PlanktonDataError(f"{', '.join(both)} cannot be both included and excluded")
    excluded = [d for d in known if d in exclude]
    if include:
        return [d for d in known if d in include or d in add], excluded
    builtin = [d for d in DATASET_IDS if d not in exclude and (manifests_root / f"{d}.parquet").is_file()]
    included = [d for d in known if d in builtin or d in add]
    if not included:
        raise PlanktonDataError(f"empty selection: no ingested dataset in {manifests_root}/ other than the excluded")
    return included, excluded


def _load(dataset: str, shards_root: Path, manifests_root: Path) -> Source:
    path, folder = manifests_root / f"{dataset}.parquet", shards_root / dataset
    if not path.is_file() or not (folder / INDEX_NAME).is_file():
        raise PlanktonDataError(
            f"{dataset} is not ingested (no {path} or {folder / INDEX_NAME}): run plankton-data ingest {dataset}"
        )
    try:
        index, table = read_index(folder), read_manifest(path).cast(MANIFEST_SCHEMA)
    except (SchemaError, ValueError) as exc:  # e.g. a manifest from a version without pixel_sha256
        raise PlanktonDataError(f"{path} does not match this version ({exc}): re-ingest {dataset}") from exc
    tars = {f"{dataset}/{s.name}" for s in index.shards}
    if table.num_rows != index.total or not set(pc.unique(table.column("shard")).to_pylist()) <= tars:
        raise PlanktonDataError(f"{path} and {folder / INDEX_NAME} disagree: re-ingest {dataset}")
    if mismatch := manifest_mismatch(index, path):
        raise PlanktonDataError(f"{mismatch} (re-ingest {dataset})")
    # The index without its manifest_sha256 (the manifest's bytes are hashed here anyway): the plan of a set
    # stays what it was for folders ingested before the field existed.
    digest = hashlib.sha256(index.to_json(manifest_hash=False).encode() + path.read_bytes()).hexdigest()
    return Source(dataset, table, index, digest)


def _check_encoding(sources: dict[str, Source]) -> None:
    first = next(iter(sources.values()))
    for s in sources.values():
        if s.encoding() != first.encoding():
            raise PlanktonDataError(
                f"{s.dataset} was ingested as (format, size, quality) {s.encoding()} but {first.dataset} as"
                f" {first.encoding()}: a shard set holds one encoding"
            )


def _shuffle(sources: dict[str, Source], sel: Selection, seed: int, per_shard: int) -> tuple[pa.Table, np.ndarray]:
    """All input rows, and the kept ones (global row numbers) permuted by ``seed`` and cut to whole shards."""
    combined = pa.concat_tables([s.table for s in sources.values()])
    bases = np.cumsum([0] + [s.table.num_rows for s in sources.values()])
    kept = np.concatenate([sel.rows(d) + bases[k] for k, d in enumerate(sources)])
    if len(kept) == 0:
        raise PlanktonDataError(f"empty selection: all {combined.num_rows} input samples were removed")
    n_shards = len(kept) // per_shard
    if n_shards == 0:
        raise PlanktonDataError(f"only {len(kept)} samples selected: fewer than one shard of {per_shard}")
    order = kept[np.random.default_rng(seed).permutation(len(kept))]
    rest = order[n_shards * per_shard :]
    owner = np.searchsorted(bases, rest, side="right") - 1
    for k, d in enumerate(sources):
        sel.remove(d, rest[owner == k] - bases[k], "remainder", f"after the last full shard of {per_shard}")
    return combined, order[: n_shards * per_shard]


def _stage_tables(
    combined: pa.Table,
    order: np.ndarray,
    layout: Layout,
    plan: str,
    sources: dict[str, Source],
    sel: Selection,
    manifest_path: Path,
    removed_path: Path,
) -> tuple[float, float, dict[str, list[float]], str]:
    """Write the manifest and the removed list under their temporary names; return the set's pixel mean/std,
    the same per source dataset, and the manifest file's sha256 (for index.json)."""
    manifest = _output_manifest(combined, order, layout, plan)
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(removed_table(sources, sel), partial_path(removed_path), compression="zstd")
    # LZ4 and dictionaries only where values repeat: 40 ms instead of 76 ms for 40k rows, 1.9x the size of zstd
    pq.write_table(manifest, partial_path(manifest_path), compression="lz4", use_dictionary=_DICTIONARY_COLUMNS)
    return (*pixel_stats(manifest), dataset_pixel_stats(manifest), file_sha256(partial_path(manifest_path)))


def _output_manifest(combined: pa.Table, order: np.ndarray, layout: Layout, plan: str) -> pa.Table:
    """The source rows in set order, with the new ``shard``/``offset`` and the origin columns."""
    rows = combined.take(pa.array(order))
    name = layout.tars[0].rpartition("-")[0]
    shard = pa.array(np.repeat([f"{name}/{t}" for t in layout.tars], layout.start.shape[1]), pa.string())
    out = rows.set_column(rows.schema.get_field_index("shard"), "shard", shard)
    out = out.set_column(out.schema.get_field_index("offset"), "offset", pa.array(layout.offsets, pa.int64()))
    out = out.append_column("origin_shard", rows.column("shard")).append_column("origin_offset", rows.column("offset"))
    out = out.cast(SHARDSET_SCHEMA)
    validate(out)
    return out.replace_schema_metadata({**SHARDSET_SCHEMA.metadata, b"plankton_plan": plan.encode()})


def _commit(staging: Path, final: Path, index: ShardIndex, staged: list[Path]) -> None:
    """index.json into staging (the folder's commit marker), swap the folder in, then rename the staged Parquet
    files in order. Nothing is fsynced but index.json (by :func:`write_index`): see docs/shardsets.md."""
    write_index(index, staging)
    for done in staging.glob("*.done"):
        done.unlink()
    swap_in(staging, final, index.args["plan"])
    for path in staged:
        atomic.commit(partial_path(path), path, fsync=False)
