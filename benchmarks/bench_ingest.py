"""Ingest throughput on the real Kaggle NDSB train.zip against the single-core floor, in one run.

The floor is the irreducible per-image work in one tight loop on one core: read the member's bytes from
the zip, decode, convert to gray, pad to square with matched noise, resize to 256, encode JPEG q95 (no
tar writing, no manifest, no process pool). Then the real ``ingest()`` runs with 1 and 2 workers (each in
a fresh subprocess, so peak RSS is per run), plus a 2-worker run on a quarter of the data to show that
peak memory does not grow with the dataset. Bar (issue 2): 2 workers >= 1.2x the floor.

    python benchmarks/bench_ingest.py [--raw ../shared/realdata/kaggle/train.zip] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

DEFAULT_RAW = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "kaggle" / "train.zip"


def floor(raw: Path) -> float:
    """Images/s of read+decode+gray+pad+resize+encode in one loop, pinned to one core, one OpenCV thread."""
    import os

    import cv2
    import numpy as np

    from plankton_data.format.keys import sample_key
    from plankton_data.ingest import ops

    cv2.setNumThreads(1)
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    with zipfile.ZipFile(raw) as zf:
        names = [n for n in zf.namelist() if n.endswith(".jpg")]
        t0 = time.perf_counter()
        for name in names:
            img = cv2.imdecode(np.frombuffer(zf.read(name), np.uint8), cv2.IMREAD_UNCHANGED)
            gray = ops.to_gray(img)
            rng = np.random.default_rng(abs(hash(sample_key("kaggle", name))))
            out = ops.resize_square(ops.pad_to_square(gray, rng), 256)
            cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, 95])
        return len(names) / (time.perf_counter() - t0)


def child(raw: str, workers: int, out: str) -> None:
    """Run one ingest and print images/s and peak RSS (parent and worker processes) as JSON."""
    from plankton_data.ingest import ingest

    t0 = time.perf_counter()
    report = ingest(
        "kaggle", raw, shards_root=Path(out) / "shards", manifests_root=Path(out) / "manifests", workers=workers
    )
    dt = time.perf_counter() - t0
    rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rss_kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "samples": report.samples,
                "seconds": dt,
                "img_s": report.samples / dt,
                "peak_rss_main_mb": rss_self,
                "peak_rss_worker_mb": rss_kids,
            }
        )
    )


def run_floor(raw: Path) -> float:
    """The floor in a fresh process (its core pinning must not leak into the ingest runs)."""
    res = subprocess.run([sys.executable, __file__, "--floor", str(raw)], check=True, capture_output=True, text=True)
    return float(res.stdout.strip().splitlines()[-1])


def run_child(raw: Path, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        res = subprocess.run(
            [sys.executable, __file__, "--child", str(raw), str(workers), tmp],
            check=True,
            capture_output=True,
            text=True,
        )
        return json.loads(res.stdout.strip().splitlines()[-1])


def quarter_zip(raw: Path, dest: Path) -> Path:
    """The first quarter of the archive's members, copied raw (same bytes, same layout)."""
    with zipfile.ZipFile(raw) as src, zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as dst:
        infos = src.infolist()
        for info in infos[: len(infos) // 4]:
            dst.writestr(info, src.read(info))
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raw", type=Path, default=DEFAULT_RAW)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--floor", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.floor:
        print(floor(args.floor))
        return
    if args.child:
        child(args.child[0], int(args.child[1]), args.child[2])
        return
    if not args.raw.is_file():
        print(f"skipped: {args.raw} not found (real Kaggle train.zip needed)")
        return
    floors = [run_floor(args.raw) for _ in range(args.repeats)]
    w1 = [run_child(args.raw, 1) for _ in range(args.repeats)]
    w2 = [run_child(args.raw, 2) for _ in range(args.repeats)]
    with tempfile.TemporaryDirectory() as tmp:
        q = run_child(quarter_zip(args.raw, Path(tmp) / "quarter.zip"), 2)
    f, r1, r2 = (
        statistics.median(floors),
        statistics.median(r["img_s"] for r in w1),
        statistics.median(r["img_s"] for r in w2),
    )
    print(f"images: {w2[0]['samples']:,} (Kaggle train.zip); medians of {args.repeats} runs")
    print(f"single-core floor (read+decode+pad+resize+encode): {f:8.0f} img/s")
    print(f"ingest --workers 1:                                {r1:8.0f} img/s  ({r1 / f:.2f}x floor)")
    print(f"ingest --workers 2:                                {r2:8.0f} img/s  ({r2 / f:.2f}x floor; bar >= 1.2x)")
    print(
        f"peak RSS, 2 workers, full set:    main {w2[0]['peak_rss_main_mb']:.0f} MB,"
        f" largest worker {w2[0]['peak_rss_worker_mb']:.0f} MB"
    )
    print(
        f"peak RSS, 2 workers, quarter set: main {q['peak_rss_main_mb']:.0f} MB,"
        f" largest worker {q['peak_rss_worker_mb']:.0f} MB ({q['samples']:,} images)"
    )


if __name__ == "__main__":
    main()
