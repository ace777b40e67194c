"""``ingest``: one published dataset -> ``shards/<dataset>/*.tar`` + ``manifests/<dataset>.parquet``.

The parent process scans the layout, reads member bytes straight from the archives, and writes the tars;
worker processes do the CPU work (:func:`plankton_data.ingest.preprocess.process_task`). Records are processed in
sorted source order and results are consumed in that order, so the output is byte-identical for any
number of workers.

Atomicity and resume: shards are built in ``shards/.<dataset>.staging-<plan>/``. Each finished shard is a
tar plus a ``.rows.parquet`` sidecar (its manifest rows, rejects and pixel sums), both renamed into place
only when complete. A rerun of the same plan skips finished shards. At the end the dataset is committed as one unit: the
rejects list and the manifest are written under temp names (``.<name>.partial``, so an unwritable or full
``--manifests`` fails while the previous dataset is untouched), the staging folder gets its ``index.json`` and
replaces ``shards/<dataset>/`` in one rename, and the two Parquet files are renamed into place right after.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import threading
import time
import zipfile
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

from plankton_data.errors import MemberTooLarge, MissingRawData, PlanktonDataError
from plankton_data.format.index import read_index
from plankton_data.format.lock import output_lock
from plankton_data.format.manifest import (
    to_table,
    write_table,
)
from plankton_data.format.tar import TarShardWriter
from plankton_data.ingest.adapters import get_adapter
from plankton_data.ingest.adapters.base import DatasetAdapter, Reject, Scan
from plankton_data.ingest.commit import IngestReport, commit_dataset, finish_commit
from plankton_data.ingest.limits import Limits
from plankton_data.ingest.parts import Part, PartRun
from plankton_data.ingest.preprocess import (
    PREPROCESS_VERSION,
    Failure,
    PreprocessConfig,
    Sample,
    Task,
    one_line,
    process_batch,
    process_task,
    worker_init,
)
from plankton_data.ingest.sources import RawTree

log = logging.getLogger(__name__)

#: ``progress(done_records, total_records)``, called from the parent process.
ProgressFn = Callable[[int, int], None]
_BATCH = 32  # records per worker round trip
_BATCH_BYTES = 16 << 20  # ... or fewer, once they hold this much input
_IN_FLIGHT_BYTES = 256 << 20  # input bytes sent to workers and not yet consumed, at most (plus one batch)
_EARLY_POOL_BYTES = 32 << 20


def ingest(
    dataset: str | DatasetAdapter,
    raw: Path | str,
    *,
    shards_root: Path | str = "shards",
    manifests_root: Path | str = "manifests",
    config: PreprocessConfig | None = None,
    workers: int = 1,
    records_per_shard: int = 2000,
    progress: ProgressFn | None = None,
    limits: Limits | None = None,
    part: Part | None = None,
) -> IngestReport:
    """Ingest ``dataset`` from ``raw`` (archive(s) or folder as published). See the module docstring.

    ``dataset`` is a built-in dataset id, or an adapter: a user source from
    :func:`plankton_data.ingest.adapters.make_source`, whose ``info.id`` (the user's NAME) names the output.
    ``limits`` bound what one input may cost (:mod:`plankton_data.ingest.limits`); they never change the bytes
    of an accepted sample, so they are not part of the plan. ``part``: ingest only that slice of the inputs, into
    its own roots, for :func:`plankton_data.ingest.parts.merge` (ingest across machines).
    """
    config = config or PreprocessConfig()
    limits = limits or Limits()
    if config.image_format not in ("jpg", "png"):
        raise ValueError(f"image format must be jpg or png, not {config.image_format!r}")
    adapter = get_adapter(dataset) if isinstance(dataset, str) else dataset
    dataset = adapter.info.id
    shards_root, manifests_root = Path(shards_root), Path(manifests_root)
    if part is not None:
        shards_root, manifests_root = part.roots(dataset, shards_root, manifests_root)
    _refuse_foreign_folder(shards_root / dataset)
    with output_lock(shards_root / dataset):  # one writer per dataset folder: refused at once, never waits
        return _ingest(
            dataset,
            adapter,
            raw,
            shards_root,
            manifests_root,
            config,
            workers,
            records_per_shard,
            progress,
            limits,
            part,
        )


def _ingest(
    dataset: str,
    adapter: DatasetAdapter,
    raw: Path | str,
    shards_root: Path,
    manifests_root: Path,
    config: PreprocessConfig,
    workers: int,
    records_per_shard: int,
    progress: ProgressFn | None,
    limits: Limits,
    part: Part | None = None,
) -> IngestReport:
    start = time.perf_counter()
    # Big inputs: start the worker processes now, so their start-up overlaps the layout scan.
    early = workers > 1 and _input_bytes(Path(raw)) > _EARLY_POOL_BYTES
    with _pool(workers if early else 1) as pool, _open_tree(adapter, Path(raw), limits) as tree:
        scan = adapter.scan(tree)
        scan.rejects += [Reject(path, reason, kind="skipped") for path, reason in tree.skipped]
        scan.reject_bad_labels()
        if not scan.records:
            raise MissingRawData(_nothing_to_ingest(adapter, raw, scan))
        scan.records.sort(key=lambda r: r.source)
        plan = _plan_id(dataset, scan, config, records_per_shard, getattr(adapter, "options", None))
        split = part and PartRun(part, scan, dataset=dataset, plan=plan, config=config, per_shard=records_per_shard)
        plan = split.plan_id() if split else plan  # scan holds the part's records only from here on
        if finished := finish_commit(dataset, shards_root / dataset, manifests_root, plan, start):
            return finished
        staging = shards_root / f".{dataset}.staging-{plan}"
        staging.mkdir(parents=True, exist_ok=True)
        chunks = [scan.records[i : i + records_per_shard] for i in range(0, len(scan.records), records_per_shard)]
        names = [f"{dataset}-{i:06d}.tar" for i in range(len(chunks))]
        todo = [i for i, name in enumerate(names) if not (staging / f"{name}.rows.parquet").is_file()]
        done = len(scan.records) - sum(len(chunks[i]) for i in todo)
        if progress:
            progress(done, len(scan.records))
        records = [r for i in todo for r in chunks[i]]
        # Small inputs: a pool only pays off beyond a few batches of work.
        late = not early and workers > 1 and len(records) > 2 * _BATCH
        with _pool(workers if late else 1) as late_pool:
            results = _run(dataset, tree, records, config, limits, pool or late_pool, workers)
            if split:  # each record's output counts, for the merge
                results = split.tally(results, staging, [(names[i], len(chunks[i])) for i in todo])
            for i in todo:
                done += _write_shard(staging, dataset, names[i], chunks[i], results)
                if progress:
                    progress(done, len(scan.records))
    if split:
        split.seal(staging, names)
    return commit_dataset(
        dataset,
        staging=staging,
        names=names,
        scan=scan,
        config=config,
        shards_root=shards_root,
        manifests_root=manifests_root,
        plan=plan,
        source=_source_args(adapter),
        resumed=len(chunks) - len(todo),
        seconds=time.perf_counter() - start,
        per_shard=records_per_shard,
    )


def _plan_id(dataset: str, scan: Scan, config: PreprocessConfig, per_shard: int, options: dict | None) -> str:
    """Hash of everything that decides the output, so a rerun resumes only an identical plan."""
    head: list = [dataset, asdict(config), per_shard, PREPROCESS_VERSION]
    if options is not None:  # a user source: its options too (the built-in datasets' plans stay as they were)
        head.append(options)
    h = hashlib.sha256(json.dumps(head).encode())
    for r in scan.records:
        h.update(f"{r.source}\0{r.member.size}\0{r.label_raw}\0{r.split}\n".encode())
        if r.pixels is not None:
            h.update(f"{r.pixels}\n".encode())
    return h.hexdigest()[:12]


def _nothing_to_ingest(adapter: DatasetAdapter, raw: Path | str, scan: Scan) -> str:
    """The one line for a --raw with no sample in it: what was expected, or (a user source) what was found."""
    info, kind = adapter.info, getattr(adapter, "kind", None)
    if kind is None:
        return f"{raw} does not hold {info.title}: expected {info.layout} (pass {info.raw_hint})"
    found = f"{len(scan.rejects)} files or objects, none usable" if scan.rejects else "nothing"
    worst = sorted(scan.rejects, key=lambda r: r.kind != "reject")  # a reject says more than a skipped file
    first = f"; first: {worst[0].source}: {worst[0].reason}" if worst else ""
    return f"no sample for {kind.kind} in {raw} (it takes {kind.raw_hint}): found {found}{first}"


def _open_tree(adapter: DatasetAdapter, raw: Path, limits: Limits) -> RawTree:
    """The raw tree the adapter reads: a folder or archive(s), or what a user source opens itself (a table)."""
    opener = getattr(adapter, "open_tree", None)
    if opener is not None:
        return opener(raw, limits.max_member_bytes)
    return RawTree(raw, max_member_bytes=limits.max_member_bytes)


def _source_args(adapter: DatasetAdapter) -> dict | None:
    """What ``index.json`` records about a user source (its kind and options); ``None`` for a built-in dataset."""
    kind = getattr(adapter, "kind", None)
    return None if kind is None else {"kind": kind.kind, "options": adapter.options}  # type: ignore[attr-defined]


def _refuse_foreign_folder(final: Path) -> None:
    """Refuse to replace a shard folder that is not an ingested dataset (a shard set of the same name)."""
    try:
        kind = read_index(final).kind
    except (OSError, ValueError, PlanktonDataError):
        return  # no folder, or one without a readable index: ingest's own checks handle it
    if kind != "dataset":
        raise PlanktonDataError(f"{final} is a {kind}, not an ingested dataset: choose another --name")


def _input_bytes(raw: Path) -> int:
    if raw.is_file():
        return raw.stat().st_size
    return sum(f.stat().st_size for f in raw.rglob("*") if f.is_file()) if raw.is_dir() else 0


@contextlib.contextmanager
def _pool(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """A started pool of ``workers`` processes (``None`` for 1): spawned, one OpenCV thread each."""
    if workers <= 1:
        yield None
        return
    pool = ProcessPoolExecutor(
        workers, mp_context=get_context("spawn"), initializer=_worker_start, initargs=(os.getpid(),)
    )
    try:
        for future in [pool.submit(worker_init) for _ in range(workers)]:  # spawn all of them now
            future.result()
        yield pool
    except BaseException:  # Ctrl-C or an error: drop the queued batches, let the running ones finish
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _worker_start(parent: int) -> None:
    """Initializer of every worker process: one OpenCV thread, Ctrl-C left to the parent, and exit once the
    parent is gone.

    A parent killed with SIGKILL cannot stop its workers, and they do not notice on their own: each holds both
    ends of the pool's pipes, so a worker blocked writing a result waits forever (and keeps the resource
    tracker alive). A daemon thread polls ``os.getppid()``: it changes when the parent dies (the worker is
    reparented), and the worker then exits at once.
    """
    worker_init()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent handles it
    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=_exit_with_parent, args=(parent,), name="exit-with-parent", daemon=True).start()


def _exit_with_parent(parent: int, interval: float = 0.25) -> None:
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)  # no cleanup: the parent that would consume it is gone


def _run(
    dataset: str,
    tree: RawTree,
    records: list,
    config: PreprocessConfig,
    limits: Limits,
    pool: ProcessPoolExecutor | None,
    workers: int,
) -> Iterator[list]:
    """Results of :func:`process_task` in record order; bytes are read lazily, at most a window ahead.

    With a pool, the window is ``4 x workers`` batches and at most ``_IN_FLIGHT_BYTES`` of input (plus one
    batch): memory stays bounded whatever the dataset or its member sizes.
    """
    reader = _MemberReader(tree)
    tasks = (_task(dataset, reader, r, config, limits) for r in records)
    if pool is None:
        yield from map(process_task, tasks)
        return
    window = 4 * workers
    pending: deque = deque()
    in_flight = 0
    for batch in _batches(tasks):
        size = sum(len(t.data) for t in batch)
        pending.append((pool.submit(process_batch, batch), size))
        in_flight += size
        while len(pending) >= window or in_flight > _IN_FLIGHT_BYTES:
            future, n = pending.popleft()
            in_flight -= n
            yield from future.result()
    while pending:
        yield from pending.popleft()[0].result()


def _batches(tasks: Iterator[Task]) -> Iterator[list[Task]]:
    """Batches of ``_BATCH`` tasks, cut early once one holds ``_BATCH_BYTES`` of input (big images)."""
    batch: list[Task] = []
    size = 0
    for task in tasks:
        batch.append(task)
        size += len(task.data)
        if len(batch) == _BATCH or size >= _BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


class _MemberReader:
    """Member bytes for tasks. A record cut from a bigger member (``pixels``: an IFCB ROI in its bin's ``.roi``)
    gets its slice of that member, read once for all its ROIs: records are in source order, so the ROIs of a
    bin come together and one member is held at a time."""

    def __init__(self, tree: RawTree) -> None:
        self.tree = tree
        self._path, self._data = "", b""

    def read(self, record) -> bytes:
        if record.pixels is None:
            return self.tree.read(record.member)
        if record.member.path != self._path:
            self._path, self._data = "", b""  # a failed read is not cached
            self._data = self.tree.read(record.member)
            self._path = record.member.path
        start, length = record.pixels.start, record.pixels.length
        if start + length > len(self._data):
            raise ValueError(f"ROI runs past the end of {record.member.path} ({start + length} > {len(self._data)})")
        return self._data[start : start + length]


def _task(dataset: str, reader: _MemberReader, record, config: PreprocessConfig, limits: Limits) -> Task:
    """The record's task with its bytes, or with why they cannot be read (it becomes a reject with that reason)."""
    try:
        return Task(dataset, record, reader.read(record), config, limits=limits)
    except MemberTooLarge as exc:
        return Task(dataset, record, b"", config, error=str(exc), limits=limits)
    except Exception as exc:  # damaged member: becomes a reject, not a crash
        log.warning("cannot read %s: %s", record.source, exc)
        return Task(dataset, record, b"", config, error=f"cannot read it: {_read_error(exc)}", limits=limits)


def _read_error(exc: Exception) -> str:
    """The cause of a failed member read, in words: a damaged archive, an encrypted member, an I/O error."""
    if isinstance(exc, zipfile.BadZipFile | zlib.error | EOFError):
        return f"damaged archive member ({one_line(exc)})"
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}"
    return one_line(exc)


def _write_shard(staging: Path, dataset: str, name: str, chunk: list, results: Iterator[list]) -> int:
    rows, rejects = [], []
    with TarShardWriter(staging / name) as writer:
        for _ in chunk:
            for out in next(results):
                if isinstance(out, Failure):
                    rejects.append(Reject(out.source, out.reason, out.label_raw))
                    continue
                assert isinstance(out, Sample)
                loc = writer.add(out.row["key"], {out.row["image_format"]: out.image, "json": out.meta_json})
                image_loc = loc[out.row["image_format"]]
                rows.append(dict(out.row, shard=f"{dataset}/{name}", offset=image_loc.offset, length=image_loc.length))
    info = writer.close()  # closed already on leaving the block: returns its ShardInfo
    sidecar = to_table(rows).replace_schema_metadata(
        {
            "shard": json.dumps(asdict(info)),
            "rejects": json.dumps([asdict(r) for r in rejects]),
        }
    )
    write_table(sidecar, staging / f"{name}.rows.parquet")
    return len(chunk)
