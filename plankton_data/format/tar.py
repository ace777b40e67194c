"""The WebDataset tar layout: deterministic, atomic writing, and reading member headers.

Every sample is ``<key>.<image format>`` plus ``<key>.json``, written in sorted extension order as plain
512-byte USTAR headers; this module alone knows the header fields and block arithmetic. Writing is
:class:`TarShardWriter`; reading is :func:`read_members` (walk the headers of a mapped tar, for ``verify`` and
for the loader's fallback scan) and the field slices the shard-set copy checks in bulk with numpy.

Why not ``webdataset.ShardWriter`` (or ``tarfile``): the former writes straight to the final name (a crash
leaves a truncated tar that looks complete) and stamps the current time into headers (reruns differ);
both cost ~150 µs of Python per member. This writer builds the fixed 512-byte USTAR headers itself
(mtime 0, owner 0/0, mode 0444), streams to ``NAME.partial`` while hashing, and renames on close, so the
same samples give byte-identical tars and each member's data offset is known as it is written. The result
is a plain POSIX tar that ``webdataset``, GNU ``tar`` and Python's ``tarfile`` read.
"""

from __future__ import annotations

import hashlib
import mmap
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from plankton_data.format import atomic
from plankton_data.format.index import ShardInfo

BLOCK = 512
RECORD = 20 * BLOCK  # tar pads the archive to whole 10 KiB records, as GNU tar and tarfile do
ZERO_BLOCK = bytes(BLOCK)
#: Header fields (byte slices of a 512-byte header).
NAME_FIELD = slice(0, 100)
SIZE_FIELD = slice(124, 136)  # 11 octal digits and a NUL
CHECKSUM_FIELD = slice(148, 156)
TYPE_FIELD = slice(156, 157)
_EXTENDED_TYPES = (b"x", b"g", b"L", b"K")  # pax and GNU long-name headers (never written here)


@dataclass(frozen=True)
class MemberLocation:
    """Where a member's data sits inside the finished tar."""

    offset: int  # byte offset of the first data byte
    length: int  # data length in bytes


def _template() -> bytearray:
    header = bytearray(BLOCK)
    header[100:108] = b"0000444\0"  # mode
    header[108:116] = b"0000000\0"  # uid
    header[116:124] = b"0000000\0"  # gid
    header[136:148] = b"00000000000\0"  # mtime
    header[148:156] = b" " * 8  # checksum field counts as spaces
    header[156:157] = b"0"  # regular file
    header[257:265] = b"ustar\x0000"
    return header


_TEMPLATE = bytes(_template())
_TEMPLATE_SUM = sum(_TEMPLATE)


def ustar_header(name: str, size: int) -> bytes:
    """A 512-byte POSIX ustar header for a regular file with fixed metadata (mode 0444, owner 0, mtime 0)."""
    raw = name.encode("utf-8")
    if len(raw) > 100:
        raise ValueError(f"member name longer than 100 bytes: {name!r}")
    size_field = b"%011o\0" % size
    header = bytearray(_TEMPLATE)
    header[0 : len(raw)] = raw
    header[124:136] = size_field
    # The checksum is the byte sum of the header: the fixed part is precomputed.
    header[148:156] = b"%06o\0 " % (_TEMPLATE_SUM + sum(raw) + sum(size_field) - sum(_TEMPLATE[124:136]))
    return bytes(header)


class TarShardWriter:
    """Write one tar shard atomically. Use as a context manager; leaving it normally commits.

    Example::

        with TarShardWriter(folder / "kaggle-000000.tar") as w:
            loc = w.add("kaggle_0123abcd", {"jpg": jpeg_bytes, "json": meta_bytes})
        info = w.info  # ShardInfo(name, count, bytes, sha256)
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._tmp = self.path.with_name(self.path.name + ".partial")
        self._fh = open(self._tmp, "wb")
        self._sha = hashlib.sha256()
        self._pos = 0
        self.count = 0
        self.info: ShardInfo | None = None

    def _write(self, data: bytes) -> None:
        self._fh.write(data)
        self._sha.update(data)
        self._pos += len(data)

    def add(self, key: str, members: dict[str, bytes]) -> dict[str, MemberLocation]:
        """Append one sample: ``members`` maps extension -> bytes, written in sorted extension order.

        Returns the data location of every member. Keys must contain no dots (webdataset splits the
        extension at the first dot of the basename) and no slashes.
        """
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
        locations, parts, pos = {}, [], self._pos
        for ext in sorted(members):
            data = members[ext]
            parts.append(ustar_header(f"{key}.{ext}", len(data)))
            locations[ext] = MemberLocation(offset=pos + BLOCK, length=len(data))
            parts.append(data)
            pad = -len(data) % BLOCK
            parts.append(b"\0" * pad)
            pos += BLOCK + len(data) + pad
        self._write(b"".join(parts))  # one write and one hash update per sample
        self.count += 1
        return locations

    def close(self) -> ShardInfo:
        """Finish the tar (two zero blocks, padded to a whole record), fsync, and rename it into place."""
        if self.info is not None:
            return self.info
        end = self._pos + 2 * BLOCK
        try:
            self._write(b"\0" * (2 * BLOCK + (-end % RECORD)))
            self._fh.close()
            atomic.commit(self._tmp, self.path)
        except BaseException as exc:  # disk full on the last blocks or the fsync: no partial file stays
            self.abort()
            atomic.name_target(exc, self.path)
            raise
        self.info = ShardInfo(name=self.path.name, count=self.count, bytes=self._pos, sha256=self._sha.hexdigest())
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
            atomic.name_target(exc, self.path)


def padded(size: int) -> int:
    """Bytes a member of ``size`` data bytes occupies after its header (whole blocks)."""
    return -(-size // BLOCK) * BLOCK


def end_of_archive(data_bytes: int) -> bytes:
    """The zero blocks that end a tar whose members occupy ``data_bytes``: two blocks, padded to a record."""
    return bytes(2 * BLOCK + (-(data_bytes + 2 * BLOCK)) % RECORD)


@dataclass(frozen=True)
class TarMember:
    """A member of a tar: its name, where its header starts, where its data starts, and its data size."""

    name: str
    header: int
    offset: int
    size: int
    type: bytes = b"0"

    @property
    def end(self) -> int:
        """First byte after the member's padded data (where the next header starts)."""
        return self.offset + padded(self.size)


def parse_octal(field: bytes) -> int:
    """A numeric header field: octal digits, or GNU base-256 (high bit set) for large values."""
    if field and field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    return int(field.strip(b"\0 ") or b"0", 8)


def checksum_ok(header: bytes) -> bool:
    """Whether a header's stored checksum equals the byte sum of the header (checksum field as spaces)."""
    try:
        stored = int(header[CHECKSUM_FIELD].strip(b"\0 ") or b"-1", 8)
    except ValueError:
        return False
    return stored == sum(header[:148]) + 8 * 32 + sum(header[156:])


def read_members(buf: bytes | mmap.mmap, checksums: bool = True) -> tuple[list[TarMember], str]:
    """Walk the headers of an uncompressed tar in ``buf`` (only header blocks are touched).

    Returns the members up to the end-of-archive marker and ``""``, or the members read before the damage
    and a one-line description of it (truncation, a bad header). ``checksums=False`` skips the header
    checksum test (for tars whose sha256 was already checked).
    """
    members: list[TarMember] = []
    pos, size = 0, len(buf)
    while True:
        if pos + BLOCK > size:
            return members, f"file ends at byte {size} without an end-of-archive marker (truncated?)"
        hdr = buf[pos : pos + BLOCK]
        if hdr == ZERO_BLOCK:
            return members, ""
        if checksums and not checksum_ok(hdr):
            return members, f"bad tar header checksum at byte {pos}"
        name = hdr[NAME_FIELD].split(b"\0", 1)[0].decode("utf-8", "replace")
        try:
            n = parse_octal(hdr[SIZE_FIELD])
        except ValueError:
            return members, f"unreadable size field in the tar header at byte {pos}"
        if pos + BLOCK + n > size:
            return members, f"member {name} runs past the end of the file (truncated?)"
        member = TarMember(name, pos, pos + BLOCK, n, bytes(hdr[TYPE_FIELD]))
        members.append(member)
        pos = member.end


@contextmanager
def open_mapped(path: Path) -> Iterator[mmap.mmap | bytes]:
    """Read-only map of a file (``b""`` when it is empty, which mmap cannot map)."""
    with open(path, "rb") as fh:
        if fh.seek(0, 2) == 0:
            yield b""
            return
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            yield mm


def member_key(name: str) -> tuple[str, str]:
    """``(key, extension)`` of a member name (webdataset's rule: the extension starts at the first dot)."""
    key, _, ext = name.rpartition("/")[2].partition(".")
    return key, ext


def scan_images(path: Path, image_ext: str) -> tuple[list[tuple[str, int, int]], str]:
    """``(key, data offset, data length)`` of every ``<key>.<image_ext>`` member of a tar, in tar order.

    For tar folders without a manifest (or tars from elsewhere): walks the headers with :func:`read_members`,
    and hands tars with pax or GNU long-name headers, which this toolkit never writes, to :mod:`tarfile`.
    The second value is ``""``, or the damage that ended the walk early (the members before it are kept).
    """
    with open_mapped(path) as buf:
        members, problem = read_members(buf)
    if any(m.type in _EXTENDED_TYPES for m in members):
        with tarfile.open(path, "r:") as tar:
            found = [(*member_key(t.name), t.offset_data, t.size) for t in tar if t.isfile()]
        return [(key, off, n) for key, ext, off, n in found if ext == image_ext], ""
    found = [(*member_key(m.name), m.offset, m.size) for m in members if m.type in (b"0", b"\0")]
    return [(key, off, n) for key, ext, off, n in found if ext == image_ext], problem
