"""Deterministic, atomic WebDataset tar writing that records where each member's bytes land.

Why not ``webdataset.ShardWriter``: it writes straight to the final name (a crash leaves a truncated tar
that looks complete), stamps the current time into headers (reruns differ), and does not report member
offsets. This writer streams to ``NAME.partial``, hashes while writing, and renames on close; headers carry
fixed mtime/owner/mode so the same samples give byte-identical tars. The result is a plain USTAR tar that
``webdataset``, ``tar`` and Python's ``tarfile`` read.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from plankton_data.shard_index import ShardInfo

_BLOCK = 512


@dataclass(frozen=True)
class MemberLocation:
    """Where a member's data sits inside the finished tar."""

    offset: int  # byte offset of the first data byte
    length: int  # data length in bytes


class _HashingFile(io.RawIOBase):
    """A write-only file that hashes and counts everything written through it."""

    def __init__(self, fh: io.BufferedWriter) -> None:
        self._fh = fh
        self.sha = hashlib.sha256()
        self.pos = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._fh.write(data)
        self.sha.update(data)
        self.pos += len(data)
        return len(data)


class TarShardWriter:
    """Write one tar shard atomically. Use as a context manager; ``close()`` commits.

    Example::

        with TarShardWriter(folder / "kaggle-000000.tar") as w:
            loc = w.add("kaggle_0123abcd", {"jpg": jpeg_bytes, "json": meta_bytes})
        info = w.info  # ShardInfo(name, count, bytes, sha256)
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._tmp = self.path.with_name(self.path.name + ".partial")
        self._fh = open(self._tmp, "wb")
        self._hf = _HashingFile(self._fh)
        self._tar = tarfile.open(fileobj=self._hf, mode="w|", format=tarfile.USTAR_FORMAT)
        self.count = 0
        self.info: ShardInfo | None = None

    def add(self, key: str, members: dict[str, bytes]) -> dict[str, MemberLocation]:
        """Append one sample: ``members`` maps extension -> bytes, written in sorted extension order.

        Returns the data location of every member. Keys must contain no dots (webdataset splits the
        extension at the first dot of the basename).
        """
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
        locations = {}
        for ext in sorted(members):
            data = members[ext]
            ti = tarfile.TarInfo(f"{key}.{ext}")
            ti.size = len(data)
            ti.mtime = 0
            ti.mode = 0o444
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            self._tar.addfile(ti, io.BytesIO(data))
            # TarFile.offset is the logical end of the archive so far: just past the padded data.
            padded = -(-len(data) // _BLOCK) * _BLOCK
            locations[ext] = MemberLocation(offset=self._tar.offset - padded, length=len(data))
        self.count += 1
        return locations

    def close(self) -> ShardInfo:
        """Finish the tar, fsync, and rename it to its final name."""
        if self.info is not None:
            return self.info
        self._tar.close()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self._tmp, self.path)
        self.info = ShardInfo(
            name=self.path.name, count=self.count, bytes=self._hf.pos, sha256=self._hf.sha.hexdigest()
        )
        return self.info

    def abort(self) -> None:
        """Drop the partial file (used when an error interrupts writing)."""
        self._fh.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> TarShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
