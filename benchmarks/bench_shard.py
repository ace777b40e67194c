"""Shard-set build throughput on the real Kaggle + ZooLake shards, beside ``cp`` of the same bytes, in one run.

Ingests ``kaggle/train.zip`` and ``lake_zooplankton/data.zip`` (or reuses ``--work`` if it already holds
them), warms the page cache and the imports with one untimed build, then alternates, ``--repeats`` times:

* ``build_shard_set`` of both datasets (reads, checks the sha256 of every source tar, copies each sample's
  tar blocks, hashes and fsyncs every output tar, writes the manifest);
* ``cp -r`` of the two source shard folders (the same bytes, no hashing, no fsync), and ``cp`` + ``sync`` of the
  copied files (durable, as the build's fsynced tars);
* sha256 of the source tars on one core (hashlib, as the build): a build hashes every byte twice (source check,
  output digest), so this rate bounds it.

Reports medians. Bar (issue 3): build MB/s >= 0.5x the ``cp`` MB/s.

    python benchmarks/bench_shard.py [--work /tmp/bench_shard] [--repeats 3] [--samples-per-shard 2000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
RAWS = {"kaggle": REALDATA / "kaggle" / "train.zip", "zoolake": REALDATA / "lake_zooplankton" / "data.zip"}


def ingest_once(work: Path) -> None:
    from plankton_data.ingest import ingest

    for dataset, raw in RAWS.items():
        if not (work / "manifests" / f"{dataset}.parquet").is_file():
            t0 = time.perf_counter()
            report = ingest(dataset, raw, work / "shards", work / "manifests", workers=2)
            print(f"ingested {dataset}: {report.samples} samples in {time.perf_counter() - t0:.1f} s")


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


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

    def build():
        return build_shard_set(
            "bench",
            include=list(RAWS),
            shards_root=shards,
            manifests_root=manifests,
            samples_per_shard=args.samples_per_shard,
        )

    def cp() -> None:
        subprocess.run(["cp", "-r", *map(str, sources), str(copy)], check=True)

    def cp_sync() -> None:  # cp made durable, as the build's tars are (it fsyncs each)
        cp()
        subprocess.run(["sync", *map(str, copy.glob("*/*.tar"))], check=True)

    def hash_once() -> None:  # the sha256 the build uses (OpenSSL through hashlib), one core
        for tar in tars:
            hashlib.sha256(tar.read_bytes())

    def clean() -> None:  # outside the timings: both measure writing into a fresh place
        shutil.rmtree(shards / "bench", ignore_errors=True)
        shutil.rmtree(copy, ignore_errors=True)
        copy.mkdir()

    report = build()  # warm-up: imports, page cache
    runs: dict[str, list[float]] = {"build": [], "cp": [], "cp_sync": [], "sha256": []}
    for _ in range(args.repeats):
        clean()
        t0 = time.perf_counter()
        report = build()
        runs["build"].append(time.perf_counter() - t0)
        runs["cp"].append(timed(cp))
        clean()
        runs["cp_sync"].append(timed(cp_sync))
        runs["sha256"].append(timed(hash_once))
    shutil.rmtree(copy, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    result = {
        "samples": report.total,
        "bytes_written": report.bytes,
        "source_bytes": source_bytes,
        "build_s": med["build"],
        "build_mb_s": report.bytes / 1e6 / med["build"],
        "build_samples_s": report.total / med["build"],
        "cp_s": med["cp"],
        "cp_mb_s": source_bytes / 1e6 / med["cp"],
        "cp_sync_mb_s": source_bytes / 1e6 / med["cp_sync"],
        "sha256_one_core_mb_s": source_bytes / 1e6 / med["sha256"],
        "runs": runs,
    }
    result["ratio_vs_cp"] = result["build_mb_s"] / result["cp_mb_s"]
    result["ratio_vs_cp_sync"] = result["build_mb_s"] / result["cp_sync_mb_s"]
    print(json.dumps(result, indent=2))
    print(
        f"build {result['build_mb_s']:.0f} MB/s ({result['build_samples_s']:,.0f} samples/s) vs cp"
        f" {result['cp_mb_s']:.0f} MB/s: {result['ratio_vs_cp']:.2f}x (bar 0.5x: "
        f"{'met' if result['ratio_vs_cp'] >= 0.5 else 'NOT met'}); {result['ratio_vs_cp_sync']:.2f}x cp+sync"
        f" ({result['cp_sync_mb_s']:.0f} MB/s); sha256 alone: {result['sha256_one_core_mb_s']:.0f} MB/s on one core"
    )


if __name__ == "__main__":
    main()
