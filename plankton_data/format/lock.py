"""One writer per output: an exclusive lock on ``.<name>.lock`` beside the output, refused at once if taken.

``ingest`` and ``shard`` hold :func:`output_lock` on ``shards/<name>`` for the whole run, so a second run of the
same name stops with one line instead of deleting the first run's staging folder; ``plankton_train`` takes
the same lock on a pretraining ``--out`` folder.

The lock is ``fcntl.flock`` on the lock file, so the kernel releases it when the holder exits in any way
(SIGKILL included): a lock file left behind by a killed run never blocks the next one. The holder writes its
pid into the file (for the message the refused run prints) and deletes the file when it is done; a process
that locked a file just deleted by its previous holder notices (the path no longer names the inode it holds)
and locks the new one. Where ``fcntl`` does not exist (Windows) there is no locking.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from plankton_data.errors import OutputLocked

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def lock_path(target: Path) -> Path:
    """The lock file of the output ``target`` (a folder or a file): ``.<name>.lock`` beside it."""
    return target.with_name(f".{target.name}.lock")


@contextmanager
def output_lock(target: Path | str, *, tool: str = "plankton-data") -> Iterator[Path]:
    """Hold the exclusive lock of ``target`` for the block; yields the lock file's path.

    Raises:
        OutputLocked: another process holds it (the message names it and its pid), at once: never waits.
        OSError: the lock file cannot be created (the parent is missing and cannot be made, or read-only).
    """
    target = Path(target)
    path = lock_path(target)
    if fcntl is None:  # pragma: no cover - Windows
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise OutputLocked(
                f"another {tool} run (pid {holder}) is writing {target}; wait for it to finish or stop it"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            held, named = os.fstat(fd), os.stat(path)
            current = (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)  # the previous holder deleted this file after we opened it: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        try:
            path.unlink(missing_ok=True)  # while still holding it, so nobody locks a file about to vanish
        finally:
            os.close(fd)
