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
import mmap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from plankton_data.errors import PlanktonDataError
from plankton_data.format.index import ShardIndex, ShardInfo, read_index
from plankton_data.format.manifest import read_manifest

_BLOCK = 512
_ZERO = bytes(_BLOCK)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a shard folder. ``shard`` and ``key`` are empty when they do not apply."""

    shard: str
    key: str
    message: str

    def __str__(self) -> str:
        where = "/".join(p for p in (self.shard, self.key) if p) or "index"
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class TarMember:
    """A member of a tar: its name, where its header starts, where its data starts, and its data size."""

    name: str
    header: int
    offset: int
    size: int

    @property
    def end(self) -> int:
        """First byte after the member's padded data (where the next header starts)."""
        return self.offset + -(-self.size // _BLOCK) * _BLOCK


def read_members(buf: bytes | mmap.mmap, checksums: bool = True) -> tuple[list[TarMember], str]:
    """Walk the headers of an uncompressed tar in ``buf``.

    Returns the members up to the end-of-archive marker and ``""``, or the members read before the damage
    and a one-line description of it (truncation, a bad header). ``checksums=False`` skips the header
    checksum test (for tars whose sha256 was already checked).
    """
    members: list[TarMember] = []
    pos, size = 0, len(buf)
    while True:
        if pos + _BLOCK > size:
            return members, f"file ends at byte {size} without an end-of-archive marker (truncated?)"
        hdr = buf[pos : pos + _BLOCK]
        if hdr == _ZERO:
            return members, ""
        if checksums and not _checksum_ok(hdr):
            return members, f"bad tar header checksum at byte {pos}"
        name = hdr[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        try:
            n = int(hdr[124:136].strip(b"\0 ") or b"0", 8)
        except ValueError:
            return members, f"unreadable size field in the tar header at byte {pos}"
        if pos + _BLOCK + n > size:
            return members, f"member {name} runs past the end of the file (truncated?)"
        member = TarMember(name, pos, pos + _BLOCK, n)
        members.append(member)
        pos = member.end


def _checksum_ok(hdr: bytes) -> bool:
    try:
        stored = int(hdr[148:156].strip(b"\0 ") or b"-1", 8)
    except ValueError:
        return False
    return stored == sum(hdr[:148]) + 8 * 32 + sum(hdr[156:])


@contextmanager
def open_mapped(path: Path) -> Iterator[mmap.mmap | bytes]:
    """Read-only map of a file (``b""`` when it is empty, which mmap cannot map)."""
    with open(path, "rb") as fh:
        if fh.seek(0, 2) == 0:
            yield b""
            return
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            yield mm


def locate_manifest(folder: Path, index: ShardIndex, manifest: Path | None = None) -> Path | None:
    """The manifest of a shard folder: ``manifest`` if given, else the index's ``manifest`` path (as written,
    or relative to the folder's grandparent), else ``<root>/manifests/<name>.parquet`` beside ``<root>/shards``.
    """
    if manifest is not None:
        return Path(manifest)
    root = folder.resolve().parent.parent
    candidates = [Path(index.manifest), root / index.manifest] if index.manifest else []
    candidates.append(root / "manifests" / f"{index.name}.parquet")
    return next((c for c in candidates if c.is_file()), None)


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
    path = locate_manifest(folder, index, manifest)
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
            key, _, ext = m.name.partition(".")
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
