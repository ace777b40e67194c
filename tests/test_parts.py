"""Ingest across machines: ``ingest --part I/N`` then ``merge`` gives exactly the bytes of one ingest.

Every built-in layout's sample data (rejects, skipped files and PMID2019's boxes included) is ingested once
whole and in N = 1, 2, 3 parts; the merged tars, manifest, rejects list and index.json must have the single
run's sha256. Then resume of a killed part run, ``--clean``, and the one-line errors of the console script.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from plankton_data.audit.verify import verify
from plankton_data.errors import PlanktonError
from plankton_data.fixtures import FIXTURES, write_fixture
from plankton_data.format.index import read_index
from plankton_data.ingest import ingest
from plankton_data.ingest.parts import Part, PartError, merge, part_of
from plankton_data.ingest.preprocess import PreprocessConfig

PD = Path(sys.executable).parent / "plankton-data"  # the installed console script, as users run it
CFG = PreprocessConfig(size=48)
PER_SHARD = 3  # records per tar: several tars, so the merge must cut at the single run's boundaries


def _files(shards: Path, manifests: Path, dataset: str) -> dict[str, str]:
    """sha256 of every committed output of ``dataset``: its shard folder's files and its two Parquet files."""
    paths = sorted((shards / dataset).iterdir()) + [
        manifests / f"{dataset}.parquet",
        manifests / f"{dataset}.rejects.parquet",
    ]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def _ingest(dataset, raw, root: Path, part: Part | None = None, **kw):
    return ingest(
        dataset,
        raw,
        shards_root=root / "shards",
        manifests_root=root / "manifests",
        config=CFG,
        records_per_shard=PER_SHARD,
        workers=1,
        part=part,
        **kw,
    )


@pytest.fixture(scope="module")
def singles(tmp_path_factory):
    """Each dataset's sample data and its single-machine ingest: {dataset: (raw, root, report)}."""
    base = tmp_path_factory.mktemp("parts")
    out = {}
    for dataset in FIXTURES:
        fx = write_fixture(dataset, base / "raw")
        out[dataset] = (fx.raw, base / "single", _ingest(dataset, fx.raw, base / "single"))
    return out


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("dataset", sorted(FIXTURES))
def test_merge_is_byte_identical_to_one_ingest(singles, tmp_path, dataset, n):
    raw, single, whole = singles[dataset]
    reports = [_ingest(dataset, raw, tmp_path, Part(i, n)) for i in range(n)]
    # The parts split the inputs: every sample and every reject or skipped file in exactly one part.
    assert sum(r.samples for r in reports) == whole.samples
    assert sum(r.rejects + r.skipped for r in reports) == whole.rejects + whole.skipped
    for i in range(n):
        part_dir = tmp_path / "shards" / f"{dataset}.part-{i}-of-{n}" / dataset
        assert (part_dir / "part.parquet").is_file() and not list(part_dir.glob(".*.outputs.json"))
        assert verify(part_dir) == []  # a part is an ordinary dataset folder
    report = merge(dataset, shards_root=tmp_path / "shards", manifests_root=tmp_path / "manifests")
    assert (report.samples, report.rejects, report.skipped, report.shards) == (
        whole.samples,
        whole.rejects,
        whole.skipped,
        whole.shards,
    )
    merged = _files(tmp_path / "shards", tmp_path / "manifests", dataset)
    assert merged == _files(single / "shards", single / "manifests", dataset)
    assert verify(tmp_path / "shards" / dataset) == []
    assert all((tmp_path / "shards" / f"{dataset}.part-{i}-of-{n}").is_dir() for i in range(n))  # left in place


def test_a_user_source_merges_exactly_too(tmp_path):
    """``ingest folder --name`` data: the merged index.json records the source's kind and options as one run does."""
    import cv2
    import numpy as np

    from plankton_data.ingest.adapters import make_source

    rng = np.random.default_rng(3)
    raw = tmp_path / "raw"
    for i in range(11):
        (raw / f"class_{i % 3}").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(raw / f"class_{i % 3}" / f"{i}.png"), rng.integers(0, 255, (20 + i, 30), np.uint8))
    (raw / "class_0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # a reject
    (raw / "notes.txt").write_text("not an image")  # skipped

    def run(root: Path, part: Part | None) -> None:
        _ingest(make_source("folder", "lab_scope"), raw, root, part)

    run(tmp_path / "single", None)
    for i in range(2):
        run(tmp_path / "parts", Part(i, 2))
    report = merge(
        "lab_scope", shards_root=tmp_path / "parts" / "shards", manifests_root=tmp_path / "parts" / "manifests"
    )
    assert report.rejects == 1 and report.skipped == 1
    single = _files(tmp_path / "single" / "shards", tmp_path / "single" / "manifests", "lab_scope")
    assert _files(tmp_path / "parts" / "shards", tmp_path / "parts" / "manifests", "lab_scope") == single
    assert read_index(tmp_path / "parts" / "shards" / "lab_scope").args["source"]["kind"] == "folder"


def test_parts_are_chosen_by_a_stable_hash_of_the_source():
    # Pinned values (the first 8 bytes of sha256, mod N): the same on every machine, Python version and process,
    # unlike Python's hash(), which is salted per process.
    assert [part_of(s, 16) for s in ("train/copepod/1.jpg", "a", "")] == [0, 10, 4]
    assert part_of("a", 16) == int.from_bytes(hashlib.sha256(b"a").digest()[:8], "big") % 16
    cmd = "from plankton_data.ingest.parts import part_of; print(part_of('a', 16))"
    other = subprocess.run([sys.executable, "-c", cmd], capture_output=True, text=True, env={"PYTHONHASHSEED": "7"})
    assert other.stdout.strip() == "10"
    assert Part.parse("3/16") == Part(3, 16) and Part.parse(" 0 / 1 ") == Part(0, 1)
    for bad in ("3", "a/b", "-1/2", "1/2/3"):
        with pytest.raises(PartError, match="expected I/N"):
            Part.parse(bad)
    with pytest.raises(PartError, match=r"I must be in 0\.\.1"):
        Part.parse("2/2")
    with pytest.raises(PartError, match="at least 1"):
        Part.parse("0/0")


def test_a_killed_part_run_resumes_and_still_merges_exactly(singles, tmp_path):
    raw, single, _ = singles["kaggle"]
    calls = []

    def stop_after_one_tar(done, total):
        calls.append(done)
        if len(calls) == 2:  # the first call reports 0 done; the second comes after the first tar
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _ingest("kaggle", raw, tmp_path, Part(0, 2), progress=stop_after_one_tar)
    staging = list((tmp_path / "shards" / "kaggle.part-0-of-2").glob(".kaggle.staging-*"))
    assert len(staging) == 1 and list(staging[0].glob(".*.outputs.json"))
    resumed = _ingest("kaggle", raw, tmp_path, Part(0, 2))
    assert resumed.resumed_shards == 1
    _ingest("kaggle", raw, tmp_path, Part(1, 2))
    merge("kaggle", shards_root=tmp_path / "shards", manifests_root=tmp_path / "manifests", clean=True)
    assert _files(tmp_path / "shards", tmp_path / "manifests", "kaggle") == _files(
        single / "shards", single / "manifests", "kaggle"
    )
    assert not list((tmp_path / "shards").glob("kaggle.part-*")), "--clean removes the parts"
    assert not list((tmp_path / "manifests").glob("kaggle.part-*"))


def test_merge_refuses_missing_or_mismatched_parts(singles, tmp_path):
    raw = singles["ude_diatoms"][0]
    roots = {"shards_root": tmp_path / "shards", "manifests_root": tmp_path / "manifests"}
    with pytest.raises(PartError, match="no parts of ude_diatoms"):
        merge("ude_diatoms", **roots)
    _ingest("ude_diatoms", raw, tmp_path, Part(0, 3))
    _ingest("ude_diatoms", raw, tmp_path, Part(2, 3))
    with pytest.raises(PartError, match=r"part 1/3 of ude_diatoms is missing"):
        merge("ude_diatoms", **roots)
    ingest(
        "ude_diatoms",
        raw,
        **roots,
        config=PreprocessConfig(size=32),  # another plan
        records_per_shard=PER_SHARD,
        workers=1,
        part=Part(1, 3),
    )
    with pytest.raises(PartError, match=r"parts of different plans: part 1/3 .* differs .* in config, plan"):
        merge("ude_diatoms", **roots)
    _ingest("ude_diatoms", raw, tmp_path, Part(1, 3))  # rerun with the same settings: now it merges
    _ingest("ude_diatoms", raw, tmp_path, Part(0, 2))
    with pytest.raises(PartError, match="split in 2 and in 3 parts"):
        merge("ude_diatoms", **roots)
    assert isinstance(PartError("x"), PlanktonError)  # the CLIs print it as one line


def test_merge_refuses_parts_of_another_version(singles, tmp_path):
    from dataclasses import replace

    from plankton_data.format.index import write_index

    raw = singles["zoolake"][0]
    for i in range(2):
        _ingest("zoolake", raw, tmp_path, Part(i, 2))
    folder = tmp_path / "shards" / "zoolake.part-1-of-2" / "zoolake"
    write_index(replace(read_index(folder), version="0.0.1"), folder)
    with pytest.raises(PartError, match=r"part 1/2 of zoolake differs from part 0/2 in version"):
        merge("zoolake", shards_root=tmp_path / "shards", manifests_root=tmp_path / "manifests")


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(PD), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_console_script_parts_merge_and_one_line_errors(singles, tmp_path):
    raw, single, _ = singles["pmid2019"]
    common = ["--size", "48", "--records-per-shard", str(PER_SHARD), "-w", "1"]
    for i in range(2):
        done = _run("ingest", "pmid2019", "--raw", str(raw), "--part", f"{i}/2", *common, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    done = _run("merge", "pmid2019", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "samples" in done.stdout
    assert _files(tmp_path / "shards", tmp_path / "manifests", "pmid2019") == _files(
        single / "shards", single / "manifests", "pmid2019"
    )
    assert (
        read_index(tmp_path / "shards" / "pmid2019").args["plan"]
        == read_index(single / "shards" / "pmid2019").args["plan"]
    )
    manifest = pd.read_parquet(tmp_path / "manifests" / "pmid2019.parquet")
    assert manifest.shard.str.startswith("pmid2019/pmid2019-").all()
    for args, message in (
        (["ingest", "pmid2019", "--raw", str(raw), "--part", "2/2"], "I must be in 0..1"),
        (["ingest", "pmid2019", "--raw", str(raw), "--part", "half"], "expected I/N"),
        (["merge", "kaggle"], "no parts of kaggle"),
    ):
        done = _run(*args, cwd=tmp_path)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in done.stderr, done.stderr
    (tmp_path / "shards" / "pmid2019.part-1-of-2" / "pmid2019" / "index.json").unlink()
    done = _run("merge", "pmid2019", cwd=tmp_path)
    assert done.returncode == 1 and "part 1/2 of pmid2019 is missing" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
