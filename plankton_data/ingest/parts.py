"""Ingest across machines: ``ingest --part I/N`` runs one slice of the inputs, ``merge`` joins the slices.

A collection too large for one machine is ingested as ``N`` independent runs (a SLURM array, or ``N`` plain
processes on one or several hosts; there is no scheduler here), then merged into exactly the bytes a single
run would have written: the same tars, manifest, rejects list and ``index.json`` (``tests/test_parts.py``
compares their sha256 for ``N`` = 1, 2, 3 on every built-in layout).

**The slice.** Every part scans the whole ``--raw`` (a listing, cheap next to decoding), sorts the records as
a single run does, and keeps those whose input's path hashes to it: ``sha256(path) mod N`` (:func:`part_of`;
never Python's ``hash()``, which is salted per process). The path is the record's archive member, which is its
source for every image; the ROIs of one IFCB ``.roi`` file share it, so each member is read by one part only.
The scan's own rejects and skipped files are split by their source the same way. A part is then ingested
like any dataset, only into its own roots::

    shards/<dataset>.part-<I>-of-<N>/<dataset>/*.tar + index.json + part.parquet
    manifests/<dataset>.part-<I>-of-<N>/<dataset>.parquet + <dataset>.rejects.parquet

so it can be verified, resumed after a kill, or copied back from a node's scratch disk on its own. Its
``part.parquet`` (committed inside the folder, so with it) records the plan of the *whole* run (the plan id
a single run would have) and, for each of the part's records, its position in the global record order and
how many samples and rejects it produced; for each scan reject, its position among the scan rejects.

**The merge.** :func:`merge` checks that all ``N`` parts are there, committed and of one plan, and that their
positions cover every record exactly once; then it walks the global record order, takes each record's
samples (tar members, re-read and checked against their ``image_sha256``) and rejects from its part, cuts
them into shards of ``records_per_shard`` *records* as a single run does (a record yields 0..k samples or a
reject, so the tar boundaries depend on records, not samples), writes them with the single run's own shard
writer and commits with its own commit stage. The parts are left in place (``clean=True`` removes them).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from plankton_data.errors import PlanktonDataError
from plankton_data.format import atomic
from plankton_data.format.index import ShardIndex, manifest_mismatch, manifest_path, read_index
from plankton_data.format.lock import output_lock
from plankton_data.format.tar import open_mapped, read_members
from plankton_data.ingest.adapters.base import Reject, Scan
from plankton_data.ingest.commit import IngestReport, commit_dataset
from plankton_data.ingest.preprocess import Failure, PreprocessConfig, Sample

PART_FILE = "part.parquet"  # inside a part's shard folder
_META = b"plankton_part"  # schema metadata key of PART_FILE: the part's header, JSON
_COUNTS = ".{}.outputs.json"  # staging: per-record output counts of one finished tar
_NAME = re.compile(r"^(?P<dataset>.+)\.part-(?P<index>\d+)-of-(?P<count>\d+)$")

#: ``progress(done_records, total_records)``, as for an ingest.
ProgressFn = Callable[[int, int], None]


class PartError(PlanktonDataError):
    """A bad ``--part`` value, or parts that cannot be merged (missing, of different plans, damaged)."""


def part_of(source: str, count: int) -> int:
    """The part (``0 <= part < count``) that the input ``source`` belongs to: the first 8 bytes of its sha256,
    big-endian, modulo ``count``. The same on every machine and Python process."""
    return int.from_bytes(hashlib.sha256(source.encode()).digest()[:8], "big") % count


@dataclass(frozen=True)
class Part:
    """Slice ``index`` of ``count`` (0-based, so ``--part $SLURM_ARRAY_TASK_ID/N`` with ``--array=0-(N-1)``)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1:
            raise PartError(f"--part {self.index}/{self.count}: N must be at least 1")
        if not 0 <= self.index < self.count:
            raise PartError(
                f"--part {self.index}/{self.count}: I must be in 0..{self.count - 1} (parts are numbered from 0)"
            )

    @classmethod
    def parse(cls, text: str) -> Part:
        """``"I/N"`` -> ``Part(I, N)``; anything else is a :class:`PartError` saying what is expected."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match:
            raise PartError(f"--part {text!r}: expected I/N, e.g. 0/16 (part I of N, numbered from 0)")
        return cls(int(match[1]), int(match[2]))

    @property
    def tag(self) -> str:
        return f"part-{self.index}-of-{self.count}"

    def roots(self, dataset: str, shards_root: Path, manifests_root: Path) -> tuple[Path, Path]:
        """The shard and manifest roots this part is ingested into (module docstring)."""
        return shards_root / f"{dataset}.{self.tag}", manifests_root / f"{dataset}.{self.tag}"


class PartRun:
    """One part's side of an ingest run: selects its records, counts their outputs, writes ``part.parquet``.

    ``ingest`` creates it after the scan (records sorted), with the plan id of the whole scan; construction
    narrows ``scan`` to the part in place.
    """

    def __init__(self, part: Part, scan: Scan, *, dataset: str, plan: str, config: PreprocessConfig, per_shard: int):
        self.part = part
        mine = [part_of(r.member.path, part.count) == part.index for r in scan.records]
        self.positions = np.flatnonzero(mine).astype(np.int64)
        mine_rejects = [part_of(r.source, part.count) == part.index for r in scan.rejects]
        self.reject_positions = np.flatnonzero(mine_rejects).astype(np.int64)
        self.header = {
            "dataset": dataset,
            "part": part.index,
            "of": part.count,
            "plan": plan,
            "records": len(scan.records),
            "scan_rejects": len(scan.rejects),
            "records_per_shard": per_shard,
            "config": asdict(config),
        }
        scan.records = [r for r, keep in zip(scan.records, mine, strict=True) if keep]
        scan.rejects = [r for r, keep in zip(scan.rejects, mine_rejects, strict=True) if keep]

    def plan_id(self) -> str:
        """The part run's own plan id: the whole run's plan and the part, hashed (they decide its records)."""
        return hashlib.sha256(f"{self.header['plan']}\0{self.part.tag}".encode()).hexdigest()[:12]

    def tally(self, results: Iterator[list], staging: Path, todo: list[tuple[str, int]]) -> Iterator[list]:
        """Pass ``results`` (one output list per record, in record order) through, counting each record's samples
        and rejects; ``todo`` is ``(tar name, records)`` of every tar still to write, in order.

        The counts of a tar are saved in the staging folder once its last record is through (before that tar is
        complete: a kill in between redoes the tar and rewrites the same counts), so a resumed run has them for
        the tars an earlier run finished.
        """
        for name, n in todo:
            counts = []
            for _ in range(n):
                outs = next(results)
                counts.append([sum(isinstance(o, Sample) for o in outs), sum(isinstance(o, Failure) for o in outs)])
                if len(counts) == n:
                    atomic.write_bytes(staging / _COUNTS.format(name), json.dumps(counts).encode(), fsync=False)
                yield outs

    def seal(self, staging: Path, names: list[str]) -> None:
        """Write ``part.parquet`` into the staging folder (it is committed with it) from the saved counts."""
        counts = [c for name in names for c in json.loads((staging / _COUNTS.format(name)).read_text())]
        if len(counts) != len(self.positions):  # pragma: no cover - tally saw every record of every tar
            raise PartError(f"{staging}: output counts of {len(counts)} records, expected {len(self.positions)}")
        arr = np.asarray(counts, dtype=np.int32).reshape(-1, 2)
        n_rec, n_rej = len(self.positions), len(self.reject_positions)
        table = pa.table(
            {
                "kind": pa.array(["record"] * n_rec + ["scan_reject"] * n_rej, pa.string()),
                "position": pa.array(np.concatenate([self.positions, self.reject_positions]), pa.int64()),
                "samples": pa.array(np.concatenate([arr[:, 0], np.zeros(n_rej, np.int32)]), pa.int32()),
                "rejects": pa.array(np.concatenate([arr[:, 1], np.zeros(n_rej, np.int32)]), pa.int32()),
            }
        ).replace_schema_metadata({_META: json.dumps(self.header, sort_keys=True)})
        with atomic.atomic_path(staging / PART_FILE) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        for name in names:
            (staging / _COUNTS.format(name)).unlink()


@dataclass
class _Part:
    """A committed part, as the merge reads it."""

    part: Part
    root: Path  # shards/<dataset>.part-I-of-N
    manifests_root: Path  # manifests/<dataset>.part-I-of-N
    folder: Path  # root/<dataset>
    index: ShardIndex
    header: dict
    positions: np.ndarray  # (records,) global record positions, ascending
    samples: np.ndarray  # (records,) samples of each record
    rejects: np.ndarray  # (records,) processing rejects of each record
    reject_positions: np.ndarray  # (scan rejects,) positions among the whole run's scan rejects
    manifest: pa.Table
    rejects_table: pa.Table


def find_parts(dataset: str, shards_root: Path | str, manifests_root: Path | str) -> list[Path]:
    """The part roots ``<shards_root>/<dataset>.part-I-of-N`` there are, sorted by ``(N, I)``."""
    shards_root = Path(shards_root)
    found = []
    for path in shards_root.glob(f"{glob_escape(dataset)}.part-*-of-*"):
        m = _NAME.match(path.name)
        if m and m["dataset"] == dataset and path.is_dir():
            found.append((int(m["count"]), int(m["index"]), path))
    return [p for _, _, p in sorted(found)]


def glob_escape(text: str) -> str:
    """``text`` with glob wildcards made literal."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def _load_parts(dataset: str, shards_root: Path, manifests_root: Path) -> list[_Part]:
    """All parts of ``dataset``, checked: one N, every I present and committed, one plan (else :class:`PartError`)."""
    roots = find_parts(dataset, shards_root, manifests_root)
    hint = f"run plankton-data ingest {dataset} --part I/N for every I"
    if not roots:
        raise PartError(f"no parts of {dataset} in {shards_root}/ (expected {dataset}.part-I-of-N folders: {hint})")
    counts = sorted({int(_NAME.match(r.name)["count"]) for r in roots})  # type: ignore[index]
    if len(counts) > 1:
        raise PartError(
            f"parts of different plans in {shards_root}/: {dataset} split in "
            + " and in ".join(str(c) for c in counts)
            + " parts; delete the folders of the split you do not want"
        )
    n = counts[0]
    parts = []
    for i in range(n):
        part = Part(i, n)
        root, mroot = part.roots(dataset, shards_root, manifests_root)
        folder = root / dataset
        if not (folder / "index.json").is_file() or not (folder / PART_FILE).is_file():
            raise PartError(
                f"part {i}/{n} of {dataset} is missing: no committed {folder}/ "
                f"(run plankton-data ingest {dataset} --part {i}/{n}, or wait for it to finish)"
            )
        parts.append(_read_part(part, root, mroot, folder))
    first = {**parts[0].header, "version": parts[0].index.version}
    for p in parts[1:]:
        mine = {**p.header, "version": p.index.version}
        if mine != {**first, "part": p.part.index}:
            diff = sorted(k for k in first if k != "part" and mine.get(k) != first[k])
            raise PartError(
                f"parts of different plans: part {p.part.index}/{n} of {dataset} differs from part 0/{n} in "
                f"{', '.join(diff)} (other inputs, settings or plankton-data version); rerun it with the same ones"
            )
    for kind, total, arrays in (
        ("records", first["records"], [p.positions for p in parts]),
        ("scan rejects", first["scan_rejects"], [p.reject_positions for p in parts]),
    ):
        allpos = np.sort(np.concatenate(arrays)) if arrays else np.zeros(0, np.int64)
        if len(allpos) != total or not np.array_equal(allpos, np.arange(total)):
            raise PartError(f"the parts of {dataset} do not cover its {total} {kind} exactly once: damaged part files")
    return parts


def _read_part(part: Part, root: Path, manifests_root: Path, folder: Path) -> _Part:
    index = read_index(folder)
    table = pq.read_table(folder / PART_FILE)
    header = json.loads((table.schema.metadata or {})[_META])
    if (header.get("dataset"), header.get("part"), header.get("of")) != (index.name, part.index, part.count):
        raise PartError(f"{folder}/{PART_FILE} is not the file of part {part.index}/{part.count}")
    manifest = manifest_path(folder, index)
    if manifest is None:
        raise PartError(
            f"the manifest of part {part.index}/{part.count} is missing (index.json names {index.manifest})"
        )
    if problem := manifest_mismatch(index, manifest):
        raise PartError(problem)
    rejects_file = manifests_root / f"{index.name}.rejects.parquet"
    if not rejects_file.is_file():
        raise PartError(f"the rejects list of part {part.index}/{part.count} is missing: {rejects_file}")
    kind = table.column("kind").to_numpy(zero_copy_only=False)
    rec = kind == "record"
    manifest_table, rejects_table = pq.read_table(manifest), pq.read_table(rejects_file)
    out = _Part(
        part=part,
        root=root,
        manifests_root=manifests_root,
        folder=folder,
        index=index,
        header=header,
        positions=table.column("position").to_numpy()[rec],
        samples=table.column("samples").to_numpy()[rec],
        rejects=table.column("rejects").to_numpy()[rec],
        reject_positions=table.column("position").to_numpy()[~rec],
        manifest=manifest_table,
        rejects_table=rejects_table,
    )
    expected = (int(out.samples.sum()), len(out.reject_positions) + int(out.rejects.sum()))
    if expected != (manifest_table.num_rows, rejects_table.num_rows):
        raise PartError(
            f"part {part.index}/{part.count} of {index.name}: {manifest_table.num_rows} samples and "
            f"{rejects_table.num_rows} rejects on disk, {expected[0]} and {expected[1]} in {PART_FILE}"
        )
    return out


def _samples(p: _Part) -> Iterator[Sample]:
    """The part's samples in its own order: manifest rows with their members' bytes, checked against the row."""
    start = 0
    for info in p.index.shards:
        rows = p.manifest.slice(start, info.count).to_pylist()
        start += info.count
        with open_mapped(p.folder / info.name) as buf:
            members, problem = read_members(buf)
            if problem:
                raise PartError(f"{p.folder / info.name}: {problem}")
            by_key: dict[str, dict[str, tuple[int, int]]] = {}
            for m in members:
                key, _, ext = m.name.partition(".")
                by_key.setdefault(key, {})[ext] = (m.offset, m.size)
            if list(by_key) != [r["key"] for r in rows]:
                raise PartError(f"{p.folder / info.name} does not hold the samples its manifest lists, in order")
            for row in rows:
                spans = by_key[row["key"]]
                off, size = spans[row["image_format"]]
                image = bytes(buf[off : off + size])
                if hashlib.sha256(image).hexdigest() != row["image_sha256"]:
                    raise PartError(f"{p.folder / info.name}: the image of {row['key']} is damaged (sha256 differs)")
                joff, jsize = spans["json"]
                yield Sample(row, image, bytes(buf[joff : joff + jsize]))


def _failures(p: _Part) -> Iterator[Failure]:
    """The part's processing rejects in its own order (its rejects list after its scan rejects)."""
    rows = p.rejects_table.slice(len(p.reject_positions)).to_pylist()
    for r in rows:
        yield Failure(r["source"], r["reason"], r["label_raw"])


def merge(
    dataset: str,
    *,
    shards_root: Path | str = "shards",
    manifests_root: Path | str = "manifests",
    clean: bool = False,
    progress: ProgressFn | None = None,
) -> IngestReport:
    """Merge the committed parts of ``dataset`` into ``shards/<dataset>/`` + its manifests (module docstring).

    The result is byte for byte what one ``ingest`` of the whole input with the same settings writes, and is
    committed the same way (staging folder, index last). ``clean`` deletes the parts' folders afterwards.
    """
    from plankton_data.ingest.run import _write_shard  # run.py imports this module: import at call time

    start = time.perf_counter()
    shards_root, manifests_root = Path(shards_root), Path(manifests_root)
    with output_lock(shards_root / dataset), contextlib.ExitStack() as locks:
        parts = _load_parts(dataset, shards_root, manifests_root)
        for p in parts:  # no part may be rewritten while it is read
            locks.enter_context(output_lock(p.folder))
        head = parts[0].header
        total, per_shard, plan = head["records"], head["records_per_shard"], head["plan"]
        owner = np.empty(total, np.int32)
        for k, p in enumerate(parts):
            owner[p.positions] = k
        scan = Scan(rejects=_scan_rejects(parts, head["scan_rejects"]))
        staging = shards_root / f".{dataset}.staging-{plan}"
        staging.mkdir(parents=True, exist_ok=True)
        names = [f"{dataset}-{i:06d}.tar" for i in range(-(-total // per_shard))]
        samples, failures = [_samples(p) for p in parts], [_failures(p) for p in parts]
        local = [0] * len(parts)

        def outputs() -> Iterator[list]:
            for k in owner.tolist():
                p, j = parts[k], local[k]
                local[k] += 1
                outs: list = [next(samples[k]) for _ in range(int(p.samples[j]))]
                yield outs + [next(failures[k]) for _ in range(int(p.rejects[j]))]

        results = outputs()
        done = 0
        if progress:
            progress(0, total)
        for i, name in enumerate(names):
            n = min(per_shard, total - i * per_shard)
            done += _write_shard(staging, dataset, name, [None] * n, results)
            if progress:
                progress(done, total)
        for k in range(len(parts)):
            if next(samples[k], None) is not None or next(failures[k], None) is not None:
                raise PartError(f"part {k}/{len(parts)} of {dataset} holds more outputs than its {PART_FILE} lists")
        report = commit_dataset(
            dataset,
            staging=staging,
            names=names,
            scan=scan,
            config=PreprocessConfig(**head["config"]),
            shards_root=shards_root,
            manifests_root=manifests_root,
            plan=plan,
            resumed=0,
            seconds=time.perf_counter() - start,
            per_shard=per_shard,
            source=parts[0].index.args.get("source"),  # a user source's kind and options, as a single run records
        )
    if clean:
        for p in parts:
            shutil.rmtree(p.root)
            shutil.rmtree(p.manifests_root, ignore_errors=True)
    return report


def _scan_rejects(parts: list[_Part], total: int) -> list[Reject]:
    """The whole run's scan rejects in the single run's order, from each part's first rows."""
    out: list[Reject | None] = [None] * total
    for p in parts:
        rows = p.rejects_table.slice(0, len(p.reject_positions)).to_pylist()
        for pos, r in zip(p.reject_positions.tolist(), rows, strict=True):
            out[pos] = Reject(r["source"], r["reason"], r["label_raw"], r["kind"])
    return [r for r in out if r is not None]
