"""The last stage of an ingest: the staged tars, manifest, rejects and index committed as one unit.

The manifest and the rejects list are written as ``.partial`` beside their final names *before* the staging
folder replaces the dataset's shard folder (with ``index.json``, which records the manifest's sha256, inside
it); they are renamed right after. A failure before the swap leaves the previous dataset whole; a kill after
it is finished by the rerun (:func:`finish_commit`), which finds the new index and the pending manifest.
"""

from __future__ import annotations

import errno
import json
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from plankton_data import __version__
from plankton_data.errors import PlanktonDataError
from plankton_data.format.atomic import commit, partial_path
from plankton_data.format.index import (
    ShardIndex,
    ShardInfo,
    file_sha256,
    manifest_ref,
    read_index,
    swap_in,
    write_index,
)
from plankton_data.format.manifest import (
    MANIFEST_SCHEMA,
    REJECTS_SCHEMA,
    dataset_pixel_stats,
    pixel_stats,
    to_table,
    write_table,
)
from plankton_data.ingest.adapters.base import Reject, Scan
from plankton_data.ingest.preprocess import PreprocessConfig

log = logging.getLogger(__name__)


@dataclass
class IngestReport:
    """What one ingest run produced; the CLI renders it."""

    dataset: str
    samples: int
    rejects: int
    skipped: int
    shards: int
    bytes: int
    seconds: float
    manifest: Path
    rejects_path: Path
    shard_dir: Path
    mean: float
    std: float
    resumed_shards: int = 0
    classes: dict[str, int] = field(default_factory=dict)  # label_raw -> samples
    rejected_classes: dict[str, int] = field(default_factory=dict)  # label_raw -> rejects
    reasons: dict[str, int] = field(default_factory=dict)  # reject/skip reason -> count


def commit_dataset(
    dataset: str,
    *,
    staging: Path,
    names: list[str],
    scan: Scan,
    config: PreprocessConfig,
    shards_root: Path,
    manifests_root: Path,
    plan: str,
    resumed: int,
    seconds: float,
    per_shard: int,
    source: dict | None = None,
) -> IngestReport:
    """Commit the staged tars ``names`` of ``dataset`` with their manifest, rejects and index (module docstring).

    ``resumed``: tars a previous run of the same plan had finished; ``seconds``: the run's time so far;
    ``source``: a user source's kind and options, recorded in ``index.json`` (``None`` for a built-in dataset).
    """
    tables, infos, rejects = [], [], list(scan.rejects)
    for name in names:
        table = pq.read_table(staging / f"{name}.rows.parquet")
        meta = table.schema.metadata
        infos.append(ShardInfo(**json.loads(meta[b"shard"])))
        rejects += [Reject(**r) for r in json.loads(meta[b"rejects"])]
        tables.append(table.replace_schema_metadata(None))
    manifest = pa.concat_tables(tables).cast(MANIFEST_SCHEMA) if tables else MANIFEST_SCHEMA.empty_table()
    mean, std = pixel_stats(manifest)
    manifest_path, rejects_path = _outputs(dataset, manifests_root)
    final = shards_root / dataset
    staged = [rejects_path, manifest_path]  # renamed in this order once the folder is in: the manifest last
    try:
        # Both Parquet files first, under their temp names: a --manifests that is a file, read-only or full fails
        # here, while the previous dataset (its tars and its manifest) is still untouched.
        for path in staged:
            if path.is_dir():
                raise IsADirectoryError(errno.EISDIR, "a folder is in the way of the manifest", str(path))
        reject_rows = [dict(asdict(r), dataset=dataset) for r in rejects]
        write_table(to_table(reject_rows, REJECTS_SCHEMA), rejects_path, rename=False)
        write_table(manifest, manifest_path, rename=False)
        write_index(
            ShardIndex(
                name=dataset,
                kind="dataset",
                image_format=config.image_format,
                size=config.size,
                total=manifest.num_rows,
                mean=mean,
                std=std,
                dataset_stats=dataset_pixel_stats(manifest),
                shards=infos,
                manifest=manifest_ref(final, manifest_path),
                manifest_sha256=file_sha256(partial_path(manifest_path)),
                args={"config": asdict(config), "records_per_shard": per_shard, "plan": plan}
                | ({"source": source} if source is not None else {}),
                version=__version__,
            ),
            staging,
        )
        for name in names:
            (staging / f"{name}.rows.parquet").unlink()
        swap_in(staging, final, plan)  # the new folder, its index.json included, replaces the old in one rename
    except BaseException:
        for path in staged:
            partial_path(path).unlink(missing_ok=True)
        raise
    for path in staged:
        commit(partial_path(path), path, fsync=False)  # fsynced when written
    return _report(dataset, manifest, rejects, infos, final, manifests_root, resumed, seconds)


def _outputs(dataset: str, manifests_root: Path) -> tuple[Path, Path]:
    """The manifest and the rejects list of ``dataset``."""
    return manifests_root / f"{dataset}.parquet", manifests_root / f"{dataset}.rejects.parquet"


def finish_commit(dataset: str, final: Path, manifests_root: Path, plan: str, start: float) -> IngestReport | None:
    """Complete a commit of this very plan that was stopped between the folder swap and the manifest rename.

    The folder ``final`` is then this plan's, and its manifest waits under its temp name with the sha256 that
    index.json records: renaming the two Parquet files is all that is left. ``None`` when there is no such
    commit to finish (the usual case), and the ingest runs as normal.
    """
    manifest_path, rejects_path = _outputs(dataset, manifests_root)
    pending = partial_path(manifest_path)
    try:
        index = read_index(final)
    except PlanktonDataError:
        return None
    if index.args.get("plan") != plan or not index.manifest_sha256 or not pending.is_file():
        return None
    rejects_file = next((f for f in (partial_path(rejects_path), rejects_path) if f.is_file()), None)
    if rejects_file is None or file_sha256(pending) != index.manifest_sha256:
        return None
    manifest, rejects_table = pq.read_table(pending), pq.read_table(rejects_file)
    for path in (rejects_path, manifest_path):
        if partial_path(path).is_file():
            commit(partial_path(path), path, fsync=False)
    rejects = [Reject(r["source"], r["reason"], r["label_raw"], r["kind"]) for r in rejects_table.to_pylist()]
    log.info("finished the interrupted commit of %s (plan %s)", final, plan)
    return _report(
        dataset, manifest, rejects, index.shards, final, manifests_root, len(index.shards), time.perf_counter() - start
    )


def _report(
    dataset: str,
    manifest: pa.Table,
    rejects: list[Reject],
    infos: list[ShardInfo],
    final: Path,
    manifests_root: Path,
    resumed: int,
    seconds: float,
) -> IngestReport:
    manifest_path, rejects_path = _outputs(dataset, manifests_root)
    mean, std = pixel_stats(manifest)
    labels = manifest.column("label_raw").to_pylist()
    return IngestReport(
        dataset=dataset,
        samples=manifest.num_rows,
        rejects=sum(r.kind == "reject" for r in rejects),
        skipped=sum(r.kind == "skipped" for r in rejects),
        shards=len(infos),
        bytes=sum(i.bytes for i in infos),
        seconds=seconds,
        manifest=manifest_path,
        rejects_path=rejects_path,
        shard_dir=final,
        mean=mean,
        std=std,
        resumed_shards=resumed,
        classes=dict(sorted(Counter(labels).items())),
        rejected_classes=dict(sorted(Counter(r.label_raw for r in rejects if r.kind == "reject").items())),
        reasons=dict(Counter(r.reason for r in rejects).most_common()),
    )
