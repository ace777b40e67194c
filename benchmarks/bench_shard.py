"""Shard-set build throughput on the real Kaggle + ZooLake shards, beside ``cp`` of the same bytes, in one run.

Ingests ``kaggle/train.zip`` and ``lake_zooplankton/data.zip`` into ``--work`` (again if its manifests predate
the ``pixel_sha256`` column), warms the page cache and the imports with one untimed build, then alternates,
``--repeats`` times:

* ``build_shard_set`` of both datasets: reads the manifests, selects (duplicates by ``pixel_sha256``), checks the
  source tars (sizes, every sample's tar headers), copies each sample's tar blocks while hashing the output once
  for index.json (no fsync per tar: see docs/shardsets.md), writes the manifest and removed list;
* the same build followed by ``sync`` of everything it wrote (durable, to compare with ``cp`` + ``sync``);
* ``cp -r`` of the two source shard folders (the same bytes, no hashing), and ``cp -r`` + ``sync`` of the copies;
* sha256 of the source tars on one core (hashlib, as the build): the build must hash every byte it writes once.

Then, when this process may write ``/proc/sys/vm/drop_caches`` (root), the build and ``cp -r`` again, each from
a cold page cache: the regime of a set larger than memory, where both are bound by the disk.

Reports medians of wall time (MB/s over the bytes each writes, and the build's samples/s) and of CPU seconds
(this process and its children: on a machine shared with other jobs, the CPU cost of each step is steadier
than its wall time). Bar (issue 3): build MB/s >= 0.5x the ``cp`` MB/s.

    python benchmarks/bench_shard.py [--work /tmp/bench_shard] [--repeats 3] [--samples-per-shard 2000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
DROP_CACHES = Path("/proc/sys/vm/drop_caches")
RAWS = {"kaggle": REALDATA / "kaggle" / "train.zip", "zoolake": REALDATA / "lake_zooplankton" / "data.zip"}


def ingest_once(work: Path) -> None:
    """Ingest both datasets into ``work`` unless a current ingest is there."""
    from plankton_data.ingest import ingest

    for dataset, raw in RAWS.items():
        manifest = work / "manifests" / f"{dataset}.parquet"
        if not manifest.is_file() or "pixel_sha256" not in pq.read_schema(manifest).names:
            t0 = time.perf_counter()
            report = ingest(
                dataset,
                raw,
                shards_root=work / "shards",
                manifests_root=work / "manifests",
                workers=os.cpu_count() or 1,
            )
            print(f"ingested {dataset}: {report.samples} samples in {time.perf_counter() - t0:.1f} s")


def _cpu_s() -> float:
    """CPU seconds used so far by this process (all threads) and its finished children (``cp``, ``sync``)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn) -> tuple[float, float]:
    """Wall seconds and CPU seconds of ``fn()``."""
    c0, t0 = _cpu_s(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, _cpu_s() - c0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench_shard")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples-per-shard", type=int, default=2000)
    args = parser.parse_args()
    from plankton_data.shardset import build_shard_set

    ingest_once(args.work)
    shards, manifests = args.work / "shards", args.work / "manifests"
    sources = [shards / d for d in RAWS]
    tars = sorted(p for folder in sources for p in folder.glob("*.tar"))
    source_bytes = sum(p.stat().st_size for p in tars)
    copy = args.work / "cp_copy"
    reports = []

    def build() -> None:
        reports.append(
            build_shard_set(
                "bench",
                include=list(RAWS),
                shards_root=shards,
                manifests_root=manifests,
                samples_per_shard=args.samples_per_shard,
                all_splits=True,  # measure the copy of every ingested row (the Kaggle shards are train.zip)
            )
        )

    def build_sync() -> None:  # the build made durable, as cp + sync
        build()
        written = [*(shards / "bench").iterdir(), *manifests.glob("bench.*parquet")]
        subprocess.run(["sync", *map(str, written)], check=True)

    def cp() -> None:
        subprocess.run(["cp", "-r", *map(str, sources), str(copy)], check=True)

    def cp_sync() -> None:
        cp()
        subprocess.run(["sync", *map(str, copy.glob("*/*"))], check=True)

    def hash_once() -> None:  # the sha256 the build uses (OpenSSL through hashlib), one core
        for tar in tars:
            hashlib.sha256(tar.read_bytes())

    def clean(cold: bool = False) -> None:  # outside the timings: every copy goes to a fresh place
        shutil.rmtree(shards / "bench", ignore_errors=True)
        shutil.rmtree(copy, ignore_errors=True)
        copy.mkdir()
        subprocess.run(["sync"], check=True)  # no writeback of an earlier step runs into the next timing
        if cold:
            DROP_CACHES.write_text("3")

    build()  # warm-up: imports, page cache
    steps = {"build": build, "build_sync": build_sync, "cp": cp, "cp_sync": cp_sync, "sha256": hash_once}
    runs: dict[str, list[float]] = {label: [] for label in steps}
    cpu: dict[str, list[float]] = {label: [] for label in steps}
    cold_steps = {"build_cold": build, "cp_cold": cp} if os.access(DROP_CACHES, os.W_OK) else {}
    for label in cold_steps:
        runs[label], cpu[label] = [], []
    for _ in range(args.repeats):
        for label, step in steps.items():
            clean()
            wall, cpu_s = timed(step)
            runs[label].append(wall)
            cpu[label].append(cpu_s)
        for label, step in cold_steps.items():
            clean(cold=True)
            wall, cpu_s = timed(step)
            runs[label].append(wall)
            cpu[label].append(cpu_s)
    shutil.rmtree(copy, ignore_errors=True)
    report = reports[-1]
    med = {k: statistics.median(v) for k, v in runs.items()}
    result = {
        "samples": report.total,
        "bytes_written": report.bytes,
        "source_bytes": source_bytes,
        "build_s": med["build"],
        "build_mb_s": report.bytes / 1e6 / med["build"],
        "build_samples_s": report.total / med["build"],
        "build_sync_mb_s": report.bytes / 1e6 / med["build_sync"],
        "cp_s": med["cp"],
        "cp_mb_s": source_bytes / 1e6 / med["cp"],
        "cp_sync_mb_s": source_bytes / 1e6 / med["cp_sync"],
        "sha256_one_core_mb_s": source_bytes / 1e6 / med["sha256"],
        "cpu_s": {label: statistics.median(v) for label, v in cpu.items()},  # less sensitive to other jobs
        "cpus": os.cpu_count(),
        "load_avg_1min_after": os.getloadavg()[0],
        "runs": runs,
    }
    if cold_steps:
        result["build_cold_mb_s"] = report.bytes / 1e6 / med["build_cold"]
        result["cp_cold_mb_s"] = source_bytes / 1e6 / med["cp_cold"]
        result["ratio_cold"] = result["build_cold_mb_s"] / result["cp_cold_mb_s"]
    result["ratio_vs_cp"] = result["build_mb_s"] / result["cp_mb_s"]
    result["ratio_vs_cp_sync"] = result["build_mb_s"] / result["cp_sync_mb_s"]
    result["ratio_synced_vs_cp_sync"] = result["build_sync_mb_s"] / result["cp_sync_mb_s"]
    print(json.dumps(result, indent=2))
    print(
        f"build {result['build_mb_s']:.0f} MB/s ({result['build_samples_s']:,.0f} samples/s) vs cp -r"
        f" {result['cp_mb_s']:.0f} MB/s: {result['ratio_vs_cp']:.2f}x (bar 0.5x: "
        f"{'met' if result['ratio_vs_cp'] >= 0.5 else 'NOT met'}); vs cp -r + sync {result['cp_sync_mb_s']:.0f} MB/s:"
        f" {result['ratio_vs_cp_sync']:.2f}x; build + sync {result['build_sync_mb_s']:.0f} MB/s:"
        f" {result['ratio_synced_vs_cp_sync']:.2f}x cp -r + sync; sha256 alone:"
        f" {result['sha256_one_core_mb_s']:.0f} MB/s on one core"
    )
    if cold_steps:
        print(
            f"cold page cache: build {result['build_cold_mb_s']:.0f} MB/s vs cp -r {result['cp_cold_mb_s']:.0f} MB/s:"
            f" {result['ratio_cold']:.2f}x"
        )
    else:
        print(f"cold-cache runs skipped: {DROP_CACHES} is not writable (run as root to measure them)")


if __name__ == "__main__":
    main()
