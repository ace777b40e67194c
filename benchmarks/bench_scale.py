"""The cost curve at paper scale: ingest, shard-set build, verify and loader at 10k, 100k and 443k samples.

The collection is synthesised from the real Kaggle NDSB images (``../shared/realdata/kaggle/train.zip``, 30,336
JPEGs): sample ``i`` is image ``i mod 30336`` under one of the 8 flips/rotations, with the bits of ``i`` stamped
into its top-left corner as 2x2 blocks (so every sample's pixels, and ``pixel_sha256``, are unique), re-encoded
as a grayscale JPEG (q95) and written in the Kaggle layout ``train/<class>/<i>.jpg`` into zips of 50,000
members (``raw/train-00.zip``, ...; the kaggle adapter reads a folder of them). Each size then runs, each stage
as a subprocess of the installed console scripts, as a user would:

1. ``plankton-data ingest kaggle --raw raw/ --size 64 -w 2`` (64 px stored, so 443k fits this machine);
2. ``plankton-data shard --name scale --include kaggle --all-splits --samples-per-shard 1000`` (the train
   split is labelled; 1,000 per tar divides every size, so the set holds all N);
3. ``plankton-data verify shards/scale``;
4. the loader: ``plankton_train.data.stream`` over ``shards/scale`` with 2 workers, batch 256 of 56 px crops
   (no resize: 56 * 256 / 224 = 64 = the stored side), in a child process that reports the time to build the
   stream (sample table from the manifest's offsets), to its first batch in that process (table + one batch:
   what grows with N), then to the first batch from 2 workers (their start-up included: a fresh forkserver
   importing torch, a fixed cost) and one whole epoch.

For each stage: wall time, wall time per 1,000 samples, and the peak RSS of every process of the stage (the
command itself and each worker it starts). Peaks are the kernel's ``VmHWM`` of each process, polled from
``/proc`` every 0.1 s while the stage runs, and checked against ``getrusage(RUSAGE_CHILDREN)`` of a wrapper
process (the largest process that ran, including any that lived less than a poll). The load average is
recorded beside each stage: the machine is shared.

    nice -n 5 python benchmarks/bench_scale.py [--sizes 10000,100000,443000] [--quick] [--work /tmp/bench_scale]

Writes ``<work>/results.json`` and prints a Markdown table per stage plus the linear fits
``time = a + b N`` and ``peak RSS = c + d N`` (``d``: bytes per sample, the per-sample index cost).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
KAGGLE = REALDATA / "kaggle" / "train.zip"
BIN = Path(sys.executable).parent
PER_ZIP = 50_000
STAGES = ("ingest", "shard", "verify", "loader")


# ---------------------------------------------------------------- the synthetic collection


def load_originals(zip_path: Path) -> list[tuple[str, np.ndarray]]:
    """``(class, gray image)`` of every JPEG of the Kaggle train zip, decoded once."""
    import cv2

    out = []
    with zipfile.ZipFile(zip_path) as zf:
        for name in sorted(zf.namelist()):
            parts = name.split("/")
            if len(parts) != 3 or parts[0] != "train" or not name.endswith(".jpg"):
                continue
            img = cv2.imdecode(np.frombuffer(zf.read(name), np.uint8), cv2.IMREAD_GRAYSCALE)
            if img is not None and min(img.shape) >= 8:
                out.append((parts[1], img))
    return out


def variant(img: np.ndarray, i: int, m: int) -> np.ndarray:
    """Sample ``i``'s pixels: flip/rotation ``(i // m) mod 8`` of its original, bits of ``i`` in the corner."""
    d = (i // m) % 8
    out = np.rot90(img, d % 4)
    if d >= 4:
        out = out[:, ::-1]
    out = np.ascontiguousarray(out)
    bits = min(20, (out.shape[1] // 2))
    for b in range(bits):  # 2x2 blocks, dark for a 1 bit and light for a 0 (the object is rarely in the corner)
        out[0:2, 2 * b : 2 * b + 2] = 30 if (i >> b) & 1 else 225
    return out


def synthesise(n: int, raw: Path, originals: list[tuple[str, np.ndarray]]) -> float:
    """Write ``n`` samples into ``raw/train-XX.zip`` (reused when already complete); returns seconds taken."""
    import cv2

    marker = raw / f".complete-{n}"
    if marker.is_file():
        return 0.0
    shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir(parents=True)
    t0 = time.perf_counter()
    m = len(originals)
    for z in range(-(-n // PER_ZIP)):
        tmp = raw / f"train-{z:02d}.zip.partial"
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
            for i in range(z * PER_ZIP, min(n, (z + 1) * PER_ZIP)):
                cls, img = originals[i % m]
                ok, buf = cv2.imencode(".jpg", variant(img, i, m), [cv2.IMWRITE_JPEG_QUALITY, 95])
                zf.writestr(f"train/{cls}/{i:06d}.jpg", buf.tobytes())
        tmp.rename(raw / f"train-{z:02d}.zip")
    marker.write_text("")
    return time.perf_counter() - t0


# ---------------------------------------------------------------- measuring a stage


def _tree(pid: int) -> list[int]:
    """``pid`` and every process below it, from one pass over /proc (children of any thread count)."""
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += kids.get(p, [])
    return found


def _status(pid: int) -> tuple[str, int, int] | None:
    """``(process name + first arguments, VmHWM, RssAnon)`` of a live process, in bytes.

    ``VmHWM`` is the kernel's peak of the whole resident set, which includes the pages of files the process maps
    (tars read through ``mmap``: page cache, reclaimable); ``RssAnon`` is its own heap now (polled for a peak).
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    fields = {line.split(":")[0]: line.split()[1:] for line in status.splitlines()}
    hwm, anon = (int(fields.get(k, ["0"])[0]) * 1024 for k in ("VmHWM", "RssAnon"))
    label = " ".join(Path(c.decode(errors="replace")).name for c in cmd[:3] if c)[:60]
    return label, hwm, anon


_WRAPPER = """
import json, resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
json.dump({"rc": code, "maxrss_children": ru.ru_maxrss * 1024, "cpu_s": ru.ru_utime + ru.ru_stime},
          open(sys.argv[1], "w"))
sys.exit(code)
"""


def measure(cmd: list[str], cwd: Path, log: Path, interval: float = 0.1) -> dict:
    """Run ``cmd`` (under a tiny wrapper) and return wall time and the peak RSS of each of its processes."""
    out_json = log.with_suffix(".rusage.json")
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-c", _WRAPPER, str(out_json), *cmd], cwd=cwd, stdout=fh, stderr=fh)
    peaks: dict[int, dict] = {}  # pid -> what, peak VmHWM, peak RssAnon
    top: list[int] = []  # the command itself: the wrapper's one child
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            tree = _tree(proc.pid)
            if len(tree) > 1 and not top:
                top.append(tree[1])
            for pid in tree[1:]:  # not the wrapper itself
                if (st := _status(pid)) is not None:
                    old = peaks.setdefault(pid, {"what": st[0], "peak_rss": 0, "peak_anon": 0})
                    old.update(what=st[0], peak_rss=max(old["peak_rss"], st[1]), peak_anon=max(old["peak_anon"], st[2]))
            done.wait(interval)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    rc = proc.wait()
    wall = time.perf_counter() - t0
    done.set()
    poller.join()
    if rc != 0:
        raise SystemExit(f"stage failed ({rc}): {' '.join(cmd)}\n{log.read_text()[-3000:]}")
    rusage = json.loads(out_json.read_text())
    parent = peaks.get(top[0], {"peak_rss": 0, "peak_anon": 0}) if top else {"peak_rss": 0, "peak_anon": 0}
    others = [v for pid, v in peaks.items() if not top or pid != top[0]]
    return {
        "cmd": cmd,
        "wall_s": wall,
        "load_before": load0,
        "load_after": os.getloadavg()[0],
        "parent_peak_rss": parent["peak_rss"],
        "parent_peak_anon": parent["peak_anon"],
        "worker_peak_rss": max((v["peak_rss"] for v in others), default=0),
        "worker_peak_anon": max((v["peak_anon"] for v in others), default=0),
        "processes": [{"pid": pid, **v} for pid, v in sorted(peaks.items())],
        "max_rss_any": rusage["maxrss_children"],
        "cpu_s": rusage["cpu_s"],  # user + system seconds of every process of the stage: steadier than wall time
    }


# ---------------------------------------------------------------- the loader child

_LOADER = """
import json, sys, time
t_start = time.perf_counter()
from plankton_train.data.stream import ShardStream, StreamLoader
t_import = time.perf_counter()
stream = ShardStream(sys.argv[1], 256, out_size=56, seed=0, epochs=1)
t_stream = time.perf_counter()
next(iter(stream))  # in this process: the sample table plus one batch, no worker start-up
t_inproc = time.perf_counter()
loader = StreamLoader(stream, int(sys.argv[2]))
setup = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
time.sleep(setup)  # a stand-in for what a training run does between making the loader and its first step
t_iter = time.perf_counter()
it = iter(loader)
first = next(it)
t_first = time.perf_counter()
if setup:
    json.dump({"setup_s": setup, "first_batch_s": t_first - t_iter}, open(sys.argv[3], "w"))
    sys.exit()
n = len(first["index"])
for batch in it:
    n += len(batch["index"])
t_end = time.perf_counter()
json.dump({"import_s": t_import - t_start, "stream_s": t_stream - t_import, "inproc_first_s": t_inproc - t_import,
           "first_batch_s": t_first - t_inproc, "epoch_s": t_end - t_inproc, "samples": n,
           "table": stream.table.source}, open(sys.argv[3], "w"))
"""


# ---------------------------------------------------------------- one size


def _mib(b: float) -> str:
    return f"{b / 2**20:.0f}"


def _line(n: int, stage: str, rec: dict) -> str:
    return (
        f"  {n:>7,}  {stage:<7} {rec['wall_s']:8.1f} s  {1000 * rec['wall_s'] / n:7.3f} s/1k  "
        f"cpu {1000 * rec['cpu_s'] / n:7.3f} s/1k  "
        f"parent {_mib(rec['parent_peak_rss'])} MiB (heap {_mib(rec['parent_peak_anon'])})  "
        f"workers {_mib(rec['worker_peak_rss'])} MiB (heap {_mib(rec['worker_peak_anon'])})  "
        f"load {rec['load_before']:.1f}"
    )


def _digests(shards: Path, manifests: Path, name: str) -> dict[str, str]:
    import hashlib

    files = sorted((shards / name).iterdir()) + [manifests / f"{name}.parquet", manifests / f"{name}.rejects.parquet"]
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def run_size(n: int, work: Path, originals: list, workers: int, parts: int) -> dict:
    base = work / f"n{n}"
    raw = base / "raw"
    synth_s = synthesise(n, raw, originals)
    for folder in ("shards", "manifests", "split"):
        shutil.rmtree(base / folder, ignore_errors=True)
    pd = str(BIN / "plankton-data")
    logs = base / "logs"
    logs.mkdir(exist_ok=True)
    result: dict = {"n": n, "synth_s": synth_s, "stages": {}}
    ingest = [pd, "ingest", "kaggle", "--raw", str(raw), "--size", "64"]
    steps = {
        "ingest": [*ingest, "-w", str(workers)],
        "shard": [pd, "shard", "--name", "scale", "--include", "kaggle", "--all-splits", "--samples-per-shard", "1000"],
        "verify": [pd, "verify", "shards/scale"],
        "loader": [sys.executable, "-c", _LOADER, "shards/scale", str(workers), str(logs / "loader.json")],
    }
    after_setup = [sys.executable, "-c", _LOADER, "shards/scale", str(workers), str(logs / "setup.json"), "3"]
    for stage, cmd in steps.items():
        print(f"  {n:>7,}  {stage} ...", flush=True)
        rec = measure(cmd, base, logs / f"{stage}.log")
        if stage == "loader":
            rec["loader"] = json.loads((logs / "loader.json").read_text())
            measure(after_setup, base, logs / "setup.log")
            rec["loader"]["after_setup"] = json.loads((logs / "setup.json").read_text())
            if rec["loader"]["samples"] != n:
                raise SystemExit(f"the loader's epoch had {rec['loader']['samples']} samples, not {n}")
        result["stages"][stage] = rec
        print(_line(n, stage, rec), flush=True)
    if parts > 1:  # the same ingest as N plain processes of one worker each, then merge: must be the same bytes
        split = ["--shards", "split/shards", "--manifests", "split/manifests", "-w", "1"]
        script = " & ".join(" ".join([*ingest, *split, "--part", f"{i}/{parts}"]) for i in range(parts)) + " & wait"
        print(f"  {n:>7,}  {parts} parts ...", flush=True)
        rec = measure(["bash", "-c", script], base, logs / "parts.log")
        result["stages"]["parts"] = rec
        print(_line(n, "parts", rec), flush=True)
        rec = measure(
            [pd, "merge", "kaggle", "--shards", "split/shards", "--manifests", "split/manifests"],
            base,
            logs / "merge.log",
        )
        rec["identical"] = _digests(base / "split/shards", base / "split/manifests", "kaggle") == _digests(
            base / "shards", base / "manifests", "kaggle"
        )
        result["stages"]["merge"] = rec
        print(_line(n, "merge", rec) + f"  byte-identical to one ingest: {rec['identical']}", flush=True)
        if not rec["identical"]:
            raise SystemExit("the merged parts differ from the single ingest")
    result["unique_pixels"] = _unique_pixels(base / "manifests" / "kaggle.parquet", n)
    result["bytes"] = {
        "raw": sum(f.stat().st_size for f in raw.glob("*.zip")),
        "dataset": sum(f.stat().st_size for f in (base / "shards" / "kaggle").glob("*.tar")),
        "manifest": (base / "manifests" / "kaggle.parquet").stat().st_size,
    }
    shutil.rmtree(base / "split", ignore_errors=True)
    return result


def _unique_pixels(manifest: Path, n: int) -> int:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(manifest, columns=["pixel_sha256"])
    if table.num_rows != n:
        raise SystemExit(f"{manifest}: {table.num_rows} samples, expected {n} (rejects? see the ingest log)")
    return pc.count_distinct(table["pixel_sha256"]).as_py()


# ---------------------------------------------------------------- report


def _fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return ys[0] if ys else 0.0, 0.0
    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(intercept), float(slope)


def report(results: list[dict]) -> str:
    lines = [
        "| N | stage | wall s | wall s per 1k | CPU s per 1k | parent peak RSS (heap) MiB | largest worker (heap) MiB"
        " | processes | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for stage, s in r["stages"].items():
            extra = " (identical)" if s.get("identical") else ""
            lines.append(
                f"| {r['n']:,} | {stage}{extra} | {s['wall_s']:.1f} | {1000 * s['wall_s'] / r['n']:.3f} | "
                f"{1000 * s['cpu_s'] / r['n']:.3f} | "
                f"{_mib(s['parent_peak_rss'])} ({_mib(s['parent_peak_anon'])}) | "
                f"{_mib(s['worker_peak_rss'])} ({_mib(s['worker_peak_anon'])}) | {len(s['processes'])} | "
                f"{s['load_before']:.1f}-{s['load_after']:.1f} |"
            )
    lines += [
        "",
        "| N | stream built s | first batch in-process s | first batch, 2 workers s | ... 3 s after the loader was"
        " made s | epoch s | import s | table |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lo = r["stages"]["loader"]["loader"]
        lines.append(
            f"| {r['n']:,} | {lo['stream_s']:.2f} | {lo['inproc_first_s']:.2f} | {lo['first_batch_s']:.2f} | "
            f"{lo['after_setup']['first_batch_s']:.2f} | "
            f"{lo['epoch_s']:.1f} | {lo['import_s']:.1f} | {lo['table']} |"
        )
    ns = [r["n"] for r in results]
    lines += [
        "",
        "| stage | wall = a + b N: a s, b s per 1k | CPU = a + b N: a s, b s per 1k"
        " | parent heap = c + d N: c MiB, d bytes/sample |",
        "|---|---|---|---|",
    ]
    for stage in STAGES:
        a, b = _fit(ns, [r["stages"][stage]["wall_s"] for r in results])
        ca, cb = _fit(ns, [r["stages"][stage]["cpu_s"] for r in results])
        c, d = _fit(ns, [r["stages"][stage]["parent_peak_anon"] for r in results])
        lines.append(f"| {stage} | {a:.1f}, {1000 * b:.3f} | {ca:.1f}, {1000 * cb:.3f} | {c / 2**20:.0f}, {d:.0f} |")
    lines += [
        "",
        "unique pixel_sha256: " + ", ".join(f"{r['unique_pixels']:,} of {r['n']:,}" for r in results),
        "synthesis s (not a stage): " + ", ".join(f"{r['synth_s']:.0f}" for r in results),
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000,443000", help="comma-separated sample counts")
    ap.add_argument("--quick", action="store_true", help="sizes 1000,5000 (a smoke run of the whole curve)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_scale"))
    ap.add_argument("--workers", type=int, default=2, help="ingest and loader worker processes")
    ap.add_argument("--parts", type=int, default=2, help="also ingest as this many --part processes, then merge")
    ap.add_argument("--parts-up-to", type=int, default=100_000, help="... at sizes up to this")
    ap.add_argument("--raw", type=Path, default=KAGGLE, help="the Kaggle train.zip the images come from")
    args = ap.parse_args()
    if not args.raw.is_file():
        print(f"skipped: {args.raw} not found (the real data lives in ../shared/realdata)")
        return
    sizes = [1000, 5000] if args.quick else [int(s) for s in args.sizes.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    originals = load_originals(args.raw)
    print(f"{len(originals):,} originals decoded in {time.perf_counter() - t0:.0f} s; sizes {sizes}", flush=True)
    results = []
    for n in sizes:
        parts = args.parts if n <= args.parts_up_to else 1
        results.append(run_size(n, args.work, originals, args.workers, parts))
        (args.work / "results.json").write_text(json.dumps(results, indent=1))
    print(report(results))


if __name__ == "__main__":
    main()
