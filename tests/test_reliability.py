"""Faults of the environment, of the input and of concurrent or killed runs, through the installed console script.

Each test makes the fault real where this machine can: a file where a folder goes, a write into ``/dev/full``
(ENOSPC), a folder the unprivileged user ``nobody`` may not write (EACCES), a second real process, a SIGKILL.
What every one checks: one ``error:`` line and exit 1 (never a traceback), and nothing half-written under a
final name.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from plankton_data.fixtures import write_fixture
from tests.helpers import alive, big_kaggle_zip, descendants

PD = Path(sys.executable).parent / "plankton-data"  # the installed console script, as users run it


def cli(*args: str | Path, cwd: Path | None = None, user: int | None = None) -> subprocess.CompletedProcess:
    argv = [str(PD), *map(str, args)]
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    env = {k: v for k, v in os.environ.items() if k != "PLANKTON_DEBUG"}
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def one_line_error(res: subprocess.CompletedProcess, *expected: str) -> str:
    """The ``error:`` line of a failed run; fails unless it is one line, exit 1, no traceback."""
    text = res.stdout + res.stderr
    assert res.returncode == 1, text
    assert "Traceback" not in text, text
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    for part in expected:
        assert part in lines[0], lines[0]
    return lines[0]


def partials(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*partial*"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``plankton-data demo``'s raw archives, shards and manifests (read-only for the tests: copy to damage)."""
    out = tmp_path_factory.mktemp("demo")
    res = cli("demo", "--out", out, "-w", "1")
    assert res.returncode == 0, res.stderr
    return out


# --- environment errors: one line, exit 1 -------------------------------------------------------------------


def test_a_file_where_a_folder_goes(demo, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    raw = demo / "raw" / "kaggle"
    one_line_error(cli("ingest", "kaggle", "--raw", raw, "--shards", afile), "File exists", "afile")
    one_line_error(cli("ingest", "kaggle", "--raw", raw, "--shards", afile / "sub"), "Not a directory", "afile/sub")
    one_line_error(cli("demo", "--out", afile), "afile")
    one_line_error(
        cli("shard", "--name", "s", "--shards", demo / "shards", "--manifests", afile, "-i", "kaggle"), "afile"
    )
    assert afile.read_text() == "x"


def test_disk_full_is_one_line_and_leaves_no_partial(demo, tmp_path):
    """ENOSPC for real: the temp file the PNG is written under is a symlink to /dev/full."""
    (tmp_path / ".sheet.png.partial").symlink_to("/dev/full")
    line = one_line_error(cli("preview", demo / "shards" / "kaggle", "--out", tmp_path / "sheet.png"))
    assert "No space left on device" in line and "sheet.png" in line
    assert not (tmp_path / "sheet.png").exists() and partials(tmp_path) == []


def _nobody_can_run_the_cli() -> bool:
    """Root with setpriv, and a checkout the unprivileged user may read (a clone in a 0700 folder is not)."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return False
    probe = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(PD), "--version"]
    return subprocess.run(probe, capture_output=True, timeout=60).returncode == 0


@pytest.mark.skipif(not _nobody_can_run_the_cli(), reason="needs root, setpriv and a checkout user nobody can read")
def test_permission_denied_is_one_line_and_leaves_no_partial(demo):
    """EACCES for real: the commands run as the unprivileged user nobody on a folder only root may write."""
    base = Path(tempfile.mkdtemp(prefix="plankton-eacces-"))
    try:
        base.chmod(0o755)
        raw = base / "raw"
        shutil.copytree(demo / "raw" / "kaggle", raw)
        shutil.copytree(demo / "shards", base / "shards")
        shutil.copytree(demo / "manifests", base / "manifests")
        for path in (base, *base.rglob("*")):
            path.chmod(0o755 if path.is_dir() else 0o644)
        nobody = 65534
        denied = "Permission denied"
        one_line_error(cli("ingest", "kaggle", "--raw", raw, "--shards", base / "new", user=nobody), denied)
        roots = ("--shards", base / "shards", "--manifests", base / "manifests")
        one_line_error(cli("ingest", "kaggle", "--raw", raw, *roots, user=nobody), denied)
        one_line_error(cli("preview", base / "shards" / "kaggle", "--out", base / "sheet.png", user=nobody), denied)
        one_line_error(cli("shard", "--name", "s", *roots, user=nobody), denied)
        assert partials(base) == []
        assert cli("verify", base / "shards" / "kaggle", user=nobody).returncode == 0
    finally:
        shutil.rmtree(base)


def test_preview_out_folder_and_negative_seeds(demo, tmp_path):
    folder = tmp_path / "sheets"
    folder.mkdir()
    one_line_error(cli("preview", demo / "shards" / "kaggle", "--out", folder), "is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sheets"]  # no stray .sheets.partial
    for args in (
        ("preview", demo / "shards" / "kaggle", "--out", tmp_path / "p.png", "--seed", "-1"),
        ("shard", "--name", "s", "--shards", demo / "shards", "--manifests", demo / "manifests", "--seed", "-1"),
    ):
        res = cli(*args)
        assert res.returncode == 2 and "Traceback" not in res.stderr and "--seed" in res.stderr, res.stderr


# --- locking: one writer per output --------------------------------------------------------------------------


HOLD = """
import sys, time
from plankton_data.format.lock import output_lock
with output_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def _holder(target: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_of_the_same_output_is_refused_at_once(demo, tmp_path):
    shards, manifests = tmp_path / "shards", tmp_path / "manifests"
    shutil.copytree(demo / "shards", shards)
    shutil.copytree(demo / "manifests", manifests)
    for target, args in (
        (shards / "kaggle", ("ingest", "kaggle", "--raw", demo / "raw" / "kaggle")),
        (shards / "mix", ("shard", "--name", "mix", "-i", "kaggle", "-i", "zoolake", "--samples-per-shard", "4")),
    ):
        holder = _holder(target)
        try:
            start = time.monotonic()
            res = cli(*args, "--shards", shards, "--manifests", manifests)
            assert time.monotonic() - start < 20  # refused at once, not after waiting
            line = one_line_error(res, "another plankton-data run", f"pid {holder.pid}", str(target), "wait for it")
            assert "Traceback" not in line
        finally:
            holder.kill()
            holder.wait()
        # The holder was SIGKILLed: its lock file is still there, but the kernel released the lock.
        assert (target.parent / f".{target.name}.lock").exists()
        res = cli(*args, "--shards", shards, "--manifests", manifests)
        assert res.returncode == 0, res.stderr
        assert not (target.parent / f".{target.name}.lock").exists()  # a finished run removes its lock file
    assert cli("verify", shards / "kaggle").returncode == 0 and cli("verify", shards / "mix").returncode == 0


def test_two_concurrent_ingests_one_refused_the_other_intact(tmp_path):
    """A second ingest while another process writes the dataset: it stops with one line and leaves the other's
    staging alone. The first writer is this test process holding the real lock (flock) with a staging folder in
    progress, so the outcome does not depend on which of two racing ingests happens to finish first."""
    from plankton_data.format.lock import output_lock

    raw = big_kaggle_zip(tmp_path / "train.zip", 300)
    shards = tmp_path / "s"
    staging = shards / ".kaggle.staging-0123456789ab"  # the other run's unfinished work
    staging.mkdir(parents=True)
    (staging / "kaggle-000000.tar.partial").write_bytes(b"half a tar")
    args = ["ingest", "kaggle", "--raw", raw, "-w", "1", "--records-per-shard", "100", "--shards", shards]
    with output_lock(shards / "kaggle"):
        second = cli(*args, "--manifests", tmp_path / "m2")
        one_line_error(second, "another plankton-data run", "is writing")
        assert (staging / "kaggle-000000.tar.partial").read_bytes() == b"half a tar"
        assert not (tmp_path / "m2" / "kaggle.parquet").exists() and not (shards / "kaggle").exists()
    assert cli(*args, "--manifests", tmp_path / "m").returncode == 0  # free again once the holder is done
    assert cli("verify", shards / "kaggle").returncode == 0


# --- ingest commits the dataset as one unit -------------------------------------------------------------------


def _digests(*folders: Path) -> dict[str, str]:
    import hashlib

    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("obstacle", ["manifests is a file", "manifest name is a folder", "manifests on a full disk"])
def test_a_failed_commit_leaves_the_previous_dataset_intact(demo, tmp_path, obstacle):
    """A re-ingest at another size whose manifests cannot be written: the old tars and manifest stay, verified."""
    shards, manifests = tmp_path / "shards", tmp_path / "manifests"
    raw = demo / "raw" / "kaggle"
    assert (
        cli("ingest", "kaggle", "--raw", raw, "--shards", shards, "--manifests", manifests, "--size", "64").returncode
        == 0
    )
    before = _digests(shards / "kaggle", manifests)
    target = manifests
    if obstacle == "manifests is a file":
        target = tmp_path / "afile"
        target.write_text("x")
    elif obstacle == "manifest name is a folder":
        (manifests / "kaggle.parquet").unlink()
        (manifests / "kaggle.parquet" / "x").mkdir(parents=True)
        before = _digests(shards / "kaggle", manifests)
    else:  # ENOSPC for real: the manifest's temp file is a symlink to /dev/full
        (manifests / ".kaggle.parquet.partial").symlink_to("/dev/full")
    res = cli("ingest", "kaggle", "--raw", raw, "--shards", shards, "--manifests", target, "--size", "32")
    one_line_error(res)
    assert _digests(shards / "kaggle", manifests) == before  # the previous dataset, byte for byte
    assert partials(manifests) == [] and partials(shards / "kaggle") == []
    if obstacle != "manifest name is a folder":
        assert cli("verify", shards / "kaggle").returncode == 0
    # The finished shards wait in staging: a rerun with a writable --manifests only commits them.
    shutil.rmtree(manifests)
    res = cli("ingest", "kaggle", "--raw", raw, "--shards", shards, "--manifests", manifests, "--size", "32")
    assert res.returncode == 0 and "resumed" in res.stdout, res.stdout + res.stderr
    assert cli("verify", shards / "kaggle").returncode == 0


KILL_AFTER_SWAP = """
import os, signal, sys
import plankton_data.ingest.commit as run
from plankton_data.cli.main import main

swap_in = run.swap_in


def swap_then_die(*args, **kwargs):  # a real SIGKILL, at the worst moment: folder in, manifest not yet renamed
    swap_in(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)


run.swap_in = swap_then_die
sys.argv = ["plankton-data", *sys.argv[1:]]
main()
"""


def test_a_kill_between_folder_swap_and_manifest_is_detected_and_finished_by_the_rerun(demo, tmp_path):
    raw = demo / "raw" / "kaggle"
    ref, out = tmp_path / "ref", tmp_path / "out"
    for root, size in ((ref, "32"), (out, "64"), (out, "32")):
        args = ["ingest", "kaggle", "--raw", raw, "--shards", root / "shards", "--manifests", root / "manifests"]
        if (root, size) == (out, "32"):  # re-ingest at 32 px over the 64 px one, killed right after the swap
            res = subprocess.run([sys.executable, "-c", KILL_AFTER_SWAP, *map(str, args), "--size", size])
            assert res.returncode == -signal.SIGKILL
        else:
            assert cli(*args, "--size", size).returncode == 0
    # New tars, old manifest: verify and stats say so instead of describing the old data.
    res = cli("verify", out / "shards" / "kaggle")
    assert res.returncode == 1 and "is not the one kaggle/index.json was committed with" in res.stdout
    one_line_error(cli("stats", out / "shards" / "kaggle"), "is not the one")
    assert (out / "manifests" / ".kaggle.parquet.partial").is_file()
    # The rerun only renames the waiting manifest: the same bytes as a run never killed.
    res = cli(
        "ingest", "kaggle", "--raw", raw, "--shards", out / "shards", "--manifests", out / "manifests", "--size", "32"
    )
    assert res.returncode == 0 and "resumed" in res.stdout, res.stdout + res.stderr
    strip = lambda d: {k.replace(str(out), "").replace(str(ref), ""): v for k, v in d.items()}  # noqa: E731
    assert strip(_digests(out / "shards", out / "manifests")) == strip(_digests(ref / "shards", ref / "manifests"))
    assert cli("verify", out / "shards" / "kaggle").returncode == 0


# --- verify: labels and statistics ---------------------------------------------------------------------------


def _copy_dataset(demo: Path, tmp_path: Path, dataset: str = "zoolake") -> tuple[Path, Path]:
    shutil.copytree(demo / "shards" / dataset, tmp_path / "shards" / dataset)
    shutil.copytree(demo / "manifests", tmp_path / "manifests")
    return tmp_path / "shards" / dataset, tmp_path / "manifests" / f"{dataset}.parquet"


def _edit_manifest_label(manifest: Path) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(manifest)
    labels = table.column("label").to_pylist()
    labels[0] = "edited_label"
    pq.write_table(table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels)), manifest)
    return table.column("key")[0].as_py()


def test_verify_notices_an_edited_manifest_label(demo, tmp_path):
    folder, manifest = _copy_dataset(demo, tmp_path)
    key = _edit_manifest_label(manifest)
    res = cli("verify", folder)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "is not the one zoolake/index.json was committed with" in res.stdout
    assert f"{key}: json member says label" in res.stdout and "'edited_label'" in res.stdout


def test_verify_of_an_index_without_manifest_hash_still_checks_labels(demo, tmp_path):
    import json

    folder, manifest = _copy_dataset(demo, tmp_path)
    index = json.loads((folder / "index.json").read_text())
    del index["manifest_sha256"]  # a folder written before the field existed
    (folder / "index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    assert cli("verify", folder).returncode == 0  # no hash: that check is skipped, nothing else complains
    key = _edit_manifest_label(manifest)
    res = cli("verify", folder)
    assert res.returncode == 1 and f"{key}: json member says label" in res.stdout
    assert "committed with" not in res.stdout


@pytest.mark.parametrize("field", ["mean", "std", "dataset_stats"])
def test_verify_notices_edited_pixel_statistics(demo, tmp_path, field):
    import json

    folder, _ = _copy_dataset(demo, tmp_path)
    index = json.loads((folder / "index.json").read_text())
    if field == "dataset_stats":
        index[field]["zoolake"][0] += 0.01
    else:
        index[field] += 0.01
    (folder / "index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    res = cli("verify", folder)
    assert res.returncode == 1 and ("mean/std" in res.stdout or "dataset_stats" in res.stdout), res.stdout


def test_verify_of_a_shard_set_checks_its_manifest_hash(demo, tmp_path):
    shutil.copytree(demo / "shards", tmp_path / "shards")
    shutil.copytree(demo / "manifests", tmp_path / "manifests")
    roots = ("--shards", tmp_path / "shards", "--manifests", tmp_path / "manifests")
    assert cli("shard", "--name", "mix", "-x", "daplankton", "--samples-per-shard", "8", *roots).returncode == 0
    assert cli("verify", tmp_path / "shards" / "mix").returncode == 0
    _edit_manifest_label(tmp_path / "manifests" / "mix.parquet")
    res = cli("verify", tmp_path / "shards" / "mix")
    assert res.returncode == 1 and "committed with" in res.stdout and "json member says label" in res.stdout
    # a build from an edited source manifest is refused in one line
    _edit_manifest_label(tmp_path / "manifests" / "zoolake.parquet")
    one_line_error(cli("shard", "--name", "mix2", "-i", "zoolake", "--samples-per-shard", "2", *roots), "re-ingest")


# --- one bad input never aborts an ingest; memory is bounded -------------------------------------------------


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width x height`` (the reviewer's reproducer)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(999))) + chunk(b"IEND", b"")


def small_png(value: int = 200, shape: tuple[int, int] = (40, 30)) -> bytes:
    import cv2
    import numpy as np

    return cv2.imencode(".png", np.full(shape, value, np.uint8))[1].tobytes()


def lying_zip(path: Path, name: str, data: bytes, declared: int) -> None:
    """A zip whose member ``name`` declares ``declared`` bytes (central directory and local header) but holds
    ``data``: the zip bomb whose header lies."""
    import io
    import struct
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name, data)
    raw = bytearray(buf.getvalue())
    struct.pack_into("<I", raw, raw.find(b"PK\x01\x02") + 24, declared)
    struct.pack_into("<I", raw, raw.find(b"PK\x03\x04") + 22, declared)
    path.write_bytes(bytes(raw))


def crc_damaged_zip(path: Path, members: dict[str, bytes], damaged: str) -> None:
    """A zip of ``members`` (stored) where one data byte of ``damaged`` is flipped: its CRC fails."""
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    raw = bytearray(path.read_bytes())
    at = raw.find(members[damaged][20:40])
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))


def _rejects(manifests: Path, dataset: str = "kaggle") -> dict[str, tuple[str, str]]:
    import pandas as pd

    df = pd.read_parquet(manifests / f"{dataset}.rejects.parquet")
    return {row.source: (row.kind, row.reason) for row in df.itertuples()}


def test_bad_files_become_rejects_or_skips_and_counts_reconcile(tmp_path):
    """Every hostile entry of the review at once, in a Kaggle folder: the ingest finishes, each is accounted for."""
    import zipfile

    raw, outside = tmp_path / "raw", tmp_path / "outside"
    (raw / "train" / "a").mkdir(parents=True)
    outside.mkdir()
    for i in range(3):
        (raw / "train" / "a" / f"ok{i}.png").write_bytes(small_png(100 + i))
    (raw / "train" / "a" / "huge.png").write_bytes(png_header(60000, 60000))  # cv2.error before the fix
    (raw / "train" / "a" / "strip.png").write_bytes(small_png(50, (2, 5000)))  # 10 kpx, but a 25 Mpx square
    (raw / "train" / "a" / "dead.jpg").symlink_to("/nonexistent/x.jpg")  # FileNotFoundError before the fix
    os.mkfifo(raw / "train" / "a" / "pipe.jpg")  # would block a read forever
    for i in range(2):
        (outside / f"o{i}.png").write_bytes(small_png(10 + i))
    (raw / "train" / "linked").symlink_to(outside)  # folder symlink: followed (silently dropped before)
    (raw / "train" / "relinked").symlink_to(outside)  # the same real folder once more: not read twice
    (raw / "train" / "a" / "loop").symlink_to(raw / "train")  # a loop
    with zipfile.ZipFile(raw / "extra.zip", "w") as zf:
        zf.writestr("train/../up.png", small_png())
        zf.writestr("train/./here.png", small_png())
        zf.writestr("train/ /blank.png", small_png())
        zf.writestr("train/b/bomb.png", b"\x89PNG\r\n\x1a\n" + bytes(3 << 20))  # 3 MiB, over --max-member-mb 2
    lying_zip(raw / "lie.zip", "train/b/lie.png", b"\x89PNG\r\n\x1a\n" + bytes(8 << 20), declared=1000)
    crc_damaged_zip(
        raw / "crc.zip",
        {"train/b/crc.png": small_png(7, (80, 80)), "train/b/fine.png": small_png(8)},
        "train/b/crc.png",
    )

    shards, manifests = tmp_path / "shards", tmp_path / "manifests"
    res = cli("ingest", "kaggle", "--raw", raw, "--shards", shards, "--manifests", manifests, "--max-member-mb", "2",
              "--max-megapixels", "20", "-w", "1")  # fmt: skip
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stdout + res.stderr
    got = _rejects(manifests)
    expected = {
        "train/a/huge.png": ("reject", "60000x60000"),
        "train/a/strip.png": ("reject", "--max-megapixels"),
        "train/a/dead.jpg": ("skipped", "dangling symlink"),
        "train/a/pipe.jpg": ("skipped", "not a regular file"),
        "train/relinked": ("skipped", "already read"),
        "train/a/loop": ("skipped", "already read"),
        "extra.zip/train/../up.png": ("reject", "path component"),
        "extra.zip/train/./here.png": ("reject", "path component"),
        "extra.zip/train/ /blank.png": ("reject", "blank label"),
        "extra.zip/train/b/bomb.png": ("reject", "--max-member-mb"),
        "lie.zip/train/b/lie.png": ("reject", "inflates past the 1000 bytes its header declares"),
        "crc.zip/train/b/crc.png": ("reject", "damaged archive member (BadZipFile: bad CRC-32"),
    }
    assert set(got) == set(expected), sorted(got)
    for source, (kind, part) in expected.items():
        assert got[source][0] == kind and part in got[source][1], (source, got[source])
    import pandas as pd

    samples = pd.read_parquet(manifests / "kaggle.parquet")
    expected_samples = [f"train/a/ok{i}.png" for i in range(3)] + [f"train/linked/o{i}.png" for i in range(2)]
    assert sorted(samples.source) == sorted([*expected_samples, "crc.zip/train/b/fine.png"])
    # inputs = samples + rejects + skipped: 9 folder entries reached once (3 ok, huge, strip, dead, pipe, 2 linked)
    # + 2 links not walked again + 4 + 1 + 2 zip members
    assert len(samples) + len(got) == 9 + 2 + 4 + 1 + 2
    assert "6 samples, 8 rejects, 4 skipped" in " ".join(res.stdout.split())
    assert cli("verify", shards / "kaggle").returncode == 0


@pytest.mark.skipif(not _nobody_can_run_the_cli(), reason="needs root, setpriv and a checkout user nobody can read")
def test_a_folder_that_cannot_be_listed_is_a_skipped_entry():
    """As the user nobody, a 0700 root-owned class folder under --raw: skipped with the reason (os.walk dropped
    it silently before), the rest ingested."""
    base = Path(tempfile.mkdtemp(prefix="plankton-unlisted-"))
    try:
        base.chmod(0o755)
        for label in ("a", "secret"):
            (base / "raw" / "train" / label).mkdir(parents=True)
            (base / "raw" / "train" / label / "x.png").write_bytes(small_png())
        for path in (base, *base.rglob("*")):
            path.chmod(0o755 if path.is_dir() else 0o644)
        (base / "raw" / "train" / "secret").chmod(0o700)
        (base / "out").mkdir(mode=0o777)
        (base / "out").chmod(0o777)
        res = cli("ingest", "kaggle", "--raw", base / "raw", "--shards", base / "out" / "s", "--manifests",
                  base / "out" / "m", user=65534)  # fmt: skip
        assert res.returncode == 0, res.stderr
        got = _rejects(base / "out" / "m")
        assert got == {"train/secret": ("skipped", "cannot list this folder (Permission denied)")}
    finally:
        shutil.rmtree(base)


def test_pmid2019_infinite_box_is_a_reject(tmp_path):
    fx = write_fixture("pmid2019", tmp_path / "raw")
    base = fx.raw / "PMID2019"
    shutil.copy(next((base / "JPEGImages").glob("*.jpg")), base / "JPEGImages" / "9999.jpg")
    xml = "<annotation><object><name>Copepod</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>inf</xmax>"
    (base / "Annotations" / "9999.xml").write_text(xml + "<ymax>20</ymax></bndbox></object></annotation>")
    res = cli("ingest", "pmid2019", "--raw", fx.raw, "--shards", tmp_path / "s", "--manifests", tmp_path / "m")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    got = _rejects(tmp_path / "m", "pmid2019")
    assert "infinite" in got["PMID2019/JPEGImages/9999.jpg"][1]
    assert sum(kind == "reject" for kind, _ in got.values()) == fx.rejects + 1


def test_opencv_errors_are_rejects(tmp_path):
    """With the pixel limit raised past OpenCV's own (2^30), the 60000x60000 header reaches cv2 and its error."""
    (tmp_path / "raw" / "train" / "a").mkdir(parents=True)
    (tmp_path / "raw" / "train" / "a" / "huge.png").write_bytes(png_header(60000, 60000))
    (tmp_path / "raw" / "train" / "a" / "ok.png").write_bytes(small_png())
    res = cli("ingest", "kaggle", "--raw", tmp_path / "raw", "--shards", tmp_path / "s", "--manifests", tmp_path / "m",
              "--max-megapixels", "5000")  # fmt: skip
    assert res.returncode == 0, res.stderr
    kind, reason = _rejects(tmp_path / "m")["train/a/huge.png"]
    assert kind == "reject" and reason.startswith("cannot decode image") and "\n" not in reason


def test_limits_do_not_change_the_output_bytes(demo, tmp_path):
    raw = demo / "raw" / "syke_zooscan"
    for name, extra in (("a", []), ("b", ["--max-member-mb", "4096", "--max-megapixels", "1000"])):
        res = cli("ingest", "syke_zooscan", "--raw", raw, "--shards", tmp_path / name / "s",
                  "--manifests", tmp_path / name / "m", *extra)  # fmt: skip
        assert res.returncode == 0, res.stderr
    strip = lambda d: {k.split(os.sep, len(tmp_path.parts) + 1)[-1]: v for k, v in d.items()}  # noqa: E731
    a, b = (strip(_digests(tmp_path / n)) for n in "ab")
    assert a == b and len(a) >= 4


def test_image_size_reads_headers_without_decoding():
    import cv2
    import numpy as np

    from plankton_data.ingest.limits import Limits, image_size

    for ext in (".png", ".jpg", ".tif", ".bmp", ".webp"):
        for shape in ((37, 53), (37, 53, 3)):
            assert image_size(cv2.imencode(ext, np.zeros(shape, np.uint8))[1].tobytes()) == (53, 37), ext
    assert image_size(png_header(60000, 70000)) == (60000, 70000)
    assert image_size(b"GIF89a\x10\x00\x20\x00") == (16, 32)
    assert image_size(b"") is None and image_size(b"not an image") is None and image_size(b"\xff\xd8\xff") is None
    limits = Limits.of(max_megapixels=1)
    assert limits.pixel_problem(1000, 1000) is None and "--max-megapixels" in (limits.pixel_problem(1001, 10) or "")


# --- Rich markup in user paths and labels --------------------------------------------------------------------


def test_markup_in_labels_and_paths_prints_as_written(tmp_path):
    """Labels ``[/x]`` and ``[copy]`` (PMID2019 XML) under a folder ``data [copy]/[/x]/``: every command runs and
    prints them verbatim (a MarkupError traceback, or silently dropped text, before)."""
    base = tmp_path / "data [copy]" / "[" / "x]"  # the path 'data [copy]/[/x]'
    fx = write_fixture("pmid2019", base / "raw")
    xmls = sorted((fx.raw / "PMID2019" / "Annotations").glob("*.xml"))
    for xml, label in zip(xmls, ("[/x]", "[copy]"), strict=False):
        text = xml.read_text()
        first = text.index("<name>") + len("<name>")
        xml.write_text(text[:first] + label + text[text.index("</name>", first) :])
    roots = ("--shards", base / "shards", "--manifests", base / "manifests")
    res = cli("ingest", "pmid2019", "--raw", fx.raw, *roots)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stdout + res.stderr
    flat = "".join(res.stdout.split())  # the table and long paths may wrap
    assert "[/x]" in res.stdout and "[copy]" in res.stdout
    assert "".join(str(base / "shards" / "pmid2019").split()) in flat
    for args in (
        ("verify", base / "shards" / "pmid2019"),
        ("stats", base / "shards" / "pmid2019"),
        ("preview", base / "shards" / "pmid2019", "--out", base / "sheet [1].png"),
    ):
        res = cli(*args)
        assert res.returncode == 0 and "Traceback" not in res.stderr, (args, res.stderr)
        assert "".join(str(base).split()) in "".join(res.stdout.split()), (args, res.stdout)
    assert "[/x]" in cli("stats", base / "shards" / "pmid2019").stdout
    res = cli("shard", "--name", "mix", "--samples-per-shard", "2", *roots)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert "".join(str(base / "shards" / "mix").split()) in "".join(res.stdout.split())
    # one-line errors keep brackets too
    one_line_error(
        cli("ingest", "kaggle", "--raw", tmp_path / "data [copy]" / "[/x]" / "nope"), "data [copy]/[/x]/nope"
    )
    one_line_error(cli("shard", "--name", "Bad!", *roots), "[a-z0-9][a-z0-9_-]*")
    tar = next((base / "shards" / "pmid2019").glob("*.tar"))
    tar.write_bytes(tar.read_bytes()[:-2000])
    res = cli("verify", base / "shards" / "pmid2019")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "".join(f"problem(s) in {base / 'shards' / 'pmid2019'}".split()) in "".join(res.stderr.split())


# --- a killed parallel ingest leaves no processes behind ----------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_sigkill_of_a_parallel_ingest_leaves_no_worker_processes(tmp_path):

    raw = big_kaggle_zip(tmp_path / "train.zip", 4000)
    argv = ["ingest", "kaggle", "--raw", raw, "-w", "2", "--records-per-shard", "200"]
    argv += ["--shards", tmp_path / "s", "--manifests", tmp_path / "m"]
    proc = subprocess.Popen([str(PD), *map(str, argv)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    children: set[int] = set()
    while time.time() < deadline and proc.poll() is None:
        children = descendants(proc.pid)
        if len(children) >= 3 and list((tmp_path / "s").glob(".kaggle.staging-*/*.rows.parquet")):
            break  # two workers and the resource tracker, mid-run
        time.sleep(0.05)
    assert proc.poll() is None and len(children) >= 3, "the kill must land mid-run, with the workers up"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(alive(pid) for pid in children):
        time.sleep(0.1)
    left = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:80] for pid in children if alive(pid)}
    assert not left, f"orphaned processes: {left}"


def _interactive_sigint() -> None:
    """In the child before exec: SIGINT as a terminal's shell leaves it (default action, not blocked). A child
    inherits an ignored or blocked SIGINT from its parent, and earlier code in the test process may leave it so
    (a full-suite CI run once saw the ingest run to the end, exit 0, through the interrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_of_a_parallel_ingest_is_one_line_and_exit_130_then_resumes(tmp_path):
    """SIGINT to the whole process group (what Ctrl-C in a terminal does), workers included."""

    raw = big_kaggle_zip(tmp_path / "train.zip", 6000)  # long enough that the interrupt lands mid-run
    args = ["ingest", "kaggle", "--raw", str(raw), "-w", "2", "--records-per-shard", "100"]
    ref = cli(*args, "--shards", tmp_path / "ref" / "s", "--manifests", tmp_path / "ref" / "m")
    assert ref.returncode == 0
    roots = ["--shards", str(tmp_path / "s"), "--manifests", str(tmp_path / "m")]
    proc = subprocess.Popen([str(PD), *args, *roots], start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_interactive_sigint)  # fmt: skip
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if list((tmp_path / "s").glob(".kaggle.staging-*/*.rows.parquet")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the interrupt must land mid-run (the ingest ended before a shard was seen)"
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert [line for line in err.splitlines() if line.strip()] == [
        "interrupted: finished shards are kept; rerun the same command to resume"
    ]
    res = cli(*args, *roots)
    assert res.returncode == 0 and "resumed" in res.stdout
    strip = lambda d: {k.rsplit(os.sep, 2)[-2:][-1]: v for k, v in d.items()}  # noqa: E731
    assert strip(_digests(tmp_path / "s", tmp_path / "m")) == strip(
        _digests(tmp_path / "ref" / "s", tmp_path / "ref" / "m")
    )


def test_the_fault_matrix_covers_the_data_side_rows_of_the_review():
    """benchmarks/fault_matrix.py (run by hand: minutes) registers every data-side row of the review's table."""
    res = subprocess.run(
        [sys.executable, str(Path(__file__).resolve().parents[1] / "benchmarks" / "fault_matrix.py"), "--list"],
        capture_output=True,
        text=True,
        check=True,
    )
    ids = {line.split()[0] for line in res.stdout.splitlines()}
    rows = [f"A{i}" for i in range(1, 16)] + [f"C{i}" for i in range(1, 12)] + [f"D{i}" for i in range(1, 6)]
    rows += ["E1", "E2", "E6", "E7", "F1", "F2", "F3", "G1", "G2"] + [f"H{i}" for i in range(1, 6)]
    assert set(rows) <= ids, sorted(set(rows) - ids)
