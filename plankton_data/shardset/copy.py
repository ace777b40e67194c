"""Copy samples from ingested tars into new tars, byte for byte, resumably.

**Runs.** In a tar written by :class:`~plankton_data.format.tar.TarShardWriter` every sample is one contiguous
run of 512-byte blocks: its two members (the image and ``<key>.json``, in sorted extension order), headers
included, and the runs tile the tar up to its end-of-archive marker. So every run follows from the manifest's
``offset``/``length`` columns (numpy over all rows at once), plus, when the image comes first, the json size
of each tar's last sample. Copying runs, then two zero blocks padded to a 10 KiB record, gives exactly the tar
that ``TarShardWriter`` writes for the same samples in the same order.

**Source checks** (before anything is written; cheap): every source tar used has the byte size its
``index.json`` records and an end-of-archive marker after its last run (:func:`plan_layout`), and every sample
in it has both tar headers where its manifest row says: the image member named ``<key>.<format>`` with size
``length``, the json member ending where the next sample starts (:func:`check_sources`, one tar per thread).
Image bytes are not hashed here: that would be a second sha256 pass over every byte, on top of the one the
output needs. A flipped image byte is caught by ``plankton-data verify`` of the source folder, or of the set
(its manifest keeps each image's ``image_sha256``).

**Writing.** Output tars are independent, so a small thread pool writes several at once: each gathers its
runs as slices of read-only maps of the source tars, hashes them (sha256 releases the GIL) and hands them to
``os.writev`` (the kernel copies from the page cache; no Python-level copy). Each tar is written as
``NAME.partial`` and renamed when complete (what protects against a killed process; no fsync per tar), then a
``.done`` sidecar records its size and sha256. A rerun reuses a tar only if its sidecar is readable and the
file still hashes to it (after a power loss an unsynced tar may not have survived).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from plankton_data.errors import PlanktonDataError
from plankton_data.format import atomic
from plankton_data.format.atomic import name_target
from plankton_data.format.index import ShardInfo, file_sha256
from plankton_data.format.tar import BLOCK, NAME_FIELD, SIZE_FIELD, end_of_archive, padded, parse_octal

_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024  # buffers per writev
_WORKERS = max(1, min(4, os.cpu_count() or 1))  # tars written at once
#: ``progress(done_samples, total_samples)``
ProgressFn = Callable[[int, int], None]


def prefetch_files(paths: list[Path]) -> None:
    """Ask the kernel to start reading ``paths`` into the page cache in the background.

    The copy reads each source tar through a map, one sample's run of blocks at a time in shuffled order, which
    defeats readahead: from a cold cache every run would be a small synchronous read. ``POSIX_FADV_WILLNEED``
    queues whole-file reads that proceed while the rows are selected and laid out. A hint only: a missing file
    or a system without it is ignored here and reported where the file is opened.
    """
    if not hasattr(os, "posix_fadvise"):
        return
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)


class SourceTars:
    """Read-only maps of source tars (manifest ``shard`` paths under ``root``), each checked against the size its
    index.json records when first opened. Open them from one thread; reading the views is thread-safe."""

    def __init__(self, root: Path, sizes: dict[str, int]) -> None:
        self.root = Path(root)
        self.sizes = sizes
        self._maps: dict[str, tuple[mmap.mmap, memoryview]] = {}

    def view(self, tar: str) -> memoryview:
        """The bytes of ``tar``; slicing the view copies nothing."""
        if tar not in self._maps:
            path = self.root / tar
            try:
                with open(path, "rb") as fh:
                    size = os.fstat(fh.fileno()).st_size
                    if size != self.sizes[tar]:
                        raise PlanktonDataError(
                            f"corrupt source shard {tar}: {size} bytes, its index.json says {self.sizes[tar]}"
                        )
                    mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError) as exc:
                raise PlanktonDataError(f"corrupt source shard {tar}: cannot read it ({exc})") from exc
            self._maps[tar] = (mm, memoryview(mm))
        return self._maps[tar][1]

    def close(self) -> None:
        """Unmap every tar; one still referenced (by arrays of a traceback being handled) is unmapped when freed."""
        for mm, view in self._maps.values():
            try:
                view.release()
                mm.close()
            except BufferError:
                pass
        self._maps.clear()

    def __enter__(self) -> SourceTars:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class _Samples:
    """The samples of one source tar, in tar order: manifest fields and the run each occupies."""

    tar: str
    keys: pa.Array
    offset: np.ndarray
    length: np.ndarray
    start: np.ndarray
    end: np.ndarray


@dataclass
class Layout:
    """Which block runs make up each output tar, and where each image lands."""

    tars: list[str]  # output tar names
    sources: list[str]  # source tars used (manifest ``shard`` values); ``source`` indexes this list
    source: np.ndarray  # (tars, per tar) source tar of each sample
    start: np.ndarray  # (tars, per tar) first byte of the sample's run in its source tar
    end: np.ndarray  # (tars, per tar) end of the run
    offsets: np.ndarray  # (rows,) image data offset of each output row inside its output tar
    image_format: str
    samples: list[_Samples]  # per source tar used, every sample in it (for :func:`check_sources`)


def plan_layout(
    table: pa.Table, order: np.ndarray, tars: SourceTars, name: str, per_tar: int, image_format: str
) -> Layout:
    """Lay out ``table`` rows ``order`` (whole tars of ``per_tar``) as ``<name>-NNNNNN.tar`` files.

    ``table`` must hold every row of each source tar it uses (whole manifests): the runs tile each source tar,
    so they follow from the manifest's offsets, plus, when the image member comes first, the size of the last
    sample's json member. Checks each source tar's size and end-of-archive marker; :func:`check_sources` checks
    the rest.
    """
    encoded = table.column("shard").combine_chunks().dictionary_encode()
    code = encoded.indices.to_numpy().astype(np.int64)
    names = encoded.dictionary.to_pylist()
    used = np.unique(code[order])
    in_used = np.zeros(len(names), bool)
    in_used[used] = True
    rows = np.flatnonzero(in_used[code])
    offset = table.column("offset").to_numpy()
    rows = rows[np.lexsort((offset[rows], code[rows]))]
    keys = table.column("key").take(pa.array(rows)).combine_chunks()
    length = table.column("length").to_numpy()[rows]
    bounds = np.r_[0, np.flatnonzero(np.diff(code[rows])) + 1, len(rows)]
    image_end = offset[rows] + _padded(length)
    image_first = image_format < "json"  # TarShardWriter writes members in sorted extension order
    if image_first:
        start = offset[rows] - BLOCK
        end = np.r_[start[1:], 0]  # the next sample's start; the last of each tar is set below
    else:  # the json member opens the run, right after the previous sample (or at 0)
        start = np.r_[0, image_end[:-1]]
        start[bounds[:-1]] = 0
        end = image_end
    samples = []
    for k, t in enumerate(used):
        a, b, tar = bounds[k], bounds[k + 1], names[t]
        view = tars.view(tar)
        if image_first:
            end[b - 1] = _member_end(view, int(image_end[b - 1]), tar)
        if end[b - 1] + 2 * BLOCK > len(view) or any(view[end[b - 1] : end[b - 1] + 2 * BLOCK]):
            raise PlanktonDataError(f"corrupt source shard {tar}: no end-of-archive marker after the last sample")
        samples.append(_Samples(tar, keys[a:b], offset[rows[a:b]], length[a:b], start[a:b], end[a:b]))
    run_start, run_end = np.empty(len(offset), np.int64), np.empty(len(offset), np.int64)
    run_start[rows], run_end[rows] = start, end
    n_tars = len(order) // per_tar
    shape = (n_tars, per_tar)
    s, e = run_start[order].reshape(shape), run_end[order].reshape(shape)
    placed = np.cumsum(e - s, axis=1) - (e - s)  # where each run starts in its output tar
    offsets = (placed + offset[order].reshape(shape) - s).ravel()
    source = np.searchsorted(used, code[order]).reshape(shape)
    tar_names = [f"{name}-{i:06d}.tar" for i in range(n_tars)]
    return Layout(tar_names, [names[t] for t in used], source, s, e, offsets, image_format, samples)


def _member_end(view: memoryview, header: int, tar: str) -> int:
    """End of the (padded) data of the member whose header starts at byte ``header``."""
    try:
        size = parse_octal(bytes(view[header + SIZE_FIELD.start : header + SIZE_FIELD.stop]))
    except ValueError:
        raise PlanktonDataError(f"corrupt source shard {tar}: no readable tar header at byte {header}") from None
    return header + BLOCK + padded(size)


def check_sources(layout: Layout, tars: SourceTars) -> None:
    """Raise :class:`PlanktonDataError` unless every sample of every source tar used has its two tar headers where
    its manifest row says: the image member's size field equal to ``length``, and the json member ending where
    the next sample starts (the first and last sample of each tar also carry their key in the member name).
    Source tars are checked in parallel."""
    views = [tars.view(s.tar) for s in layout.samples]
    with ThreadPoolExecutor(_WORKERS) as pool:
        found = pool.map(
            lambda sv: _check_tar(sv[0], sv[1], layout.image_format), zip(layout.samples, views, strict=True)
        )
        problem = next((p for p in found if p), None)
    if problem:
        raise PlanktonDataError(problem)


def _check_tar(s: _Samples, view: memoryview, image_format: str) -> str | None:
    """What is wrong with the tar headers of the samples ``s`` (see :func:`check_sources`), or ``None``."""
    data = np.frombuffer(view, np.uint8)
    image_hdr = s.offset - BLOCK
    image_first = image_format < "json"
    other_hdr = s.offset + _padded(s.length) if image_first else s.start
    for p in (image_hdr, other_hdr):
        if (p % BLOCK).any() or (p < 0).any() or (p + BLOCK > len(data)).any():
            return f"corrupt source shard {s.tar}: a sample is not where its manifest says"
    size_field = np.arange(SIZE_FIELD.start, SIZE_FIELD.stop - 1)  # 11 octal digits (the 12th byte is NUL)
    image_size, image_ok = _octal(data[image_hdr[:, None] + size_field])
    other_size, other_ok = _octal(data[other_hdr[:, None] + size_field])
    ok = (
        image_ok
        & other_ok
        & (image_size == s.length)
        & (other_hdr + BLOCK + _padded(other_size) == (s.end if image_first else image_hdr))
    )
    ok[0] &= s.start[0] == 0
    for row in {0, len(ok) - 1}:  # names: at both ends of the tar, where a manifest of another ingest would show
        width = NAME_FIELD.stop - NAME_FIELD.start
        name = f"{s.keys[row].as_py()}.{image_format}".encode().ljust(width, b"\0")
        ok[row] &= bytes(view[image_hdr[row] : image_hdr[row] + width]) == name
    if ok.all():
        return None
    key = s.keys[int(np.argmin(ok))].as_py()
    return f"corrupt source shard {s.tar}: the tar headers of sample {key} do not match its manifest row"


def _octal(fields: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values of 11-digit octal size fields, and whether each is well formed."""
    digits = fields - np.uint8(ord("0"))  # wraps below "0": any non-digit ends up >= 8
    value = np.zeros(len(fields), np.int64)
    for k in range(fields.shape[1]):
        value = value * 8 + digits[:, k]
    return value, np.asarray((digits < 8).all(axis=1))


def _padded(size: np.ndarray) -> np.ndarray:
    """:func:`~plankton_data.format.tar.padded` over an array of sizes."""
    return -(-size // BLOCK) * BLOCK


def write_tars(
    staging: Path, layout: Layout, tars: SourceTars, progress: ProgressFn | None = None
) -> tuple[list[ShardInfo], int]:
    """Write every tar of ``layout`` into ``staging``, reusing those a previous run finished (module docstring).

    Returns the ShardInfo of every tar (in order) and how many were reused. ``progress(done, total)`` is called
    from the calling thread; an exception from it stops the build once the tars being written are complete.
    """
    views = [tars.view(t) for t in layout.sources]
    per_tar = layout.start.shape[1]
    infos, resumed = [], 0
    pool = ThreadPoolExecutor(_WORKERS)
    try:
        for info, reused in pool.map(lambda i: _resume_or_write(staging, layout, i, views), range(len(layout.tars))):
            infos.append(info)
            resumed += reused
            if progress:
                progress(len(infos) * per_tar, len(layout.tars) * per_tar)
    finally:  # on an error or Ctrl-C, finish the tars being written but start no more
        pool.shutdown(wait=True, cancel_futures=True)
    return infos, resumed


def _resume_or_write(staging: Path, layout: Layout, i: int, views: list[memoryview]) -> tuple[ShardInfo, bool]:
    path = staging / layout.tars[i]
    done = path.with_name(path.name + ".done")
    try:
        info = ShardInfo(**json.loads(done.read_text()))
        if path.stat().st_size == info.bytes and file_sha256(path) == info.sha256:
            return info, True
    except (OSError, ValueError, TypeError):
        pass
    return _write_tar(staging, layout, i, views), False


def _write_tar(staging: Path, layout: Layout, i: int, views: list[memoryview]) -> ShardInfo:
    """Copy tar ``i``'s runs into ``.partial``, add the end-of-archive blocks, hash, rename, mark done."""
    path = staging / layout.tars[i]
    tmp = path.with_name(path.name + ".partial")
    runs = zip(layout.source[i].tolist(), layout.start[i].tolist(), layout.end[i].tolist(), strict=True)
    bufs: list = [views[s][a:b] for s, a, b in runs]
    size = int((layout.end[i] - layout.start[i]).sum())
    bufs.append(end_of_archive(size))
    size += len(bufs[-1])
    sha = hashlib.sha256()
    try:
        for buf in bufs:
            sha.update(buf)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            write_all(fd, bufs)
        finally:
            os.close(fd)
    except BaseException as exc:  # disk full: no partial tar stays behind, and the message names the tar
        tmp.unlink(missing_ok=True)
        name_target(exc, path)
        raise
    finally:
        bufs.clear()  # release the slices of the maps even when a traceback keeps this frame alive
    atomic.commit(tmp, path, fsync=False)  # a rename protects against a kill; docs/shardsets.md: why no fsync
    info = ShardInfo(name=path.name, count=layout.start.shape[1], bytes=size, sha256=sha.hexdigest())
    atomic.write_bytes(path.with_name(path.name + ".done"), json.dumps(asdict(info)).encode(), fsync=False)
    return info


def write_all(fd: int, bufs: list) -> None:
    """Write ``bufs`` in order with as few ``writev`` calls as the system allows, resuming after short writes.

    After a short write the partly written buffer is replaced in ``bufs`` by its unwritten rest.
    """
    i = 0
    while i < len(bufs):
        batch = bufs[i : i + _IOV_MAX]
        written = os.writev(fd, batch)
        if written == sum(map(len, batch)):
            i += len(batch)
            continue
        for buf in batch:  # a short write: skip the buffers that went out, keep the rest of the one cut
            if written < len(buf):
                bufs[i] = buf[written:]
                break
            written -= len(buf)
            i += 1
