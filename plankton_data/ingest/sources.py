"""Read a dataset as published: a folder, a zip, a folder of zips, or zips inside zips, without unpacking.

:class:`RawTree` lists every file under ``--raw`` as a :class:`Member` with a virtual path that joins folder
and archive-member names with ``/`` (``train.zip/train/amphipods/1234.jpg``), skipping macOS/Windows junk.
Member bytes are read on demand, straight from the archive, never more than the member size limit
(:mod:`plankton_data.ingest.limits`). A zip nested in a zip is read in place when it is stored uncompressed
(how Fairdata packages ship); a compressed inner zip is first inflated into a spooled temporary file, since
zip needs random access.

In a folder, symlinks are followed: a file symlink is read as the file it names, a folder symlink is walked
once per real folder (a loop, or a second link to a folder already walked, is not walked again). What cannot
be read as a file (a dangling symlink, a fifo or device, a folder walked already) is listed in
:attr:`RawTree.skipped` with the reason, so every entry under ``--raw`` is accounted for.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from plankton_data.errors import CorruptArchive, MemberTooLarge, MissingRawData
from plankton_data.ingest.limits import Limits

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"})
_JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini", ".ds_store"})


def is_junk(path: str) -> bool:
    """macOS resource forks, ``__MACOSX/`` folders, hidden files, Windows thumbnails: never data."""
    parts = PurePosixPath(path).parts
    name = parts[-1] if parts else ""
    return "__MACOSX" in parts or name.startswith(".") or name.lower() in _JUNK_NAMES


def is_image(path: str) -> bool:
    return PurePosixPath(path).suffix.lower() in IMAGE_EXTENSIONS


@dataclass(frozen=True)
class Member:
    """One file under ``--raw``. ``archive`` is an index into :attr:`RawTree._archives` or -1 for a plain file."""

    path: str  # virtual path, '/'-joined through folders and archives
    size: int  # uncompressed bytes
    archive: int
    name: str  # member name inside the archive, or the absolute file path


class _Slice(io.RawIOBase):
    """A read-only window ``[start, start + length)`` of a seekable file: a stored inner zip, read in place."""

    def __init__(self, fh: IO[bytes], start: int, length: int) -> None:
        self._fh, self._start, self._len, self._pos = fh, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._len}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        n = max(0, min(len(buf), self._len - self._pos))
        self._fh.seek(self._start + self._pos)
        data = self._fh.read(n)
        buf[: len(data)] = data
        self._pos += len(data)
        return len(data)


def _stored_data_offset(fh: IO[bytes], info: zipfile.ZipInfo) -> int:
    """Absolute offset of a member's data: after its local header, whose extra field may differ."""
    fh.seek(info.header_offset)
    header = fh.read(30)
    if header[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"bad local header for {info.filename}")
    name_len = int.from_bytes(header[26:28], "little")
    extra_len = int.from_bytes(header[28:30], "little")
    return info.header_offset + 30 + name_len + extra_len


def _check_size(size: int, limit: int, what: str = "uncompressed") -> None:
    """Raise :class:`MemberTooLarge` if a declared size is over ``limit``."""
    if problem := Limits(max_member_bytes=limit).size_problem(size, what):
        raise MemberTooLarge(problem)


def _check_read(data: bytes, limit: int) -> bytes:
    """``data`` (read with a cap of ``limit + 1`` bytes) unless the cap was reached."""
    if len(data) > limit:
        raise MemberTooLarge(
            f"member holds more than the {limit / (1 << 20):,.1f} MiB limit although its header says less "
            "(raise it with --max-member-mb)"
        )
    return data


class RawTree:
    """Every non-junk file under a raw dataset path, with on-demand byte access.

    Raises :class:`MissingRawData` if the path does not exist and :class:`CorruptArchive` if a zip in it
    cannot be read. Use as a context manager (or call :meth:`close`) to release archive handles.
    """

    def __init__(self, root: Path | str, *, max_member_bytes: int = Limits().max_member_bytes) -> None:
        self.root = Path(root)
        self.max_member_bytes = max_member_bytes
        self._archives: list[zipfile.ZipFile] = []
        self._fds: list[int] = []
        self._files: list[IO[bytes]] = []
        self.members: list[Member] = []
        #: ``(virtual path, reason)`` of entries under a folder that are not files to read (module docstring).
        self.skipped: list[tuple[str, str]] = []
        #: Virtual paths of the macOS/Windows junk left out of :attr:`members` (:func:`is_junk`), for sources
        #: that account for every file (the user-data sources list them as skipped).
        self.junk: list[str] = []
        if not self.root.exists():
            raise MissingRawData(f"--raw path {self.root} does not exist")
        if self.root.is_file():
            self._add_archive_file(self.root, self.root.name)
        else:
            self._walk()

    def _walk(self) -> None:
        """Every file under the root folder, following symlinks, each real folder once."""
        top = self.root.stat()
        walked = {(top.st_dev, top.st_ino)}

        def unreadable(exc: OSError) -> None:  # a folder that cannot be listed: accounted for, not silently left out
            rel = Path(exc.filename or self.root).relative_to(self.root).as_posix()
            self.skipped.append((rel, f"cannot list this folder ({exc.strerror or exc})"))

        for dirpath, dirnames, filenames in os.walk(self.root, onerror=unreadable, followlinks=True):
            here = Path(dirpath)
            keep = []
            for dname in sorted(dirnames):
                rel = (here / dname).relative_to(self.root).as_posix()
                try:
                    st = (here / dname).stat()
                except OSError as exc:
                    self.skipped.append((rel, f"cannot read this folder ({exc.strerror or exc})"))
                    continue
                if (st.st_dev, st.st_ino) in walked:
                    self.skipped.append((rel, "folder symlink to a folder already read (a loop or a second link)"))
                    continue
                walked.add((st.st_dev, st.st_ino))
                keep.append(dname)
            dirnames[:] = keep  # os.walk descends into these only, in sorted order
            for fname in sorted(filenames):
                full = here / fname
                rel = full.relative_to(self.root).as_posix()
                if is_junk(rel):
                    self.junk.append(rel)
                    continue
                try:
                    st = full.stat()
                except OSError as exc:
                    why = "dangling symlink" if full.is_symlink() and not os.path.exists(full) else "cannot stat it"
                    self.skipped.append((rel, f"{why} ({exc.strerror or exc})"))
                    continue
                if not stat.S_ISREG(st.st_mode):
                    self.skipped.append((rel, "not a regular file (a fifo, socket or device)"))
                elif fname.lower().endswith(".zip"):
                    self._add_archive_file(full, rel)
                else:
                    self.members.append(Member(rel, st.st_size, -1, str(full)))

    def _add_archive_file(self, path: Path, vpath: str) -> None:
        if not zipfile.is_zipfile(path):
            raise CorruptArchive(f"{path} is not a readable zip archive (truncated or another format)")
        fh = open(path, "rb")
        self._files.append(fh)
        self._add_zip(fh, vpath, str(path), fh.fileno())

    def _add_zip(self, fileobj, vpath: str, label: str, fd: int = -1) -> None:
        try:
            zf = zipfile.ZipFile(fileobj)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise CorruptArchive(f"cannot open zip {label}: {exc}") from exc
        index = len(self._archives)
        self._archives.append(zf)
        self._fds.append(fd)  # a real file descriptor for top-level archives, -1 inside another zip
        for info in zf.infolist():
            if info.is_dir():
                continue
            mpath = f"{vpath}/{info.filename}"
            if is_junk(info.filename):
                self.junk.append(mpath)
                continue
            if info.filename.lower().endswith(".zip"):
                self._add_zip(self._open_nested(zf, info, fileobj), mpath, f"{label}:{info.filename}")
            else:
                self.members.append(Member(mpath, info.file_size, index, info.filename))

    def _open_nested(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo, parent: IO[bytes]) -> IO[bytes]:
        if info.compress_type == zipfile.ZIP_STORED:
            return io.BufferedReader(_Slice(parent, _stored_data_offset(parent, info), info.file_size), 1 << 20)
        spool = tempfile.SpooledTemporaryFile(max_size=256 << 20)
        with zf.open(info) as src:
            shutil.copyfileobj(src, spool, 1 << 20)
        spool.seek(0)
        self._files.append(spool)
        return spool

    def read(self, member: Member) -> bytes:
        """The member's bytes, CRC-checked.

        Raises :class:`MemberTooLarge` if its declared size is over ``max_member_bytes`` (before reading
        anything) or its data turns out to be; never more than the limit + 1 bytes are read or inflated, and
        never more than the declared size + 1 from an archive, whatever the data holds. Raises
        ``OSError``/``zipfile.BadZipFile``/``zlib.error`` on damaged data (a size that lies is damage).
        """
        limit = self.max_member_bytes
        _check_size(member.size, limit)
        if member.archive < 0:
            with open(member.name, "rb") as fh:
                data = _check_read(fh.read(min(member.size, limit) + 1), limit)
            if len(data) != member.size:
                raise OSError(errno.EIO, "the file changed size while being read", member.name)
            return data
        zf = self._archives[member.archive]
        fd = self._fds[member.archive]
        info = zf.getinfo(member.name)
        _check_size(info.compress_size, limit, "compressed")
        if fd < 0 or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or info.flag_bits & 0x1:
            with zf.open(member.name) as fh:  # zipfile stops at file_size and checks the CRC at the end
                return _check_read(fh.read(limit + 1), limit)
        # Fast path for a top-level archive (~10x less Python than ZipFile.read): one pread of the local
        # header plus data, inflate, and the same CRC check zipfile does.
        head = os.pread(fd, 30, info.header_offset)
        if head[:4] != b"PK\x03\x04":
            raise zipfile.BadZipFile(f"bad local header for {member.name}")
        start = info.header_offset + 30 + int.from_bytes(head[26:28], "little") + int.from_bytes(head[28:30], "little")
        data = os.pread(fd, info.compress_size, start)
        if info.compress_type == zipfile.ZIP_DEFLATED:
            # never inflate past the declared size (+1 to notice a lie): a bomb costs no more than its header says
            data = zlib.decompressobj(-15).decompress(data, info.file_size + 1)
        if len(data) > info.file_size:
            raise zipfile.BadZipFile(f"{member.name} inflates past the {info.file_size} bytes its header declares")
        if len(data) < info.file_size:
            raise zipfile.BadZipFile(f"{member.name} holds {len(data)} bytes, its header declares {info.file_size}")
        if zlib.crc32(data) != info.CRC:
            raise zipfile.BadZipFile(f"bad CRC-32 for {member.name}: its data is damaged")
        return data

    @classmethod
    def of_files(cls, paths: list[Path], *, max_member_bytes: int = Limits().max_member_bytes) -> RawTree:
        """A tree of the given plain files, named by their file names (a table that names images; one IFCB bin
        given by one of its files). Files the caller finds elsewhere are read as plain-file :class:`Member`
        objects (``archive=-1``)."""
        tree = cls.__new__(cls)
        tree.root, tree.max_member_bytes = paths[0], max_member_bytes
        tree._archives, tree._fds, tree._files, tree.skipped, tree.junk = [], [], [], [], []
        tree.members = []
        for path in paths:
            if not path.is_file():
                raise MissingRawData(f"--raw {path} is not a file")
            tree.members.append(Member(path.name, path.stat().st_size, -1, str(path.resolve())))
        return tree

    def close(self) -> None:
        for zf in self._archives:
            zf.close()
        for fh in self._files:
            fh.close()

    def __enter__(self) -> RawTree:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
