"""Helpers shared by the tests and ``benchmarks/fault_matrix.py`` (plain functions; no pytest import)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import cv2
import numpy as np


def big_kaggle_zip(path: Path, n: int) -> Path:
    """A Kaggle-layout train.zip with ``n`` small generated JPEGs: an ingest that runs long enough to be killed.

    Deterministic (seed 0); an existing file at ``path`` is reused.
    """
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(n):
            img = np.full((int(rng.integers(40, 120)), int(rng.integers(40, 120))), 250, np.uint8)
            cv2.circle(img, (20, 20), 10, int(rng.integers(0, 200)), -1)
            zf.writestr(f"train/class_{i % 5}/{i}.jpg", cv2.imencode(".jpg", img)[1].tobytes())
    return path


def proc_stat(pid: int) -> tuple[str, int] | None:
    """``(state, ppid)`` of a live process from /proc, or ``None`` once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children, their children, ...), from /proc."""
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and (st := proc_stat(int(entry.name))) and st[1] == parent:
                found.add(int(entry.name))
                todo.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie has exited; only its exit status waits to be collected)."""
    st = proc_stat(pid)
    return st is not None and st[0] != "Z"
