"""Check a shard folder (one ingested dataset or a shard set) against its ``index.json`` and manifest.

:func:`verify` re-reads everything and reports every problem it finds, each with the shard and, where it
concerns one sample, the key:

* the index: readable, counts add up to ``total``, no stray or missing tars;
* each tar: byte size and sha256 equal to the index, every header valid (checksum, data inside the file),
  an end-of-archive marker, as many samples as the index says, each with its image and a parseable JSON;
* the manifest: one row per sample, and for every row the image member sits exactly at ``offset``/``length``
  and its bytes hash to ``image_sha256``; for shard sets the manifest and index come from the same build.

This is the deep check that ``plankton-data shard`` leaves out (it checks source sizes and tar headers, not
every image's sha256): run it on the ingested folders before a build, or on the set after it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from plankton_data.errors import PlanktonDataError
from plankton_data.format.index import ShardIndex, ShardInfo, manifest_path, read_index
from plankton_data.format.manifest import read_manifest
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
        problems += _check_shard(folder / info.name, info, rows.pop(info.name, {}), index.image_format)
    problems += [Problem(shard, "", "manifest rows point to a tar not listed in index.json") for shard in rows]
    return problems


def _manifest_rows(
    folder: Path, index: ShardIndex, manifest: Path | None
) -> tuple[dict[str, dict[str, tuple[int, int, str]]], list[Problem]]:
    """Manifest rows grouped by tar name: ``{tar: {key: (offset, length, image_sha256)}}``."""
    path = manifest or manifest_path(folder, index)
    if path is None:
        return {}, [Problem("", "", f"no manifest found for {index.name} (pass it explicitly)")]
    try:
        table = read_manifest(path)
    except PlanktonDataError as exc:
        return {}, [Problem("", "", str(exc))]
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
    grouped: dict[str, dict[str, tuple[int, int, str]]] = {}
    cols = [table.column(c).to_pylist() for c in ("shard", "key", "offset", "length", "image_sha256")]
    for shard, key, offset, length, sha in zip(*cols, strict=True):
        parent, _, name = shard.rpartition("/")
        if parent != folder.name:
            problems.append(Problem(shard, key, f"manifest row points outside {folder.name}/"))
            continue
        grouped.setdefault(name, {})[key] = (offset, length, sha)
    return grouped, problems


def _check_shard(
    path: Path, info: ShardInfo, rows: dict[str, tuple[int, int, str]], image_format: str
) -> list[Problem]:
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
            elif not _json_ok(buf[exts["json"].offset : exts["json"].offset + exts["json"].size]):
                problem(key, "json member does not parse")
            if key not in rows:
                problem(key, "sample is not in the manifest")
        for key, (offset, length, sha) in rows.items():
            member = samples.get(key, {}).get(image_format)
            if member is None:
                problem(key, "manifest row has no readable sample in this tar")
            elif (member.offset, member.size) != (offset, length):
                problem(key, f"image member is at {member.offset}+{member.size}, manifest says {offset}+{length}")
            elif hashlib.sha256(buf[offset : offset + length]).hexdigest() != sha:
                problem(key, "image bytes do not match the manifest sha256")
    return problems


def _json_ok(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    return True
