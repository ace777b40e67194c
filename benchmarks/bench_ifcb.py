"""Ingest of a large raw IFCB collection (``ingest ifcb``) against the single-core floor, in one run.

The collection is the three real bins in ``../shared/realdata/ifcb`` (IFCB134 and IFCB114) replicated under
new bin ids until it holds ``--rois`` ROIs (default 100,000), in dated folders as instruments write them. The
copies are symlinks to the real files (the reader follows file symlinks), so the collection costs no disk and
its bytes are in the page cache after the first pass: the figures are CPU cost, not disk speed.

The floor is the irreducible per-ROI work in one tight loop on one core: read each ``.roi`` once, cut every
ROI at its start byte, pad to square with matched noise, resize to 256, encode JPEG q95 (no tar, no manifest,
no process pool). Then ``plankton-data ingest ifcb`` runs with 1 and 2 workers, each in a fresh subprocess.

    python benchmarks/bench_ifcb.py [--rois 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "ifcb"


def real_bins() -> list[Path]:
    """The ``.hdr`` of every real bin (the other two files lie beside it)."""
    return sorted(REAL.rglob("*.hdr"))


def build_collection(dest: Path, rois: int) -> tuple[int, int]:
    """Symlink copies of the real bins under fresh bin ids until ``rois`` ROIs; returns ``(bins, rois)``."""
    from plankton_data.ingest import ifcb

    per_bin = []
    for hdr in real_bins():
        header = ifcb.parse_header(hdr.read_text(errors="replace"))
        scan = ifcb.scan_adc(hdr.with_suffix(".adc").read_text(errors="replace"), ifcb.adc_columns(header))
        per_bin.append((hdr, len(scan.rois)))
    when, made, bins = datetime(2024, 1, 1), 0, 0
    while made < rois:
        for hdr, n in per_bin:
            instrument = hdr.stem.rpartition("_")[2]
            stem = f"D{when:%Y%m%dT%H%M%S}_{instrument}"
            folder = dest / f"{when:%Y}" / f"D{when:%Y%m%d}"
            folder.mkdir(parents=True, exist_ok=True)
            for ext in ("hdr", "adc", "roi"):
                (folder / f"{stem}.{ext}").symlink_to(hdr.with_suffix(f".{ext}"))
            made, bins, when = made + n, bins + 1, when + timedelta(minutes=20)
            if made >= rois:
                break
    return bins, made


def floor(collection: Path) -> float:
    """ROIs/s of read .roi + cut + gray + pad + resize + encode in one loop, one core, one OpenCV thread."""
    import cv2
    import numpy as np

    from plankton_data.format.keys import sample_key
    from plankton_data.ingest import ifcb, ops

    cv2.setNumThreads(1)
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    n, t0 = 0, time.perf_counter()
    for hdr in sorted(collection.rglob("*.hdr")):
        header = ifcb.parse_header(hdr.read_text(errors="replace"))
        scan = ifcb.scan_adc(hdr.with_suffix(".adc").read_text(errors="replace"), ifcb.adc_columns(header))
        data = hdr.with_suffix(".roi").read_bytes()
        for r in scan.rois:
            gray = ifcb.roi_pixels(data, r)
            rng = np.random.default_rng(abs(hash(sample_key("bench", ifcb.roi_name(hdr.stem, r.number)))))
            out = ops.resize_square(ops.pad_to_square(gray, rng), 256)
            cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, 95])
            n += 1
    return n / (time.perf_counter() - t0)


def child(collection: str, workers: int, out: str) -> None:
    """One ``ingest ifcb`` run; prints ROIs/s and peak RSS (parent, largest worker) as JSON."""
    from plankton_data.ingest import ingest
    from plankton_data.ingest.adapters import make_source

    t0 = time.perf_counter()
    report = ingest(
        make_source("ifcb", "bench_ifcb"),
        collection,
        shards_root=Path(out) / "shards",
        manifests_root=Path(out) / "manifests",
        workers=workers,
    )
    dt = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "samples": report.samples,
                "skipped": report.skipped,
                "rejects": report.rejects,
                "seconds": dt,
                "img_s": report.samples / dt,
                "peak_rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "peak_rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            }
        )
    )


def _sub(*args: str) -> str:
    res = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return res.stdout.strip().splitlines()[-1]


def run_child(collection: Path, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(_sub("--child", str(collection), str(workers), tmp))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rois", type=int, default=100_000)
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
    if not real_bins():
        print(f"skipped: no raw IFCB bins under {REAL}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        collection = Path(tmp) / "ifcb"
        bins, rois = build_collection(collection, args.rois)
        floors = [float(_sub("--floor", str(collection))) for _ in range(args.repeats)]
        w1 = [run_child(collection, 1) for _ in range(args.repeats)]
        w2 = [run_child(collection, 2) for _ in range(args.repeats)]
    f = statistics.median(floors)
    r1, r2 = (statistics.median(r["img_s"] for r in runs) for runs in (w1, w2))
    print(
        f"collection: {bins:,} bins, {rois:,} ROIs ({w2[0]['skipped']:,} skipped entries, {w2[0]['rejects']} rejects)"
    )
    print(f"medians of {args.repeats} runs, load average before: {os.getloadavg()[0]:.1f}")
    print(f"single-core floor (cut+pad+resize+encode): {f:8.0f} ROI/s")
    print(f"ingest ifcb --workers 1:                   {r1:8.0f} ROI/s  ({r1 / f:.2f}x floor)")
    print(f"ingest ifcb --workers 2:                   {r2:8.0f} ROI/s  ({r2 / f:.2f}x floor)")
    main_mb, worker_mb = w2[0]["peak_rss_main_mb"], w2[0]["peak_rss_worker_mb"]
    print(f"peak RSS, 2 workers: main {main_mb:.0f} MB, largest worker {worker_mb:.0f} MB")


if __name__ == "__main__":
    main()
