"""Check a shard folder (one ingested dataset or a shard set) against its ``index.json`` and manifest.

:func:`verify` re-reads everything and reports every problem it finds, each with the shard and, where it
concerns one sample, the key:

* the index: readable, counts add up to ``total``, no stray or missing tars;
* each tar: byte size and sha256 equal to the index, every header valid (checksum, data inside the file),
  an end-of-archive marker, as many samples as the index says, each with its image and a parseable JSON;
* the manifest: the very file index.json was committed with (its ``manifest_sha256``; skipped for folders
  written before the field existed), one row per sample, and for every row the image member sits exactly at
  ``offset``/``length``, its bytes hash to ``image_sha256``, and the sample's JSON member carries the row's
  key, label, split and the other fields both hold; index.json's pixel mean/std equal the manifest's exact
  pixel sums; for shard sets the manifest and index come from the same build.

This is the deep check that ``plankton-data shard`` leaves out (it checks source sizes and tar headers, not
every image's sha256): run it on the ingested folders before a build, or on the set after it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from plankton_data.errors import PlanktonDataError
from plankton_data.format.index import ShardIndex, ShardInfo, manifest_mismatch, manifest_path, read_index
from plankton_data.format.manifest import dataset_pixel_stats, pixel_stats, read_manifest
from plankton_data.format.tar import TarMember, member_key, open_mapped, read_members


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a shard folder. ``shard`` and ``key`` are empty when they do not apply."""

    shard: str
    key: str
    message: str

    def __str__(self) -> str:
        where = "/".join(p for p in (self.shard, self.key) if p) or "index"
        return f"{where}: {self.message}"


def verify(path: Path | str, manifest: Path | str | None = None) -> list[Problem]:
    """Every problem with the shard folder ``path``; an empty list means it is intact. See the module docstring.

    Args:
        path: ``shards/<name>/`` of an ingested dataset or a shard set.
        manifest: the manifest to check against; found from ``index.json`` when omitted.
    """
    folder = Path(path)
    try:
        index = read_index(folder)
    except PlanktonDataError as exc:
        return [Problem("", "", str(exc))]
    problems: list[Problem] = []
    listed = {s.name for s in index.shards}
    problems += [
        Problem(p.name, "", "tar not listed in index.json")
        for p in sorted(folder.glob("*.tar"))
        if p.name not in listed
    ]
    if sum(s.count for s in index.shards) != index.total:
        problems.append(
            Problem(
                "", "", f"shard counts add up to {sum(s.count for s in index.shards)}, index total is {index.total}"
            )
        )
    rows, manifest_problems = _manifest_rows(folder, index, Path(manifest) if manifest else None)
    problems += manifest_problems
    for info in index.shards:
        problems += _check_shard(folder / info.name, info, rows.pop(info.name), index.image_format)
    problems += [Problem(shard, "", "manifest rows point to a tar not listed in index.json") for shard in rows.left()]
    return problems


#: Fields of a sample's JSON member that the manifest row holds too: they must agree.
JSON_FIELDS = ("key", "dataset", "source", "label_raw", "label", "split", "subset", "instrument")


@dataclass(frozen=True)
class Row:
    """What verify needs of a manifest row."""

    offset: int
    length: int
    sha256: str
    fields: dict  # the row's values of JSON_FIELDS


class _TarRows:
    """The manifest's rows grouped by tar name, made into :class:`Row` objects one tar at a time.

    The columns verify compares are put in tar order once (one Arrow copy of them), and each tar's rows are a
    zero-copy slice of that: Python objects for every row of a 443k-sample manifest at once cost about 2 KB a
    sample (``benchmarks/bench_scale.py``), one tar's rows a few MB.
    """

    def __init__(self, table: pa.Table | None = None, fields: Sequence[str] = ()) -> None:
        self.table, self.fields = table, list(fields)  # table: the compared columns, rows in tar order
        self.groups: dict[str, tuple[int, int]] = {}  # tar -> (first row, rows) in ``table``

    def pop(self, tar: str) -> dict[str, Row]:
        """``{key: Row}`` of the rows that point at ``tar`` (in manifest order), forgotten afterwards."""
        span = self.groups.pop(tar, None)
        if span is None or self.table is None:
            return {}
        part = self.table.slice(*span)
        cols = [part.column(i).to_pylist() for i in range(part.num_columns)]  # key, offset, length, sha, fields
        return {
            key: Row(offset, length, sha, dict(zip(self.fields, values, strict=True)))
            for key, offset, length, sha, *values in zip(*cols, strict=True)
        }

    def left(self) -> list[str]:
        """Tars the rows not popped yet point at."""
        return list(self.groups)


def _manifest_rows(folder: Path, index: ShardIndex, manifest: Path | None) -> tuple[_TarRows, list[Problem]]:
    """Manifest rows grouped by tar name (:class:`_TarRows`)."""
    path = manifest or manifest_path(folder, index)
    if path is None:
        return _TarRows(), [Problem("", "", f"no manifest found for {index.name} (pass it explicitly)")]
    try:
        table = read_manifest(path)
    except PlanktonDataError as exc:
        return _TarRows(), [Problem("", "", str(exc))]
    problems = []
    plan = (pq.read_schema(path).metadata or {}).get(b"plankton_plan", b"").decode()
    if index.kind == "shardset" and plan != index.args.get("plan"):
        problems.append(
            Problem(
                "",
                "",
                f"manifest {path} and index.json come from different builds (plan "
                f"{plan or 'none'} vs {index.args.get('plan')}); rerun the shard command",
            )
        )
    if table.num_rows != index.total:
        problems.append(Problem("", "", f"manifest {path} has {table.num_rows} rows, index total is {index.total}"))
    if mismatch := manifest_mismatch(index, path):
        problems.append(Problem("", "", mismatch))
    problems += _stats_problems(index, table, path)
    fields = [c for c in JSON_FIELDS if c in table.column_names]
    shards = table.column("shard").combine_chunks().dictionary_encode()
    codes = shards.indices.to_numpy(zero_copy_only=False)
    order = np.argsort(codes, kind="stable")  # row numbers tar by tar, each tar's in manifest order
    bounds = np.searchsorted(codes[order], np.arange(len(shards.dictionary) + 1))
    names = ["key", "offset", "length", "image_sha256", *fields]
    compared = pa.table([table.column(c) for c in names], names=[f"{i}" for i in range(len(names))])
    in_tar_order = compared.take(pa.array(order))
    grouped = _TarRows(in_tar_order, fields)
    for i, shard in enumerate(shards.dictionary.to_pylist()):
        start, count = int(bounds[i]), int(bounds[i + 1] - bounds[i])
        parent, _, name = shard.rpartition("/")
        if parent != folder.name:
            keys = in_tar_order.column(0).slice(start, count).to_pylist()
            problems += [Problem(shard, key, f"manifest row points outside {folder.name}/") for key in keys]
            continue
        grouped.groups[name] = (start, count)
    return grouped, problems


def _stats_problems(index: ShardIndex, table: pa.Table, path: Path) -> list[Problem]:
    """index.json's mean/std (set-wide and per dataset) against the manifest's exact per-image pixel sums."""
    problems = []
    found = pixel_stats(table)
    if not _close(found, (index.mean, index.std)):
        problems.append(
            Problem(
                "",
                "",
                f"index.json mean/std {index.mean:.6f}/{index.std:.6f} differ from the pixel sums of {path} "
                f"({found[0]:.6f}/{found[1]:.6f})",
            )
        )
    if index.dataset_stats and table.num_rows:
        per_dataset = dataset_pixel_stats(table)
        for d in sorted(set(per_dataset) | set(index.dataset_stats)):
            got, want = per_dataset.get(d), index.dataset_stats.get(d)
            if (
                got is None
                or want is None
                or not all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) for a, b in zip(got, want, strict=True))
            ):
                problems.append(Problem("", "", f"index.json dataset_stats of {d} {want} differ from {path}: {got}"))
    return problems


def _check_shard(path: Path, info: ShardInfo, rows: dict[str, Row], image_format: str) -> list[Problem]:
    if not path.is_file():
        return [Problem(info.name, "", "tar listed in index.json is missing")]
    problems = []

    def problem(key: str, message: str) -> None:
        problems.append(Problem(info.name, key, message))

    with open_mapped(path) as buf:
        if len(buf) != info.bytes:
            problem("", f"size is {len(buf)} bytes, index.json says {info.bytes}")
        if hashlib.sha256(buf).hexdigest() != info.sha256:
            problem("", "sha256 differs from index.json")
        members, damage = read_members(buf)
        if damage:
            problem("", damage)
        samples: dict[str, dict[str, TarMember]] = {}
        for m in members:
            key, ext = member_key(m.name)
            samples.setdefault(key, {})[ext] = m
        if len(samples) != info.count:
            problem("", f"holds {len(samples)} readable samples, index.json says {info.count}")
        for key, exts in samples.items():
            if image_format not in exts or "json" not in exts:
                problem(key, f"sample lacks its {image_format} or json member (has {sorted(exts)})")
            else:
                meta = _json(buf[exts["json"].offset : exts["json"].offset + exts["json"].size])
                if meta is None:
                    problem(key, "json member does not parse")
                elif key in rows:
                    for name, value in rows[key].fields.items():
                        if name in meta and meta[name] != value:
                            problem(key, f"json member says {name} {meta[name]!r}, the manifest {value!r}")
            if key not in rows:
                problem(key, "sample is not in the manifest")
        for key, row in rows.items():
            member = samples.get(key, {}).get(image_format)
            if member is None:
                problem(key, "manifest row has no readable sample in this tar")
            elif (member.offset, member.size) != (row.offset, row.length):
                problem(
                    key, f"image member is at {member.offset}+{member.size}, manifest says {row.offset}+{row.length}"
                )
            elif hashlib.sha256(buf[row.offset : row.offset + row.length]).hexdigest() != row.sha256:
                problem(key, "image bytes do not match the manifest sha256")
    return problems


def _close(a: Sequence[float], b: Sequence[float]) -> bool:
    """Equal up to float rounding (both sides come from the same exact integer sums)."""
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12) for x, y in zip(a, b, strict=True))


def _json(data: bytes) -> dict | None:
    """The parsed JSON member, or ``None`` if it is not a JSON object."""
    try:
        meta = json.loads(data)
    except ValueError:
        return None
    return meta if isinstance(meta, dict) else None
