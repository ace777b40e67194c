"""The loader's workers start while the caller is still setting up (bench_scale.py: first batch 2-3 s -> 0.2 s)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from plankton_train.data.stream import ShardStream, StreamLoader


def _children() -> list[str]:
    """Command lines of this process's children."""
    pid = os.getpid()
    out = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, IndexError, ValueError):
            continue
    return out


def test_making_a_loader_starts_its_forkserver_at_once(synthetic_shards):
    stream = ShardStream(synthetic_shards.folder, 8, out_size=32, epochs=1)
    loader = StreamLoader(stream, 2)
    deadline = time.monotonic() + 10
    while not any("forkserver" in c for c in _children()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any("forkserver" in c for c in _children()), "no forkserver started before the first iteration"
    assert sum(len(b["index"]) for b in loader) == synthetic_shards.total  # and the loader still works


def test_a_loader_without_workers_starts_no_process(synthetic_shards):
    before = len(_children())
    StreamLoader(ShardStream(synthetic_shards.folder, 8, out_size=32, epochs=1), 0)
    assert len(_children()) == before
