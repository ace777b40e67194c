"""Writes that are either complete or absent: a temp file beside the target, fsync, then one rename.

Every file the toolkit commits (tars, manifests, ``index.json``, checkpoints) goes through here, so "a killed
process never leaves half a file under the final name" is true in one place. Temp files are named
``.<name>.partial`` (hidden, so a glob for ``*.tar`` or ``*.parquet`` never picks one up); tars being streamed
keep ``<name>.partial`` (:class:`~plankton_data.format.tar.TarShardWriter`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def partial_path(path: Path) -> Path:
    """The temp name a file is written under before it is renamed to ``path``."""
    return path.with_name(f".{path.name}.partial")


def fsync_file(path: Path) -> None:
    """Flush ``path``'s data to the device (so a rename after it cannot expose an empty file after a crash)."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def commit(tmp: Path, path: Path, *, fsync: bool = True) -> Path:
    """Rename the finished ``tmp`` to ``path`` (after an fsync unless ``fsync=False``); returns ``path``."""
    if fsync:
        fsync_file(tmp)
    os.replace(tmp, path)
    return path


@contextmanager
def atomic_path(path: Path, *, fsync: bool = True, rename: bool = True) -> Iterator[Path]:
    """Yield the temp path to write ``path`` under; commit it when the block ends, delete it if it raises.

    ``rename=False`` stops after the fsync and leaves the finished temp file for the caller to rename later
    (``commit(partial_path(path), path, fsync=False)``): how several files are committed together, written
    first and renamed only once all of them are complete.

    Example::

        with atomic_path(manifest) as tmp:
            pq.write_table(table, tmp)
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        yield tmp
        if rename:
            commit(tmp, path, fsync=fsync)
        elif fsync:
            fsync_file(tmp)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        name_target(exc, path)
        raise


def name_target(exc: BaseException, path: Path) -> None:
    """Give an ``OSError`` raised by a plain write (disk full: no file name) the path it was writing, so the
    CLI's one-line message says where (``No space left on device: manifests/kaggle.parquet``)."""
    if isinstance(exc, OSError) and exc.filename is None:
        exc.filename = str(path)


def write_bytes(path: Path, data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return path
