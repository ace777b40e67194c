"""Fault matrix: replay the cases of the reliability review (docs/reliability.md) against the installed console
script, and count per area how many were tried, handled cleanly, and lost data.

    python benchmarks/fault_matrix.py                  # every case, a few minutes
    python benchmarks/fault_matrix.py --areas A,H      # some areas
    python benchmarks/fault_matrix.py --cases C4,H5    # some cases
    python benchmarks/fault_matrix.py --list           # what is registered
    python benchmarks/fault_matrix.py --json out.json  # the results, per sub-case

Each case is one row of the review's case table (``A1`` ... ``H6``) and runs one or more sub-cases, real
commands against real files and processes: a file where a folder goes, a tmpfs that is full or read-only
(mounted here when the user may: root with CAP_SYS_ADMIN; otherwise those sub-cases are reported as not run),
the unprivileged user ``nobody`` on a folder only root may write, real SIGKILLs and SIGINTs, a second real
process, hostile archives.

*Handled cleanly*: what the review calls OK: a one-line ``error:`` message and the documented exit status
(``2`` for usage errors), or the correct output; never a traceback, never a leftover ``.partial`` under a final
name. *Data lost*: previously committed data changed or gone, a folder left inconsistent (``verify`` fails on
it), or a rerun that does not give the bytes of an uninterrupted run.

Adding cases (the training-side rows, ``B1`` ... ``H6``): write a function of the :class:`Ctx` that returns a
list of :class:`Sub`, decorate it with ``@case("B2", "pretrain --epochs nan, inf")``; a new area letter needs a
title in :data:`AREAS`. Helpers: :func:`run` (a console script, optionally as ``nobody`` or with its peak RSS),
:func:`one_line`, :func:`usage`, :func:`ok`, :func:`stray_partials`, :func:`digests`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

BIN = Path(sys.executable).parent
PD = BIN / "plankton-data"
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the helpers the tests use for the same cases
from tests.helpers import alive, big_kaggle_zip, descendants  # noqa: E402

REALDATA = ROOT.parent / "shared" / "realdata"
DATASETS = ("kaggle", "zoolake", "syke_zooscan", "pmid2019", "syke_ifcb", "ude_diatoms", "daplankton")

#: area letter -> title; the training side adds its letters (B) and fills the shared ones (D, E, F, G, H).
AREAS: dict[str, str] = {
    "A": "arguments and environment",
    "B": "training commands",
    "C": "bad input files",
    "D": "kills and interrupts",
    "E": "damage after the fact",
    "F": "disk full",
    "G": "concurrent runs",
    "H": "hostile archives, symlinks, memory",
}


# --- results ---------------------------------------------------------------------------------------------------


@dataclass
class Sub:
    """One sub-case: ``clean`` as the module docstring defines it; ``ran=False`` when it cannot run here."""

    name: str
    clean: bool
    lost: bool = False
    note: str = ""
    ran: bool = True


@dataclass
class Case:
    id: str
    title: str
    fn: Callable[[Ctx], list[Sub]]
    subs: list[Sub] = field(default_factory=list)
    seconds: float = 0.0


CASES: dict[str, Case] = {}


def case(cid: str, title: str) -> Callable[[Callable[[Ctx], list[Sub]]], Callable[[Ctx], list[Sub]]]:
    """Register a case function under its review id (``A1``); its area is the letter."""

    def register(fn: Callable[[Ctx], list[Sub]]) -> Callable[[Ctx], list[Sub]]:
        if cid in CASES or cid[0] not in AREAS:
            raise ValueError(f"case {cid}: duplicate or unknown area")
        CASES[cid] = Case(cid, title, fn)
        return fn

    return register


# --- running commands ------------------------------------------------------------------------------------------


@dataclass
class Res:
    rc: int
    out: str
    err: str
    rss_mib: float = 0.0

    @property
    def text(self) -> str:
        return self.out + self.err

    @property
    def flat(self) -> str:
        """stdout and stderr without white space: for substrings that Rich may have wrapped."""
        return "".join(self.text.split())


_RSS = (
    "import resource, subprocess, sys\n"
    "r = subprocess.run(sys.argv[1:])\n"
    "print('maxrss_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(r.returncode)\n"
)


def run(
    *args: object,
    exe: Path = PD,
    cwd: Path | None = None,
    user: int | None = None,
    rss: bool = False,
    timeout: float = 900,
) -> Res:
    """Run a console script (``plankton-data`` by default); ``user`` runs it as that uid (root only), ``rss``
    measures the peak RSS of its largest process (``getrusage`` in a wrapper process)."""
    argv = [str(exe), *map(str, args)]
    if rss:
        argv = [sys.executable, "-c", _RSS, *argv]
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    env = {k: v for k, v in os.environ.items() if k != "PLANKTON_DEBUG"}
    try:
        p = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Res(-1, "", f"timed out after {timeout} s")
    err, mib = p.stderr, 0.0
    if rss and "maxrss_kb" in err:
        head, _, tail = err.rpartition("maxrss_kb ")
        err, mib = head, int(tail.split()[0]) / 1024
    return Res(p.returncode, p.stdout, err, mib)


def one_line(res: Res, *parts: str, rc: int = 1) -> bool:
    """Exit ``rc`` with one ``error:`` line (containing ``parts``) and no traceback."""
    lines = [line for line in res.err.splitlines() if line.strip()]
    return (
        res.rc == rc
        and "Traceback" not in res.text
        and len(lines) == 1
        and lines[0].startswith("error: ")
        and all(p in lines[0] for p in parts)
    )


def usage(res: Res) -> bool:
    """A usage error: exit 2, the usage line, no traceback."""
    return res.rc == 2 and "Traceback" not in res.text and "Usage:" in res.err


def ok(res: Res) -> bool:
    return res.rc == 0 and "Traceback" not in res.text


def stray_partials(root: Path) -> list[str]:
    """``*partial*`` files outside staging folders (where a killed or failed run may leave finished work)."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*partial*")
        if p.is_file() and not any(".staging-" in part for part in p.relative_to(root).parts)
    )


def partials_in_final(root: Path) -> list[str]:
    """``*partial*`` files inside final shard folders (``shards/<name>/``): what a kill must never leave. A killed
    run may leave temp files in staging and hidden ``.<name>.partial`` ones beside a final manifest name, which
    the rerun overwrites; a partial inside a committed folder would be a half-written file under a final name."""
    return sorted(str(p.relative_to(root)) for folder in root.rglob("shards") for p in folder.glob("[!.]*/*partial*"))


def digests(*folders: Path) -> dict[str, str]:
    """sha256 of every file under ``folders``, keyed by the path relative to its folder (staging excluded)."""
    found = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            rel = p.relative_to(folder)
            if p.is_file() and not any(".staging-" in part or part.endswith(".lock") for part in rel.parts):
                found[f"{folder.name}/{rel}"] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def verified(shards: Path, name: str) -> bool:
    return run("verify", shards / name).rc == 0


# --- generated inputs ------------------------------------------------------------------------------------------


def png(shape: tuple[int, ...] = (40, 30), value: int = 200, ext: str = ".png") -> bytes:
    return cv2.imencode(ext, np.full(shape, value, np.uint8))[1].tobytes()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width x height`` (the review's reproducer)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(bytes(999))) + _chunk(b"IEND", b"")
    )


def valid_big_png(side: int) -> bytes:
    """A valid, all-black ``side x side`` gray PNG, streamed (no ``side**2`` array in memory)."""
    z, row, parts = zlib.compressobj(9), bytes(side + 1), []
    for _ in range(side):
        parts.append(z.compress(row))
    parts.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


def zip_bomb(path: Path, gib: int, name: str = "train/a/bomb.png") -> Path:
    """A small zip holding one member of ``gib`` GiB (a PNG signature, then zeros), its size declared honestly."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open(name, "w", force_zip64=True) as fh:
            fh.write(b"\x89PNG\r\n\x1a\n")
            block = bytes(1 << 20)
            for _ in range(gib << 10):
                fh.write(block)
        zf.writestr("train/a/ok.png", png())
    return path


def lying_zip(path: Path, name: str, data: bytes, declared: int) -> Path:
    """A zip whose member declares ``declared`` bytes (central directory and local header) but holds ``data``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name, data)
        zf.writestr("train/a/ok.png", png())
    raw = bytearray(buf.getvalue())
    struct.pack_into("<I", raw, raw.find(b"PK\x01\x02") + 24, declared)
    struct.pack_into("<I", raw, raw.find(b"PK\x03\x04") + 22, declared)
    path.write_bytes(bytes(raw))
    return path


def rejects_of(manifests: Path, dataset: str = "kaggle") -> dict[str, tuple[str, str]]:
    """``{source: (kind, reason)}`` of an ingest's rejects list."""
    import pyarrow.parquet as pq

    return {
        r["source"]: (r["kind"], r["reason"])
        for r in pq.read_table(manifests / f"{dataset}.rejects.parquet").to_pylist()
    }


def sources_of(manifests: Path, dataset: str = "kaggle") -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(manifests / f"{dataset}.parquet", columns=["source"]).column("source").to_pylist()


# --- the machine -----------------------------------------------------------------------------------------------

NOBODY = 65534


def can_run_as_nobody() -> bool:
    return os.geteuid() == 0 and shutil.which("setpriv") is not None


@contextlib.contextmanager
def tmpfs(path: Path, size: int, read_only: bool = False) -> Iterator[Path | None]:
    """A tmpfs of ``size`` bytes mounted at ``path`` (``None`` where this user may not mount one)."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={max(size, 4096)},mode=0777" + (",ro" if read_only else "")
    if (
        os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True).returncode != 0
    ):
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


# --- the shared inputs -----------------------------------------------------------------------------------------


class Ctx:
    """The scratch folder of a run and the inputs cases share, built on first use."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self._demo: Path | None = None
        self._refs: dict[tuple, Path] = {}
        self._seconds: dict[tuple, float] = {}

    def tmp(self, name: str) -> Path:
        path = self.work / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    @property
    def demo(self) -> Path:
        """``plankton-data demo``: every dataset's raw archives, ingested (do not damage: copy)."""
        if self._demo is None:
            out = self.work / "demo"
            res = run("demo", "--out", out, "-w", "1")
            if res.rc:
                raise RuntimeError(f"demo failed: {res.err}")
            self._demo = out
        return self._demo

    def copy_demo(self, name: str) -> tuple[Path, Path]:
        """A private copy of the demo's shards and manifests to damage."""
        base = self.tmp(name)
        shutil.copytree(self.demo / "shards", base / "shards")
        shutil.copytree(self.demo / "manifests", base / "manifests")
        return base / "shards", base / "manifests"

    @property
    def big(self) -> Path:
        return big_kaggle_zip(self.work / "big.zip", 3000)

    def reference(self, *args: str) -> Path:
        """An uninterrupted ingest of the big zip with ``args``: the bytes every interrupted run must reach."""
        if args not in self._refs:
            base = self.tmp(f"ref-{len(self._refs)}")
            start = time.perf_counter()
            res = run(
                "ingest",
                "kaggle",
                "--raw",
                self.big,
                "--shards",
                base / "shards",
                "--manifests",
                base / "manifests",
                "--records-per-shard",
                "100",
                *args,
            )
            assert res.rc == 0, res.err
            self._refs[args] = base
            self._seconds[args] = time.perf_counter() - start
        return self._refs[args]

    def seconds(self, *args: str) -> float:
        """How long the uninterrupted ingest with ``args`` took (startup included): where kills are aimed."""
        self.reference(*args)
        return self._seconds[args]

    def same_as_reference(self, base: Path, *args: str) -> bool:
        ref = self.reference(*args)
        return digests(base / "shards", base / "manifests") == digests(ref / "shards", ref / "manifests")


def parallel(fn: Callable, items: list, workers: int = 4) -> list:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


# --- A: arguments and environment ------------------------------------------------------------------------------


@case("A1", "ingest: missing --raw, empty dir, non-zip file, unknown id")
def a1(ctx: Ctx) -> list[Sub]:
    t = ctx.tmp("a1")
    (t / "empty").mkdir()
    (t / "x.txt").write_text("x")
    argv = {
        "missing --raw": ["ingest", "kaggle", "--raw", t / "nope"],
        "empty folder": ["ingest", "kaggle", "--raw", t / "empty"],
        "not a zip": ["ingest", "kaggle", "--raw", t / "x.txt"],
        "unknown id": ["ingest", "kagle", "--raw", ctx.demo / "raw" / "kaggle"],
    }
    return [Sub(n, one_line(run(*a, "--shards", t / "s", "--manifests", t / "m"))) for n, a in argv.items()]


@case("A2", "ingest dataset X on dataset Y's demo raw (all 42 pairs)")
def a2(ctx: Ctx) -> list[Sub]:
    t = ctx.tmp("a2")
    pairs = [(x, y) for x in DATASETS for y in DATASETS if x != y]

    def one(pair: tuple[str, str]) -> Sub:
        x, y = pair
        res = run("ingest", x, "--raw", ctx.demo / "raw" / y, "--shards", t / f"{x}-{y}", "--manifests", t / "m")
        return Sub(f"{x} on {y}", one_line(res, "does not hold"))

    return parallel(one, pairs)


@case("A3", "ingest -w -1, --records-per-shard 0, --size -5, --quality 101, --format gif, --bogus, no --raw")
def a3(ctx: Ctx) -> list[Sub]:
    raw = ctx.demo / "raw" / "kaggle"
    bad = {
        "-w -1": ["-w", "-1"],
        "--records-per-shard 0": ["--records-per-shard", "0"],
        "--size -5": ["--size", "-5"],
        "--quality 101": ["--quality", "101"],
        "--format gif": ["--format", "gif"],
        "--bogus": ["--bogus"],
    }
    subs = [Sub(n, usage(run("ingest", "kaggle", "--raw", raw, *a))) for n, a in bad.items()]
    return [*subs, Sub("no --raw", usage(run("ingest", "kaggle")))]


@case("A4", "ingest --seed -1; a path with spaces, ü and 漢 (ingest, shard, verify)")
def a4(ctx: Ctx) -> list[Sub]:
    t = ctx.tmp("a4")
    res = run(
        "ingest",
        "kaggle",
        "--raw",
        ctx.demo / "raw" / "kaggle",
        "--seed",
        "-1",
        "--shards",
        t / "s",
        "--manifests",
        t / "m",
    )
    odd = t / "data ü 漢"
    shutil.copytree(ctx.demo / "raw" / "kaggle", odd / "raw")
    roots = ("--shards", odd / "shards", "--manifests", odd / "manifests")
    ing = run("ingest", "kaggle", "--raw", odd / "raw", *roots)
    sh = run("shard", "--name", "s", "-i", "kaggle", "--samples-per-shard", "4", "--all-splits", *roots)
    return [
        Sub("--seed -1", ok(res)),
        Sub("odd path: ingest", ok(ing) and verified(odd / "shards", "kaggle")),
        Sub("odd path: shard", ok(sh) and verified(odd / "shards", "s")),
    ]


@case("A5", "ingest --shards = a file; --manifests = a file (over a previous ingest)")
def a5(ctx: Ctx) -> list[Sub]:
    shards, manifests = ctx.copy_demo("a5")
    afile = shards.parent / "afile"
    afile.write_text("x")
    raw = ctx.demo / "raw" / "kaggle"
    before = digests(shards, manifests)
    r1 = run("ingest", "kaggle", "--raw", raw, "--shards", afile)
    r2 = run("ingest", "kaggle", "--raw", raw, "--shards", shards, "--manifests", afile, "--size", "32")
    intact = digests(shards, manifests) == before and verified(shards, "kaggle")
    return [
        Sub("--shards is a file", one_line(r1, "afile") and afile.read_text() == "x"),
        Sub("--manifests is a file", one_line(r2, "afile") and not stray_partials(shards.parent), lost=not intact),
    ]


@case("A6", "ingest into a read-only tmpfs; a 0555 folder as the user nobody")
def a6(ctx: Ctx) -> list[Sub]:
    t = ctx.tmp("a6")
    raw = ctx.demo / "raw" / "kaggle"
    subs = []
    with tmpfs(t / "ro", 1 << 20, read_only=True) as ro:
        if ro is None:
            subs.append(Sub("read-only tmpfs", False, ran=False, note="needs root with CAP_SYS_ADMIN to mount"))
        else:
            subs.append(
                Sub(
                    "read-only tmpfs",
                    one_line(run("ingest", "kaggle", "--raw", raw, "--shards", ro / "s"), "Read-only file system"),
                )
            )
    if can_run_as_nobody():
        locked = t / "locked"
        locked.mkdir(mode=0o555)
        t.chmod(0o755)
        res = run("ingest", "kaggle", "--raw", raw, "--shards", locked / "s", "--manifests", locked / "m", user=NOBODY)
        subs.append(Sub("0555 folder as nobody", one_line(res, "Permission denied")))
    else:
        subs.append(Sub("0555 folder as nobody", False, ran=False, note="needs root and setpriv"))
    return subs


@case("A7", "--raw 'data/[/x]/...' and 'data [copy]/...'")
def a7(ctx: Ctx) -> list[Sub]:
    t = ctx.tmp("a7")
    subs = []
    for name, folder in (("[/x]", t / "data" / "[" / "x]"), ("[copy]", t / "data [copy]")):
        shutil.copytree(ctx.demo / "raw" / "kaggle", folder / "raw")
        res = run("ingest", "kaggle", "--raw", folder / "raw", "--shards", folder / "s", "--manifests", folder / "m")
        missing = run("ingest", "kaggle", "--raw", folder / "nope")
        subs.append(Sub(f"{name}: ingest", ok(res) and "".join(str(folder / "s").split()) in res.flat))
        subs.append(Sub(f"{name}: error line", one_line(missing, str(folder / "nope"))))
    return subs


@case("A8", "verify: missing, empty dir, a file, --manifest missing / not parquet / of another dataset")
def a8(ctx: Ctx) -> list[Sub]:
    t = ctx.tmp("a8")
    (t / "empty").mkdir()
    (t / "file").write_text("x")
    (t / "bad.parquet").write_text("not parquet")
    k = ctx.demo / "shards" / "kaggle"

    def detected(res: Res) -> bool:
        return res.rc == 1 and "Traceback" not in res.text and "problem(s)" in res.err

    return [
        Sub("missing", detected(run("verify", t / "nope"))),
        Sub("empty folder", detected(run("verify", t / "empty"))),
        Sub("a file", detected(run("verify", t / "file"))),
        Sub("--manifest missing", detected(run("verify", k, "--manifest", t / "nope.parquet"))),
        Sub("--manifest not parquet", detected(run("verify", k, "--manifest", t / "bad.parquet"))),
        Sub(
            "--manifest of another dataset",
            detected(run("verify", k, "--manifest", ctx.demo / "manifests" / "zoolake.parquet")),
        ),
    ]


@case("A9", "verify with manifests outside <root>/manifests")
def a9(ctx: Ctx) -> list[Sub]:
    t = ctx.tmp("a9")
    res = run(
        "ingest",
        "kaggle",
        "--raw",
        ctx.demo / "raw" / "kaggle",
        "--shards",
        t / "out" / "sh",
        "--manifests",
        t / "out" / "m",
    )
    return [Sub("verify out/sh/kaggle", ok(res) and ok(run("verify", t / "out" / "sh" / "kaggle")))]


@case("A10", "stats (unknown, file, empty, --top -1, bad parquet); preview (missing, empty, --tile 1, ...)")
def a10(ctx: Ctx) -> list[Sub]:
    t = ctx.tmp("a10")
    (t / "empty").mkdir()
    (t / "file.txt").write_text("x")
    (t / "bad.parquet").write_text("garbage")
    k = ctx.demo / "shards" / "kaggle"
    roots = ("--shards", ctx.demo / "shards", "--manifests", ctx.demo / "manifests")
    return [
        Sub("stats unknown", one_line(run("stats", "nosuch", *roots))),
        Sub("stats a file", one_line(run("stats", t / "file.txt", *roots))),
        Sub("stats empty folder", one_line(run("stats", t / "empty", *roots))),
        Sub("stats --top -1", usage(run("stats", k, "--top", "-1"))),
        Sub("stats bad parquet", one_line(run("stats", t / "bad.parquet"))),
        Sub("preview missing", one_line(run("preview", t / "nope", "--out", t / "p.png"))),
        Sub("preview empty folder", one_line(run("preview", t / "empty", "--out", t / "p.png"))),
        Sub("preview --tile 1", usage(run("preview", k, "--out", t / "p.png", "--tile", "1"))),
        Sub("preview --per-dataset 0", usage(run("preview", k, "--out", t / "p.png", "--per-dataset", "0"))),
        Sub("preview into a new subfolder", ok(run("preview", k, "--out", t / "new" / "sub" / "p.png"))),
        Sub("preview odd extension", ok(run("preview", k, "--out", t / "sheet.xyz"))),
    ]


@case("A11", "preview --out <dir>, a read-only --out, --seed -1")
def a11(ctx: Ctx) -> list[Sub]:
    t = ctx.tmp("a11")
    (t / "dir").mkdir()
    k = ctx.demo / "shards" / "kaggle"
    subs = [
        Sub("--out a folder", one_line(run("preview", k, "--out", t / "dir", cwd=t)) and not stray_partials(t)),
        Sub("--seed -1", usage(run("preview", k, "--out", t / "p.png", "--seed", "-1"))),
    ]
    if can_run_as_nobody():
        (t / "ro").mkdir(mode=0o555)
        t.chmod(0o755)
        res = run("preview", k, "--out", t / "ro" / "p.png", user=NOBODY)
        subs.append(Sub("read-only --out as nobody", one_line(res, "Permission denied") and not stray_partials(t)))
    else:
        subs.append(Sub("read-only --out as nobody", False, ran=False, note="needs root and setpriv"))
    return subs


@case("A12", "shard: no/bad/../evil/dataset-id/unicode name, sps 0, sps > n, -i foo, include+exclude, ...")
def a12(ctx: Ctx) -> list[Sub]:
    t = ctx.tmp("a12")
    (t / "empty").mkdir()
    roots = ("--shards", ctx.demo / "shards", "--manifests", ctx.demo / "manifests")
    pattern = "[a-z0-9][a-z0-9_-]*"
    return [
        Sub("no --name", usage(run("shard", *roots))),
        Sub("bad name (pattern shown intact)", one_line(run("shard", "--name", "Bad!", *roots), pattern)),
        Sub("../evil", one_line(run("shard", "--name", "../evil", *roots), pattern)),
        Sub("a dataset id", one_line(run("shard", "--name", "kaggle", *roots))),
        Sub("unicode name", one_line(run("shard", "--name", "navn_æ", *roots))),
        Sub("--samples-per-shard 0", usage(run("shard", "--name", "s", "--samples-per-shard", "0", *roots))),
        Sub("--samples-per-shard > n", one_line(run("shard", "--name", "s", "--samples-per-shard", "100000", *roots))),
        Sub("-i foo", one_line(run("shard", "--name", "s", "-i", "foo", *roots), "unknown dataset")),
        Sub("include and exclude", one_line(run("shard", "--name", "s", "-i", "kaggle", "-x", "kaggle", *roots))),
        Sub(
            "not ingested",
            one_line(
                run("shard", "--name", "s", "-i", "kaggle", "--shards", t / "empty", "--manifests", t / "empty"),
                "not ingested",
            ),
        ),
        Sub(
            "nothing ingested",
            one_line(
                run("shard", "--name", "s", "--shards", t / "empty", "--manifests", t / "empty"), "empty selection"
            ),
        ),
        Sub("missing roots", one_line(run("shard", "--name", "s", "--shards", t / "no", "--manifests", t / "no"))),
    ]


@case("A13", "shard --seed -1; read-only roots")
def a13(ctx: Ctx) -> list[Sub]:
    roots = ("--shards", ctx.demo / "shards", "--manifests", ctx.demo / "manifests")
    subs = [Sub("--seed -1", usage(run("shard", "--name", "s", "--seed", "-1", *roots)))]
    if can_run_as_nobody():
        shards, manifests = ctx.copy_demo("a13")
        for p in (shards.parent, *shards.parent.rglob("*")):
            p.chmod(0o755 if p.is_dir() else 0o644)
        res = run("shard", "--name", "s", "--shards", shards, "--manifests", manifests, user=NOBODY)
        subs.append(Sub("read-only roots as nobody", one_line(res, "Permission denied")))
    else:
        subs.append(Sub("read-only roots as nobody", False, ran=False, note="needs root and setpriv"))
    return subs


@case("A14", "demo -w -3; demo --out a file; demo into a read-only folder")
def a14(ctx: Ctx) -> list[Sub]:
    t = ctx.tmp("a14")
    (t / "afile").write_text("x")
    subs = [
        Sub("-w -3", usage(run("demo", "--out", t / "d", "-w", "-3"))),
        Sub("--out a file", one_line(run("demo", "--out", t / "afile"))),
    ]
    if can_run_as_nobody():
        (t / "ro").mkdir(mode=0o555)
        t.chmod(0o755)
        subs.append(Sub("read-only as nobody", one_line(run("demo", "--out", t / "ro" / "d", user=NOBODY))))
    else:
        subs.append(Sub("read-only as nobody", False, ran=False, note="needs root and setpriv"))
    return subs


@case("A15", "datasets + an extra argument, --version, no arguments, verify on a good folder")
def a15(ctx: Ctx) -> list[Sub]:
    none = run()
    return [
        Sub("datasets extra", usage(run("datasets", "extra"))),
        Sub("--version", ok(run("--version"))),
        Sub("no arguments", none.rc in (0, 2) and "Traceback" not in none.text and "Usage:" in none.text),
        Sub("verify good folder", ok(run("verify", ctx.demo / "shards" / "kaggle"))),
    ]


# --- C: bad input files ----------------------------------------------------------------------------------------


def _kaggle_folder(base: Path, files: dict[str, bytes]) -> Path:
    raw = base / "raw"
    for name, data in files.items():
        (raw / "train" / "a").mkdir(parents=True, exist_ok=True)
        (raw / "train" / "a" / name).write_bytes(data)
    return raw


def _accounted(ctx_dir: Path, raw: Path, names: list[str], *args: object) -> tuple[Res, dict, list[str]]:
    res = run(
        "ingest", "kaggle", "--raw", raw, "--shards", ctx_dir / "s", "--manifests", ctx_dir / "m", "-w", "1", *args
    )
    if res.rc:
        return res, {}, []
    return res, rejects_of(ctx_dir / "m"), sources_of(ctx_dir / "m")


@case("C1", "zero-byte .jpg, text .jpg, HTML .png, truncated JPEG")
def c1(ctx: Ctx) -> list[Sub]:
    t = ctx.tmp("c1")
    jpg = png((300, 300), 120, ".jpg")
    files = {
        "zero.jpg": b"",
        "text.jpg": b"hello",
        "html.png": b"<html></html>",
        "cut.jpg": jpg[: len(jpg) // 2],
        "good.jpg": jpg,
    }
    res, rej, samples = _accounted(t, _kaggle_folder(t, files), list(files))
    subs = [Sub(n, ok(res) and rej.get(f"train/a/{n}", ("", ""))[0] == "reject") for n in files if n != "good.jpg"]
    return [*subs, Sub("counts reconcile", len(rej) + len(samples) == len(files))]


@case("C2", "1x1, 1x3000, 16-bit, RGBA, LA, palette, 1-bit, CMYK, EXIF rot 6, progressive, BMP, TIFF, GIF/WebP ...")
def c2(ctx: Ctx) -> list[Sub]:
    t = ctx.tmp("c2")
    rng = np.random.default_rng(0)
    img = (rng.random((60, 90)) * 255).astype(np.uint8)
    files = {
        "1x1.jpg": png((1, 1), 9, ".jpg"),
        "1x1.png": png((1, 1), 9),
        "1x3000.png": png((1, 3000), 9),
        "gray16.png": cv2.imencode(".png", (img.astype(np.uint16) * 257))[1].tobytes(),
        "rgb16.png": cv2.imencode(".png", np.dstack([img.astype(np.uint16) * 257] * 3))[1].tobytes(),
        "gray16.tif": cv2.imencode(".tif", img.astype(np.uint16) * 257)[1].tobytes(),
        "float.tif": cv2.imencode(".tif", img.astype(np.float32) / 255)[1].tobytes(),
        "rgba.png": cv2.imencode(".png", np.dstack([img] * 4))[1].tobytes(),
        "bmp.bmp": cv2.imencode(".bmp", img)[1].tobytes(),
        "webp-as.png": cv2.imencode(".webp", img)[1].tobytes(),
        "upper.JPG": cv2.imencode(".jpg", img)[1].tobytes(),
        "constant.png": png((50, 50), 128),
        "ünïcødé 漢.png": cv2.imencode(".png", img)[1].tobytes(),
    }
    try:
        from PIL import Image  # not a dependency: the extra kinds need it to be written
    except ImportError:
        Image = None  # type: ignore[assignment]  # noqa: N806
    if Image is not None:
        pil = Image.fromarray(img)

        def save(im, fmt: str, **kw) -> bytes:
            buf = io.BytesIO()
            im.save(buf, fmt, **kw)
            return buf.getvalue()

        exif = Image.Exif()
        exif[0x0112] = 6
        files |= {
            "la.png": save(pil.convert("LA"), "PNG"),
            "palette.png": save(pil.convert("P"), "PNG"),
            "1bit.png": save(pil.convert("1"), "PNG"),
            "cmyk.jpg": save(pil.convert("CMYK"), "JPEG"),
            "exif6.jpg": save(pil.convert("RGB"), "JPEG", exif=exif),
            "progressive.jpg": save(pil, "JPEG", progressive=True),
            "multipage.tif": save(pil, "TIFF", save_all=True, append_images=[pil]),
            "gif-as.jpg": save(pil, "GIF"),
        }
    res, rej, samples = _accounted(t, _kaggle_folder(t, files), list(files))
    stored = {s.rsplit("/", 1)[-1] for s in samples}
    subs = [Sub(n, ok(res) and (n in stored or rej.get(f"train/a/{n}", ("", ""))[1] != "")) for n in files]
    return [*subs, Sub("counts reconcile", len(rej) + len(samples) == len(files))]


@case("C3", ".txt and .gif members")
def c3(ctx: Ctx) -> list[Sub]:
    t = ctx.tmp("c3")
    files = {"note.txt": b"hello", "anim.gif": b"GIF89a\x01\x00\x01\x00", "ok.png": png()}
    res, rej, _ = _accounted(t, _kaggle_folder(t, files), list(files))
    return [Sub(n, ok(res) and rej.get(f"train/a/{n}", ("",))[0] == "skipped") for n in ("note.txt", "anim.gif")]


@case("C4", "a PNG header declaring 60000x60000")
def c4(ctx: Ctx) -> list[Sub]:
    t = ctx.tmp("c4")
    res, rej, _ = _accounted(t, _kaggle_folder(t, {"huge.png": png_header(60000, 60000), "ok.png": png()}), [])
    return [Sub("60000x60000 header", ok(res) and "megapixels" in rej.get("train/a/huge.png", ("", ""))[1])]


@case("C5", "a valid 30000x30000 PNG (peak RSS measured)")
def c5(ctx: Ctx) -> list[Sub]:
    t = ctx.tmp("c5")
    with zipfile.ZipFile(t / "train.zip", "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("train/a/huge.png", valid_big_png(30000))
        zf.writestr("train/a/ok.png", png())
    res = run("ingest", "kaggle", "--raw", t / "train.zip", "--shards", t / "s", "--manifests", t / "m", rss=True)
    rejected = ok(res) and "megapixels" in rejects_of(t / "m").get("train.zip/train/a/huge.png", ("", ""))[1]
    return [Sub("30000x30000 PNG", rejected and res.rss_mib < 1024, note=f"peak RSS {res.rss_mib:.0f} MiB")]


@case("C6", "zip truncated at the end / at half")
def c6(ctx: Ctx) -> list[Sub]:
    t = ctx.tmp("c6")
    data = (ctx.demo / "raw" / "kaggle" / "train.zip").read_bytes()
    subs = []
    for name, cut in (("end", len(data) - 30), ("half", len(data) // 2)):
        (t / name).mkdir()
        (t / name / "train.zip").write_bytes(data[:cut])
        subs.append(
            Sub(
                f"truncated at {name}",
                one_line(run("ingest", "kaggle", "--raw", t / name, "--shards", t / "s"), "not a readable zip"),
            )
        )
    return subs


@case("C7", "zip: flipped member data, local header, central-directory name; edited compress_size")
def c7(ctx: Ctx) -> list[Sub]:
    t = ctx.tmp("c7")
    members = {f"train/a/{i}.png": png((80, 80), 10 + i) for i in range(5)}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    raw = bytearray(buf.getvalue())
    local, central = _zip_offsets(bytes(raw))
    raw[local["train/a/0.png"] + 30 + len("train/a/0.png") + 10] ^= 0xFF  # member data: CRC or inflate fails
    raw[local["train/a/1.png"]] ^= 0xFF  # local header signature
    raw[central["train/a/2.png"] + 46 + len("train/a/")] = ord("X")  # central-directory name: train/a/X.png
    at = central["train/a/3.png"] + 20
    struct.pack_into("<I", raw, at, struct.unpack_from("<I", raw, at)[0] // 2)  # compress_size halved
    (t / "train.zip").write_bytes(bytes(raw))
    res = run("ingest", "kaggle", "--raw", t / "train.zip", "--shards", t / "s", "--manifests", t / "m")
    if not ok(res):
        return [Sub(n, False, note=res.err[-200:]) for n in ("data", "local header", "cd name", "compress_size")]
    rej, samples = rejects_of(t / "m"), sources_of(t / "m")

    def fate(name: str) -> bool:
        return f"train.zip/{name}" in samples or bool(rej.get(f"train.zip/{name}", ("", ""))[1])

    return [
        Sub("flipped data", "damaged archive member" in rej.get("train.zip/train/a/0.png", ("", ""))[1]),
        Sub("flipped local header", "damaged archive member" in rej.get("train.zip/train/a/1.png", ("", ""))[1]),
        Sub("flipped central-directory name", fate("train/a/X.png")),
        Sub("halved compress_size", fate("train/a/3.png")),
        Sub("counts reconcile", len(rej) + len(samples) == len(members)),
    ]


def _zip_offsets(raw: bytes) -> tuple[dict[str, int], dict[str, int]]:
    """``({name: local header offset}, {name: central-directory entry offset})`` of a zip without comments."""
    end = raw.rfind(b"PK\x05\x06")
    count, _, start = struct.unpack_from("<HII", raw, end + 10)
    local, central, at = {}, {}, start
    for _ in range(count):
        n, m, k = struct.unpack_from("<HHH", raw, at + 28)
        name = raw[at + 46 : at + 46 + n].decode()
        central[name], local[name] = at, struct.unpack_from("<I", raw, at + 42)[0]
        at += 46 + n + m + k
    return local, central


_VOC = "<annotation><size><width>{w}</width><height>{h}</height></size>{objects}</annotation>"
_OBJ = (
    "<object><name>{name}</name>"
    "<bndbox><xmin>{0}</xmin><ymin>{1}</ymin><xmax>{2}</xmax><ymax>{3}</ymax></bndbox></object>"
)


def _obj(x0: object, y0: object, x1: object, y1: object, name: str = "Copepod") -> str:
    return _OBJ.format(x0, y0, x1, y1, name=name)


def _pmid(ctx: Ctx, t: Path, xmls: dict[str, str | None], orphans: tuple[str, ...] = ()) -> Res:
    """Ingest the PMID2019 fixture plus one image per ``xmls`` key with that XML (``None``: no XML), and XMLs
    named ``orphans`` without an image."""
    shutil.copytree(ctx.demo / "raw" / "pmid2019", t / "raw")
    base = t / "raw" / "PMID2019"
    jpg = next((base / "JPEGImages").glob("*.jpg")).read_bytes()
    for stem, xml in xmls.items():
        (base / "JPEGImages" / f"{stem}.jpg").write_bytes(jpg)
        if xml is not None:
            (base / "Annotations" / f"{stem}.xml").write_text(xml)
    for stem in orphans:
        (base / "Annotations" / f"{stem}.xml").write_text(_VOC.format(w=400, h=300, objects=_obj(1, 1, 20, 20)))
    return run("ingest", "pmid2019", "--raw", t / "raw", "--shards", t / "s", "--manifests", t / "m")


@case("C8", "PMID2019: malformed XML, boxes outside/partly/negative/degenerate/non-numeric/NaN, XXE, ...")
def c8(ctx: Ctx) -> list[Sub]:
    t = ctx.tmp("c8")
    w, h = 400, 300  # the fixture's images are at least this big
    voc = lambda *objs: _VOC.format(w=w, h=h, objects="".join(objs))  # noqa: E731
    xmls: dict[str, str | None] = {
        "malformed": "<annotation><object>",
        "outside": voc(_obj(5000, 5000, 5100, 5100)),
        "partly_outside": voc(_obj(350, 250, 900, 900)),
        "negative": voc(_obj(-50, -50, -10, -10)),
        "degenerate": voc(_obj(50, 50, 40, 40)),
        "non_numeric": voc(_obj("a", 1, 2, 3)),
        "nan": voc(_obj("nan", 1, 20, 20)),
        "no_bndbox": voc("<object><name>Copepod</name></object>"),
        "no_objects": voc(),
        "huge": voc(_obj(1, 1, 10**12, 10**12)),
        "float": voc(_obj(1.5, 1.5, 20.7, 20.7)),
        "one_px": voc(_obj(10, 10, 10, 10)),
        "duplicate": voc(_obj(1, 1, 20, 20), _obj(1, 1, 20, 20)),
        "xxe": '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        + voc(_obj(1, 1, 20, 20, name="&e;")),
        "billion_laughs": '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY a "aaaaaaaaaa">'
        + "".join(f'<!ENTITY {c} "{("&" + p + ";") * 10}">' for p, c in zip("abcdefgh", "bcdefghi", strict=True))
        + "]>"
        + voc(_obj(1, 1, 20, 20, name="&i;")),
        "no_xml": None,
    }
    res = _pmid(ctx, t, xmls, orphans=("orphan",))
    if not ok(res):
        return [Sub(n, False, note=res.err[-200:]) for n in xmls]
    rej, samples = rejects_of(t / "m", "pmid2019"), sources_of(t / "m", "pmid2019")
    subs = []
    for stem in xmls:
        src = f"PMID2019/JPEGImages/{stem}.jpg"
        fates = [s for s in samples if s.startswith(src)] + [
            s for s, (_, why) in rej.items() if s.startswith(src) and why
        ]
        subs.append(Sub(stem, bool(fates)))
    # no /etc/passwd in any stored label
    labels = __import__("pyarrow.parquet", fromlist=["x"]).read_table(t / "m" / "pmid2019.parquet").column("label_raw")
    subs.append(Sub("XXE entity not resolved", not any("root:" in v for v in labels.to_pylist())))
    subs.append(Sub("XML without image", ok(res)))
    return subs


@case("C9", "PMID2019 coordinate inf")
def c9(ctx: Ctx) -> list[Sub]:
    t = ctx.tmp("c9")
    res = _pmid(ctx, t, {"inf": _VOC.format(w=400, h=300, objects=_obj(1, 1, "inf", 20))})
    rej = rejects_of(t / "m", "pmid2019") if res.rc == 0 else {}
    return [Sub("inf", ok(res) and "infinite" in rej.get("PMID2019/JPEGImages/inf.jpg", ("", ""))[1])]


@case("C10", "PMID2019 label [/x]")
def c10(ctx: Ctx) -> list[Sub]:
    t = ctx.tmp("c10")
    res = _pmid(ctx, t, {"markup": _VOC.format(w=400, h=300, objects=_obj(1, 1, 50, 50, name="[/x]"))})
    return [Sub("label [/x]", ok(res) and "[/x]" in res.out)]


@case("C11", "real Kaggle train.zip; real ZooLake data.zip (../shared/realdata)")
def c11(ctx: Ctx) -> list[Sub]:
    t = ctx.tmp("c11")
    subs = []
    for dataset, raw, expected in (
        ("kaggle", REALDATA / "kaggle" / "train.zip", 30336),
        ("zoolake", REALDATA / "lake_zooplankton" / "data.zip", 10358),
    ):
        if not raw.exists():
            subs.append(Sub(dataset, False, ran=False, note=f"{raw} absent"))
            continue
        res = run("ingest", dataset, "--raw", raw, "--shards", t / "s", "--manifests", t / "m", "-w", "2")
        n = len(sources_of(t / "m", dataset)) if res.rc == 0 else -1
        subs.append(Sub(dataset, ok(res) and n == expected, note=f"{n} samples"))
    return subs


# --- D: kills and interrupts -----------------------------------------------------------------------------------

KILL_AFTER_SWAP = """
import importlib, os, signal, sys
from plankton_data.cli.main import main


def die_after(swap_in):
    def swap_then_die(*args, **kwargs):  # a real SIGKILL at the worst moment: folder in, manifest not renamed
        swap_in(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
    return swap_then_die


for name in ("plankton_data.ingest.commit", "plankton_data.ingest.run"):  # wherever the ingest commit lives
    try:
        module = importlib.import_module(name)
    except ImportError:
        continue
    if hasattr(module, "swap_in"):
        module.swap_in = die_after(module.swap_in)
sys.argv = ["plankton-data", *sys.argv[1:]]
main()
"""


def _kill_ingest(ctx: Ctx, name: str, workers: str, delay: float, sig: int = signal.SIGKILL) -> Sub:
    base = ctx.tmp(name)
    args = ["ingest", "kaggle", "--raw", str(ctx.big), "--records-per-shard", "100", "-w", workers]
    roots = ["--shards", str(base / "shards"), "--manifests", str(base / "manifests")]
    log = base / "stderr.txt"  # a file, not a pipe: orphaned workers would hold a pipe open forever
    with open(log, "w") as err_fh:
        proc = subprocess.Popen(
            [str(PD), *args, *roots], start_new_session=True, stdout=subprocess.DEVNULL, stderr=err_fh
        )
    time.sleep(delay)
    children = descendants(proc.pid)
    mid_run = proc.poll() is None
    with contextlib.suppress(ProcessLookupError):  # it may have finished already
        if sig == signal.SIGINT:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, sig)
    proc.wait()
    err = log.read_text()
    clean = not partials_in_final(base) and "Traceback" not in err
    if sig == signal.SIGINT and mid_run:
        clean = clean and proc.returncode == 130 and err.strip().endswith("rerun the same command to resume")
    deadline = time.time() + 10
    while time.time() < deadline and any(alive(p) for p in children):
        time.sleep(0.1)
    orphans = [p for p in children if alive(p)]
    for p in orphans:  # a failure of this case: clean up what it left
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGKILL)
    rerun = run(*args, *roots)
    same = ok(rerun) and ctx.same_as_reference(base, "-w", "1")
    note = (
        f"killed after {delay:.1f} s"
        + ("" if mid_run else " (had finished)")
        + (f"; orphans {orphans}" if orphans else "")
    )
    return Sub(f"-w {workers} after {delay:.1f} s", clean and not orphans, lost=not same, note=note)


@case("D1", "ingest SIGKILL at random times (-w 1), rerun")
def d1(ctx: Ctx) -> list[Sub]:
    rng, span = random.Random(1), ctx.seconds("-w", "1")
    return [_kill_ingest(ctx, f"d1-{i}", "1", rng.uniform(0.3, 0.9) * span) for i in range(4)]


@case("D2", "ingest SIGKILL at random times (-w 2): no orphaned workers, rerun")
def d2(ctx: Ctx) -> list[Sub]:
    rng, span = random.Random(2), ctx.seconds("-w", "2")
    return [_kill_ingest(ctx, f"d2-{i}", "2", rng.uniform(0.35, 0.8) * span) for i in range(3)]


@case("D3", "SIGKILL after the folder swap, before the manifest (re-ingest at another size)")
def d3(ctx: Ctx) -> list[Sub]:
    base = ctx.tmp("d3")
    raw = ctx.demo / "raw" / "kaggle"
    roots = ["--shards", str(base / "shards"), "--manifests", str(base / "manifests")]
    run("ingest", "kaggle", "--raw", raw, *roots, "--size", "64")
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_SWAP, "ingest", "kaggle", "--raw", str(raw), *roots, "--size", "32"],
        capture_output=True,
    )
    detected = run("verify", base / "shards" / "kaggle")
    rerun = run("ingest", "kaggle", "--raw", raw, *roots, "--size", "32")
    ref = ctx.tmp("d3-ref")
    run("ingest", "kaggle", "--raw", raw, "--shards", ref / "shards", "--manifests", ref / "manifests", "--size", "32")
    same = ok(rerun) and digests(base / "shards", base / "manifests") == digests(ref / "shards", ref / "manifests")
    return [
        Sub("killed at the worst moment", killed.returncode == -signal.SIGKILL),
        Sub("verify says so", detected.rc == 1 and "committed with" in detected.out),
        Sub("rerun finishes the commit", same and "resumed" in rerun.out, lost=not same),
    ]


@case("D4", "Ctrl-C (SIGINT to the process group) of ingest -w 2, rerun")
def d4(ctx: Ctx) -> list[Sub]:
    span = ctx.seconds("-w", "2")
    return [_kill_ingest(ctx, f"d4-{i}", "2", f * span, signal.SIGINT) for i, f in enumerate((0.45, 0.7))]


@case("D5", "shard-set SIGKILL at random times, rerun")
def d5(ctx: Ctx) -> list[Sub]:
    src = ctx.reference("-w", "1")
    ref = ctx.tmp("d5-ref")
    for sub in ("shards", "manifests"):
        shutil.copytree(src / sub, ref / sub)
    args = ["shard", "--name", "mix", "--samples-per-shard", "3", "--all-splits"]  # 1000 tars: long enough to hit
    start = time.perf_counter()
    run(*args, "--shards", ref / "shards", "--manifests", ref / "manifests")
    span = time.perf_counter() - start
    rng = random.Random(5)
    subs = []
    for i in range(4):
        base = ctx.tmp(f"d5-{i}")
        for sub in ("shards", "manifests"):
            shutil.copytree(src / sub, base / sub)
        roots = ["--shards", str(base / "shards"), "--manifests", str(base / "manifests")]
        proc = subprocess.Popen([str(PD), *args, *roots], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        delay = rng.uniform(0.6, 0.95) * span
        time.sleep(delay)
        mid_run = proc.poll() is None
        proc.kill()
        _, err = proc.communicate()
        clean = not partials_in_final(base) and "Traceback" not in err
        rerun = run(*args, *roots)
        same = ok(rerun) and digests(base / "shards", base / "manifests") == digests(ref / "shards", ref / "manifests")
        note = f"killed after {delay:.1f} s of {span:.1f}" + ("" if mid_run else " (had finished)")
        subs.append(Sub(f"after {delay:.1f} s", clean, lost=not same, note=note))
    return subs


# --- E: damage after the fact ----------------------------------------------------------------------------------


def _flip(path: Path, at: int, value: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[at] = data[at] ^ 0xFF if value is None else value
    path.write_bytes(bytes(data))


def _edit_manifest(path: Path, column: str, edit: Callable[[list], list]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    values = edit(table.column(column).to_pylist())
    pq.write_table(
        table.set_column(
            table.schema.get_field_index(column), column, pa.array(values, table.schema.field(column).type)
        ),
        path,
    )


def _rewrite_manifest(path: Path, edit: Callable) -> None:
    import pyarrow.parquet as pq

    pq.write_table(edit(pq.read_table(path)), path)


def _edit_index(path: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _damages(folder: Path, manifest: Path) -> dict[str, Callable[[], None]]:
    """Name -> damage of a dataset folder with at least two tars and its manifest."""
    import pyarrow.parquet as pq

    rows = pq.read_table(manifest).to_pylist()
    first = next(r for r in rows if r["shard"].endswith("-000000.tar"))
    tar0, tar1 = (
        folder / first["shard"].split("/")[-1],
        folder / first["shard"].split("/")[-1].replace("000000", "000001"),
    )
    index = folder / "index.json"
    json_at = (
        first["offset"] + -(-first["length"] // 512) * 512 + 512
    )  # data of the sample's json member (after the image)
    return {
        "image byte flipped": lambda: _flip(tar0, first["offset"] + 5),
        "image zeroed": lambda: tar0.write_bytes(
            tar0.read_bytes()[: first["offset"]]
            + bytes(first["length"])
            + tar0.read_bytes()[first["offset"] + first["length"] :]
        ),
        "header name flipped": lambda: _flip(tar0, first["offset"] - 512 + 3),
        "header size flipped": lambda: _flip(tar0, first["offset"] - 512 + 130, ord("7")),
        "json byte flipped": lambda: _flip(tar0, json_at + 2),
        "padding byte set": lambda: (
            _flip(tar0, first["offset"] + first["length"], 0x41)
            if first["length"] % 512
            else _flip(tar0, tar0.stat().st_size - 10, 0x41)
        ),
        "truncated at half": lambda: tar0.write_bytes(tar0.read_bytes()[: tar0.stat().st_size // 2]),
        "end marker cut": lambda: tar0.write_bytes(tar0.read_bytes()[:-1024]),
        "junk appended": lambda: tar0.write_bytes(tar0.read_bytes() + b"junk" * 100),
        "tar deleted": lambda: tar0.unlink(),
        "stray tar": lambda: shutil.copy(tar0, folder / "stray-000099.tar"),
        "tars swapped": lambda: (tar0.rename(folder / "tmp.x"), tar1.rename(tar0), (folder / "tmp.x").rename(tar1)),
        "tar emptied": lambda: tar0.write_bytes(b""),
        "manifest offset edited": lambda: _edit_manifest(manifest, "offset", lambda v: [v[0] + 512, *v[1:]]),
        "manifest row dropped": lambda: _rewrite_manifest(manifest, lambda t: t.slice(1)),
        "manifest row duplicated": lambda: _rewrite_manifest(
            manifest, lambda t: __import__("pyarrow").concat_tables([t, t.slice(0, 1)])
        ),
        "manifest sha edited": lambda: _edit_manifest(manifest, "image_sha256", lambda v: ["0" * 64, *v[1:]]),
        "manifest key edited": lambda: _edit_manifest(manifest, "key", lambda v: [v[0][:-1] + "x", *v[1:]]),
        "manifest truncated": lambda: manifest.write_bytes(manifest.read_bytes()[:100]),
        "manifest deleted": lambda: manifest.unlink(),
        "index count edited": lambda: _edit_index(
            index, lambda d: d["shards"][0].update(count=d["shards"][0]["count"] + 1)
        ),
        "index sha edited": lambda: _edit_index(index, lambda d: d["shards"][0].update(sha256="0" * 64)),
        "index total edited": lambda: _edit_index(index, lambda d: d.update(total=d["total"] + 1)),
        "index garbage": lambda: index.write_text("{not json"),
        "index deleted": lambda: index.unlink(),
    }


def _multi_tar(ctx: Ctx, name: str) -> tuple[Path, Path]:
    """The kaggle fixture ingested in tars of 8 (several tars), in a fresh folder."""
    base = ctx.tmp(name)
    res = run(
        "ingest",
        "kaggle",
        "--raw",
        ctx.demo / "raw" / "kaggle",
        "--shards",
        base / "shards",
        "--manifests",
        base / "manifests",
        "--records-per-shard",
        "8",
    )
    assert res.rc == 0, res.err
    return base / "shards", base / "manifests"


def _damaged_copy(ctx: Ctx, src: tuple[Path, Path], tag: str, damage: str) -> tuple[Path, Path]:
    base = ctx.tmp(f"{tag}-{damage.replace(' ', '_')}")
    shutil.copytree(src[0], base / "shards")
    shutil.copytree(src[1], base / "manifests")
    _damages(base / "shards" / "kaggle", base / "manifests" / "kaggle.parquet")[damage]()
    return base / "shards", base / "manifests"


@case("E1", "verify after 25 kinds of damage to tars, manifest and index.json")
def e1(ctx: Ctx) -> list[Sub]:
    src = _multi_tar(ctx, "e1-src")
    names = list(_damages(src[0] / "kaggle", src[1] / "kaggle.parquet"))

    def one(damage: str) -> Sub:
        shards, _ = _damaged_copy(ctx, src, "e1", damage)
        res = run("verify", shards / "kaggle")
        return Sub(damage, res.rc == 1 and "Traceback" not in res.text and "problem(s)" in res.err)

    return parallel(one, names)


@case("E2", "verify after a manifest label edit; index.json mean / std edited")
def e2(ctx: Ctx) -> list[Sub]:
    src = _multi_tar(ctx, "e2-src")
    edits = {
        "manifest label edited": lambda s, m: _edit_manifest(
            m / "kaggle.parquet", "label", lambda v: ["edited", *v[1:]]
        ),
        "index mean edited": lambda s, m: _edit_index(
            s / "kaggle" / "index.json", lambda d: d.update(mean=d["mean"] + 0.01)
        ),
        "index std edited": lambda s, m: _edit_index(
            s / "kaggle" / "index.json", lambda d: d.update(std=d["std"] * 1.1)
        ),
    }
    subs = []
    for name, edit in edits.items():
        base = ctx.tmp(f"e2-{name.replace(' ', '_')}")
        shutil.copytree(src[0], base / "shards")
        shutil.copytree(src[1], base / "manifests")
        edit(base / "shards", base / "manifests")
        res = run("verify", base / "shards" / "kaggle")
        subs.append(Sub(name, res.rc == 1 and "Traceback" not in res.text))
    return subs


E6_DAMAGES = (
    "image byte flipped",
    "image zeroed",
    "truncated at half",
    "tar deleted",
    "manifest sha edited",
    "index garbage",
    "manifest deleted",
)


@case("E6", "stats and preview on 7 damaged copies")
def e6(ctx: Ctx) -> list[Sub]:
    src = _multi_tar(ctx, "e6-src")

    def one(item: tuple[str, str]) -> Sub:
        command, damage = item
        shards, manifests = _damaged_copy(ctx, src, f"e6{command}", damage)
        args = [shards / "kaggle"] + (["--out", shards.parent / "p.png"] if command == "preview" else [])
        res = run(command, *args, "--shards", shards, "--manifests", manifests)
        return Sub(f"{command}: {damage}", ok(res) or one_line(res))

    return parallel(one, [(c, d) for c in ("stats", "preview") for d in E6_DAMAGES])


@case("E7", "shard from damaged sources")
def e7(ctx: Ctx) -> list[Sub]:
    src = _multi_tar(ctx, "e7-src")
    expect = {  # damage -> refused (True) or copied as documented (False: shard checks headers, not image bytes)
        "truncated at half": True,
        "manifest offset edited": True,
        "tar deleted": True,
        "image byte flipped": False,
    }
    subs = []
    for damage, refused in expect.items():
        shards, manifests = _damaged_copy(ctx, src, "e7", damage)
        res = run(
            "shard",
            "--name",
            "mix",
            "-i",
            "kaggle",
            "--all-splits",
            "--samples-per-shard",
            "4",
            "--shards",
            shards,
            "--manifests",
            manifests,
        )
        subs.append(
            Sub(
                damage,
                one_line(res) if refused else ok(res),
                note="refused" if refused else "copied (verify of the source names it)",
            )
        )
    shards, manifests = _damaged_copy(ctx, src, "e7", "image byte flipped")
    _edit_manifest(manifests / "kaggle.parquet", "label", lambda v: ["edited", *v[1:]])
    res = run("shard", "--name", "mix", "-i", "kaggle", "--all-splits", "--shards", shards, "--manifests", manifests)
    subs.append(Sub("manifest label edited", one_line(res, "re-ingest")))
    return subs


# --- F: disk full ----------------------------------------------------------------------------------------------


def _not_run(names: list[str]) -> list[Sub]:
    return [Sub(n, False, ran=False, note="needs root with CAP_SYS_ADMIN to mount a tmpfs") for n in names]


@case("F1", "ingest into a tmpfs too small for it")
def f1(ctx: Ctx) -> list[Sub]:
    need = sum(p.stat().st_size for p in ctx.reference("-w", "1").rglob("*") if p.is_file())
    t = ctx.tmp("f1")
    with tmpfs(t / "fs", need // 2) as fs:
        if fs is None:
            return _not_run(["ENOSPC in the tars"])
        res = run(
            "ingest",
            "kaggle",
            "--raw",
            ctx.big,
            "--records-per-shard",
            "100",
            "-w",
            "1",
            "--shards",
            fs / "shards",
            "--manifests",
            fs / "manifests",
        )
        clean = one_line(res, "No space left on device") and not stray_partials(fs)
        nothing_final = not (fs / "shards" / "kaggle").exists() and not (fs / "manifests" / "kaggle.parquet").exists()
        return [Sub("ENOSPC in the tars", clean and nothing_final)]


@case("F2", "re-ingest with --manifests on a full tmpfs")
def f2(ctx: Ctx) -> list[Sub]:
    t = ctx.tmp("f2")
    raw = ctx.demo / "raw" / "kaggle"
    with tmpfs(t / "m", 1 << 20) as m:
        if m is None:
            return _not_run(["manifests ENOSPC"])
        roots = ("--shards", t / "shards", "--manifests", m)
        run("ingest", "kaggle", "--raw", raw, *roots, "--size", "64")
        before = digests(t / "shards", m)
        with contextlib.suppress(OSError), open(m / "filler", "wb", buffering=0) as fh:
            while True:  # fill the disk: the next write fails with ENOSPC
                fh.write(bytes(4096))
        res = run("ingest", "kaggle", "--raw", raw, *roots, "--size", "32")
        (m / "filler").unlink()
        before.pop(f"{m.name}/filler", None)
        after = {k: v for k, v in digests(t / "shards", m).items() if not k.endswith("filler")}
        intact = after == before and verified(t / "shards", "kaggle")
        return [
            Sub("manifests ENOSPC", one_line(res, "No space left on device") and not stray_partials(t), lost=not intact)
        ]


@case("F3", "shard into a tmpfs too small for the set")
def f3(ctx: Ctx) -> list[Sub]:
    src = ctx.reference("-w", "1")
    need = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    t = ctx.tmp("f3")
    with tmpfs(t / "fs", need + need // 2) as fs:
        if fs is None:
            return _not_run(["ENOSPC in the set"])
        shutil.copytree(src / "shards", fs / "shards")
        shutil.copytree(src / "manifests", fs / "manifests")
        res = run(
            "shard",
            "--name",
            "mix",
            "--all-splits",
            "--samples-per-shard",
            "20",
            "--shards",
            fs / "shards",
            "--manifests",
            fs / "manifests",
        )
        intact = verified(fs / "shards", "kaggle")
        clean = one_line(res, "No space left on device") and not stray_partials(fs)
        return [Sub("ENOSPC in the set", clean and not (fs / "shards" / "mix").exists(), lost=not intact)]


# --- G: concurrent runs ----------------------------------------------------------------------------------------


def _race(ctx: Ctx, name: str, sizes: tuple[str, str], gap: float) -> Sub:
    base = ctx.tmp(name)
    roots = ["--shards", str(base / "shards"), "--manifests", str(base / "manifests")]
    common = [str(PD), "ingest", "kaggle", "--raw", str(ctx.big), "--records-per-shard", "100", "-w", "1", *roots]
    argv = [[*common, "--size", size] for size in sizes]
    first = subprocess.Popen(argv[0], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(gap)
    second = subprocess.Popen(argv[1], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = [(p, *p.communicate()) for p in (first, second)]
    fates = []  # finished, refused (one line), or failed (anything else)
    for p, out, err in results:
        lines = [line for line in err.splitlines() if line.strip()]
        refused = p.returncode == 1 and len(lines) == 1 and "another plankton-data run" in lines[0]
        clean_exit = "Traceback" not in out + err
        fates.append("finished" if p.returncode == 0 and clean_exit else "refused" if refused else "failed")
    winners = [sizes[i] for i, fate in enumerate(fates) if fate == "finished"]
    consistent = verified(base / "shards", "kaggle") and any(
        ctx.same_as_reference(base, "-w", "1", "--size", s) for s in winners
    )
    counts = ", ".join(f"{fates.count(f)} {f}" for f in ("finished", "refused", "failed") if fates.count(f))
    clean = "failed" not in fates and bool(winners)
    return Sub(f"{' vs '.join(sizes)} px, {gap:.1f} s apart", clean, lost=not consistent, note=counts)


@case("G1", "two identical ingests started 0-2 s apart")
def g1(ctx: Ctx) -> list[Sub]:
    return [_race(ctx, f"g1-{i}", ("64", "64"), gap) for i, gap in enumerate((0.0, 0.8, 2.0))]


@case("G2", "two ingests of the same dataset with different plans (64 vs 48 px)")
def g2(ctx: Ctx) -> list[Sub]:
    return [_race(ctx, f"g2-{i}", ("64", "48"), gap) for i, gap in enumerate((0.3, 1.5))]


# --- H: hostile archives, symlinks, memory ---------------------------------------------------------------------


@case("H1", "zip members ../../, absolute, train/../../.., backslash, NUL, 200 chars, newline, markup")
def h1(ctx: Ctx) -> list[Sub]:
    t = ctx.tmp("h1")
    names = {
        "../../": "../../evil1.png",
        "absolute": "/tmp/evil2.png",
        "train/../../..": "train/../../../evil3.png",
        "backslash": "train\\a\\evil4.png",
        "NUL": "train/a/evil5\0.png",
        "200 chars": "train/a/" + "e" * 190 + ".png",
        "newline": "train/a/evil\n6.png",
        "markup": "train/[/x]/evil7.png",
    }
    with zipfile.ZipFile(t / "train.zip", "w") as zf:
        for member in names.values():
            zf.writestr(zipfile.ZipInfo(member), png())
        zf.writestr("train/a/ok.png", png())
    out = t / "out"
    res = run("ingest", "kaggle", "--raw", t / "train.zip", "--shards", out / "s", "--manifests", out / "m", cwd=t)
    written = [p for p in (t, t.parent, Path("/tmp"), Path("/")) for p in p.glob("evil*")]
    rej = rejects_of(out / "m") if res.rc == 0 else {}
    samples = sources_of(out / "m") if res.rc == 0 else []
    accounted = len(rej) + len(samples)
    subs = [Sub(n, ok(res) and not written) for n in names]
    subs.append(Sub("every member accounted", accounted == len(names) + 1, note=f"{accounted} of {len(names) + 1}"))
    return subs


@case("H2", "a file symlink to an outside image; to /etc/passwd")
def h2(ctx: Ctx) -> list[Sub]:
    t = ctx.tmp("h2")
    (t / "outside.png").write_bytes(png())
    (t / "raw" / "train" / "a").mkdir(parents=True)
    (t / "raw" / "train" / "a" / "link.png").symlink_to(t / "outside.png")
    (t / "raw" / "train" / "a" / "passwd.jpg").symlink_to("/etc/passwd")
    res, rej, samples = _accounted(t, t / "raw", [])
    return [
        Sub("symlink to an image", ok(res) and "train/a/link.png" in samples),
        Sub("symlink to /etc/passwd", ok(res) and rej.get("train/a/passwd.jpg", ("",))[0] == "reject"),
    ]


@case("H3", "a folder symlink to an outside folder; a symlink loop")
def h3(ctx: Ctx) -> list[Sub]:
    t = ctx.tmp("h3")
    (t / "outside").mkdir()
    for i in range(3):
        (t / "outside" / f"{i}.png").write_bytes(png(value=10 + i))
    (t / "raw" / "train").mkdir(parents=True)
    (t / "raw" / "train" / "linked").symlink_to(t / "outside")
    (t / "raw" / "train" / "loop").symlink_to(t / "raw" / "train")
    res, rej, samples = _accounted(t, t / "raw", [])
    return [
        Sub("folder symlink followed", ok(res) and sum(s.startswith("train/linked/") for s in samples) == 3),
        Sub("loop skipped with a reason", ok(res) and "already read" in rej.get("train/loop", ("", ""))[1]),
    ]


@case("H4", "a dangling symlink under --raw")
def h4(ctx: Ctx) -> list[Sub]:
    t = ctx.tmp("h4")
    (t / "raw" / "train" / "a").mkdir(parents=True)
    (t / "raw" / "train" / "a" / "ok.png").write_bytes(png())
    (t / "raw" / "train" / "a" / "dead.jpg").symlink_to("/nonexistent.jpg")
    res, rej, _ = _accounted(t, t / "raw", [])
    return [Sub("dangling symlink", ok(res) and "dangling symlink" in rej.get("train/a/dead.jpg", ("", ""))[1])]


@case("H5", "zip bombs: 1 GiB and 2 GiB members in small zips, and one whose header lies (peak RSS measured)")
def h5(ctx: Ctx) -> list[Sub]:
    t = ctx.tmp("h5")
    subs = []
    for gib in (1, 2):
        bomb = zip_bomb(t / f"bomb{gib}.zip", gib)
        res = run("ingest", "kaggle", "--raw", bomb, "--shards", t / f"s{gib}", "--manifests", t / f"m{gib}", rss=True)
        why = rejects_of(t / f"m{gib}").get(f"{bomb.name}/train/a/bomb.png", ("", ""))[1] if res.rc == 0 else ""
        note = f"{bomb.stat().st_size / 1e6:.1f} MB zip, peak RSS {res.rss_mib:.0f} MiB"
        subs.append(Sub(f"{gib} GiB member", ok(res) and "--max-member-mb" in why and res.rss_mib < 1024, note=note))
    lie = lying_zip(t / "lie.zip", "train/a/lie.png", b"\x89PNG\r\n\x1a\n" + bytes(300 << 20), declared=1000)
    res = run("ingest", "kaggle", "--raw", lie, "--shards", t / "sl", "--manifests", t / "ml", rss=True)
    why = rejects_of(t / "ml").get("lie.zip/train/a/lie.png", ("", ""))[1] if res.rc == 0 else ""
    subs.append(
        Sub(
            "300 MiB member declaring 1000 bytes",
            ok(res) and "declares" in why and res.rss_mib < 1024,
            note=f"peak RSS {res.rss_mib:.0f} MiB",
        )
    )
    base = run(
        "ingest",
        "kaggle",
        "--raw",
        ctx.demo / "raw" / "kaggle",
        "--shards",
        t / "sb",
        "--manifests",
        t / "mb",
        "-w",
        "1",
        rss=True,
    )
    subs.append(Sub("baseline: the demo's kaggle", ok(base), note=f"peak RSS {base.rss_mib:.0f} MiB"))
    return subs


# --- the report ------------------------------------------------------------------------------------------------


def report(cases: list[Case]) -> str:
    lines = ["| area | tried | handled cleanly | data lost | not run here |", "|---|---|---|---|---|"]
    total = [0, 0, 0, 0]
    for area, title in AREAS.items():
        subs = [s for c in cases if c.id[0] == area for s in c.subs]
        if not subs:
            continue
        ran = [s for s in subs if s.ran]
        row = [len(ran), sum(s.clean for s in ran), sum(s.lost for s in ran), len(subs) - len(ran)]
        total = [a + b for a, b in zip(total, row, strict=True)]
        lines.append(f"| {area} {title} | {row[0]} | {row[1]} | {row[2]} | {row[3]} |")
    lines.append(f"| **total** | **{total[0]}** | **{total[1]}** | **{total[2]}** | **{total[3]}** |")
    lines += ["", "| case | what | tried | clean | lost | notes |", "|---|---|---|---|---|---|"]
    for c in cases:
        ran = [s for s in c.subs if s.ran]
        bad = [f"**{s.name}**" + (f": {s.note}" if s.note else "") for s in c.subs if not s.clean or s.lost]
        notes = bad + [f"{s.name}: {s.note}" for s in c.subs if s.clean and not s.lost and s.note]
        lines.append(
            f"| {c.id} | {c.title} | {len(ran)} | {sum(s.clean for s in ran)} | {sum(s.lost for s in ran)} | "
            + "; ".join(notes).replace("|", "/").replace("\n", " ")
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--areas", default="", help="comma-separated area letters (default: all)")
    parser.add_argument("--cases", default="", help="comma-separated case ids (default: all)")
    parser.add_argument("--list", action="store_true", help="list the registered cases and exit")
    parser.add_argument("--json", type=Path, help="write every sub-case's result here")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, deleted)")
    args = parser.parse_args()
    if args.list:
        for c in CASES.values():
            print(f"{c.id:4} {c.title}")
        return
    areas = set(args.areas.split(",")) - {""}
    ids = set(args.cases.split(",")) - {""}
    chosen = [c for c in CASES.values() if (not areas and not ids) or c.id[0] in areas or c.id in ids]
    work = args.work or Path(tempfile.mkdtemp(prefix="plankton-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)  # the user nobody runs some cases in here
    ctx = Ctx(work)
    start = time.perf_counter()
    try:
        for c in chosen:
            t0 = time.perf_counter()
            try:
                c.subs = c.fn(ctx)
            except Exception as exc:  # a broken case is a finding, not the end of the matrix
                c.subs = [Sub("case crashed", False, note=f"{type(exc).__name__}: {exc}")]
            c.seconds = time.perf_counter() - t0
            bad = [s.name for s in c.subs if s.ran and (not s.clean or s.lost)]
            print(
                f"{c.id:4} {len(c.subs):3} sub-cases {c.seconds:6.1f} s  {'FAIL: ' + ', '.join(bad) if bad else 'ok'}",
                file=sys.stderr,
                flush=True,
            )
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(report(chosen))
    print(f"\n{len(chosen)} cases in {time.perf_counter() - start:.0f} s; plankton-data at {PD}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    c.id: {"title": c.title, "seconds": round(c.seconds, 1), "subs": [asdict(s) for s in c.subs]}
                    for c in chosen
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
