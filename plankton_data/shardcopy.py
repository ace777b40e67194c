"""Copy samples from ingested tars into new tars, byte for byte, resumably.

A sample's members (``<key>.jpg`` + ``<key>.json``, in the order the writer put them) form one contiguous run
of 512-byte tar blocks, headers included. Copying those runs, then two zero blocks padded to a 10 KiB record,
gives exactly the tar that :class:`~plankton_data.tarwriter.TarShardWriter` writes for the same samples in
the same order (same headers, same padding), without decoding anything and without tarfile's per-member
cost. The manifest says where each image member is; only the headers between image members are read to find
the rest of each run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from plankton_data.errors import PlanktonDataError
from plankton_data.pixels import SourceReader
from plankton_data.shard_index import ShardInfo

_BLOCK = 512
_ZERO = bytes(_BLOCK)
_RECORD = 20 * _BLOCK  # tarfile pads an archive to a multiple of its 10 KiB record
_CHUNK = 4 << 20  # bytes joined per write
_THREADS = 4  # sha256 and file writes run without the GIL


@dataclass
class Layout:
    """Which block runs make up each output tar, and where each image lands."""

    tars: list[str]  # output tar names
    sources: list[str]  # source tars used (manifest ``shard`` values); ``source`` indexes this list
    source: np.ndarray  # (tars, per tar) source tar of each sample
    start: np.ndarray  # (tars, per tar) first byte of the sample's run in its source tar
    end: np.ndarray  # (tars, per tar) end of the run
    offsets: np.ndarray  # (rows,) image data offset of each output row inside its output tar


def verify_sources(tars: list[tuple[str, ShardInfo]], reader: SourceReader) -> None:
    """Raise unless every ``(tar, index entry)`` has the size and sha256 its index.json records."""
    views = [reader.view(tar) for tar, _ in tars]  # opens the maps here, in one thread
    for (tar, info), view in zip(tars, views, strict=True):
        if len(view) != info.bytes:
            raise PlanktonDataError(f"corrupt source shard {tar}: {len(view)} bytes, its index.json says {info.bytes}")
    with ThreadPoolExecutor(_THREADS) as pool:
        digests = list(pool.map(lambda v: hashlib.sha256(v).hexdigest(), views))
    bad = [tar for (tar, info), digest in zip(tars, digests, strict=True) if digest != info.sha256]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise PlanktonDataError(f"corrupt source shard {bad[0]}{more}: sha256 differs from its index.json")


def plan_layout(table: pa.Table, order: np.ndarray, reader: SourceReader, name: str, per_tar: int) -> Layout:
    """Lay out ``table`` rows ``order`` (whole tars of ``per_tar``) as ``<name>-NNNNNN.tar`` files.

    ``table`` must hold every row of each source tar it uses (a dataset's whole manifest), since the runs of
    a tar are found by walking it from image member to image member.
    """
    encoded = table.column("shard").combine_chunks().dictionary_encode()
    tar_of = encoded.indices.to_numpy().astype(np.int64)
    keys = table.column("key").to_pylist()
    offset = table.column("offset").to_numpy()
    length = table.column("length").to_numpy()
    start, end = np.full(len(keys), -1, np.int64), np.full(len(keys), -1, np.int64)
    by_tar = np.argsort(tar_of, kind="stable")
    bounds = np.searchsorted(tar_of[by_tar], np.arange(len(encoded.dictionary) + 1))
    names = encoded.dictionary.to_pylist()
    used = np.unique(tar_of[order])
    for t in used:
        rows = by_tar[bounds[t] : bounds[t + 1]]
        rows = rows[np.argsort(offset[rows], kind="stable")]
        start[rows], end[rows] = _runs(
            reader.view(names[t]), [keys[r] for r in rows], offset[rows], length[rows], names[t]
        )
    n_tars = len(order) // per_tar
    shape = (n_tars, per_tar)
    s, e = start[order].reshape(shape), end[order].reshape(shape)
    placed = np.cumsum(e - s, axis=1) - (e - s)  # where each run starts in its output tar
    offsets = (placed + offset[order].reshape(shape) - s).ravel()
    tars = [f"{name}-{i:06d}.tar" for i in range(n_tars)]
    source = np.searchsorted(used, tar_of[order]).reshape(shape)
    return Layout(tars, [names[t] for t in used], source, s, e, offsets)


def _runs(
    buf: memoryview, keys: list[str], offsets: np.ndarray, lengths: np.ndarray, tar: str
) -> tuple[np.ndarray, np.ndarray]:
    """Start and end of each sample's run in ``tar``: its image member (manifest ``offset``/``length``) plus
    the members with its key right before or after it. Rows are sorted by offset and cover the whole tar."""
    starts = offsets - _BLOCK
    ends = offsets + -(-lengths // _BLOCK) * _BLOCK
    pos = 0
    for k in range(len(keys) + 1):
        last = k == len(keys)
        limit = len(buf) if last else int(starts[k])
        trail_end, lead, pos = _walk_gap(buf, pos, limit, keys[k - 1] if k else None, None if last else keys[k], tar)
        if k:
            ends[k - 1] = max(int(ends[k - 1]), trail_end)
        if not last:
            if pos != limit or bytes(buf[limit : limit + len(keys[k]) + 1]) != f"{keys[k]}.".encode():
                raise PlanktonDataError(f"corrupt source shard {tar}: sample {keys[k]} is not where its manifest says")
            starts[k] = lead if lead >= 0 else starts[k]
            pos = int(ends[k])
    return starts, ends


def _walk_gap(
    buf: memoryview, pos: int, limit: int, prev_key: str | None, next_key: str | None, tar: str
) -> tuple[int, int, int]:
    """Walk the members between two image members: first those of ``prev_key`` (trailing), then those of
    ``next_key`` (leading). Returns (end of the trailing ones, start of the leading ones or -1, end).
    With no ``next_key`` (after the last image) the walk ends at the end-of-archive marker."""
    trail_end, lead = pos, -1
    while pos < limit:
        hdr = bytes(buf[pos : pos + _BLOCK])
        if next_key is None and hdr == _ZERO:
            return trail_end, lead, limit
        name = hdr[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        key = name.partition(".")[0]
        try:
            size = int(hdr[124:136].strip(b"\0 ") or b"0", 8)
        except ValueError:
            raise PlanktonDataError(f"corrupt source shard {tar}: bad tar header at byte {pos}") from None
        end = pos + _BLOCK + -(-size // _BLOCK) * _BLOCK
        if lead < 0 and key == prev_key:
            trail_end = end
        elif key == next_key:
            lead = pos if lead < 0 else lead
        else:
            raise PlanktonDataError(f"corrupt source shard {tar}: unexpected member {name!r} at byte {pos}")
        pos = end
    if next_key is None:
        raise PlanktonDataError(f"corrupt source shard {tar}: no end-of-archive marker (truncated?)")
    return trail_end, lead, pos


def write_tars(
    staging: Path, layout: Layout, reader: SourceReader, progress: Callable[[int, int], None] | None = None
) -> tuple[list[ShardInfo], int]:
    """Write every tar of ``layout`` into ``staging`` that has no ``.done`` sidecar yet.

    Returns the ShardInfo of every tar (in order) and how many were already done (resumed).
    """
    per_tar = layout.start.shape[1]
    infos: dict[int, ShardInfo] = {}
    for i, tar in enumerate(layout.tars):
        done, path = staging / f"{tar}.done", staging / tar
        if done.is_file() and path.is_file():
            info = ShardInfo(**json.loads(done.read_text()))
            if path.stat().st_size == info.bytes:
                infos[i] = info
    resumed, total = len(infos), len(layout.tars) * per_tar
    if progress:
        progress(resumed * per_tar, total)
    todo = [i for i in range(len(layout.tars)) if i not in infos]
    pool = ThreadPoolExecutor(_THREADS)
    try:
        written = pool.map(lambda i: _write_tar(staging, layout, i, reader), todo)
        for n, (i, info) in enumerate(zip(todo, written, strict=True), 1):
            infos[i] = info
            if progress:
                progress((resumed + n) * per_tar, total)
    finally:  # on an error or Ctrl-C, finish the tars being written but start no more
        pool.shutdown(wait=True, cancel_futures=True)
    return [infos[i] for i in range(len(layout.tars))], resumed


def _write_tar(staging: Path, layout: Layout, i: int, reader: SourceReader) -> ShardInfo:
    """Copy tar ``i``'s runs into ``.partial``, add the end-of-archive blocks, hash, fsync, rename, mark done."""
    path = staging / layout.tars[i]
    tmp = path.with_name(path.name + ".partial")
    views = [reader.view(t) for t in layout.sources]
    sha, size, pending, batch = hashlib.sha256(), 0, 0, []
    try:
        with open(tmp, "wb") as fh:
            runs = zip(layout.source[i].tolist(), layout.start[i].tolist(), layout.end[i].tolist(), strict=True)
            for src, start, end in runs:
                batch.append(views[src][start:end])  # a view into the source map: copied once, by the join
                size, pending = size + end - start, pending + end - start
                if pending >= _CHUNK:
                    _flush(batch, sha, fh)
                    pending = 0
            batch.append(bytes(2 * _BLOCK + (-(size + 2 * _BLOCK)) % _RECORD))
            size += len(batch[-1])
            _flush(batch, sha, fh)
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        batch.clear()  # release the views even when a traceback keeps this frame alive
    os.replace(tmp, path)
    info = ShardInfo(name=path.name, count=layout.start.shape[1], bytes=size, sha256=sha.hexdigest())
    done = path.with_name(path.name + ".done")
    done_tmp = done.with_name(f".{done.name}.partial")
    done_tmp.write_text(json.dumps(asdict(info)))
    os.replace(done_tmp, done)
    return info


def _flush(batch: list, sha, fh) -> None:
    chunk = b"".join(batch)
    batch.clear()
    sha.update(chunk)
    fh.write(chunk)
