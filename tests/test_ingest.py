"""Ingest end to end on the built-in sample data of every registered dataset (the contract test), plus
determinism, atomic resume after a real kill, and the CLI's one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import webdataset as wds

from plankton_data.errors import CorruptArchive, MissingRawData, UnknownDataset
from plankton_data.fixtures import FIXTURES, write_fixture, write_kaggle_ncei
from plankton_data.fixtures.own_data import OWN_FIXTURES
from plankton_data.format.index import read_index
from plankton_data.format.manifest import read_manifest
from plankton_data.ingest import ingest
from plankton_data.ingest.adapters import DATASET_IDS, SOURCE_KINDS, get_adapter, make_source
from tests.helpers import big_kaggle_zip

CLI = [sys.executable, "-m", "plankton_data"]


#: The user-data sources' fixtures are ingested under these names, in the same contract test.
OWN = {f"my_{kind}": kind for kind in SOURCE_KINDS}


@pytest.fixture(scope="session")
def ingested(tmp_path_factory):
    """Every dataset's fixture and every user-data source's, ingested once at 64 px:
    {dataset or name: (FixtureInfo, IngestReport, out_dir)}."""
    base = tmp_path_factory.mktemp("ingest")
    runs = {}
    for dataset in (*DATASET_IDS, *OWN):
        if dataset in OWN:
            fx, options = OWN_FIXTURES[OWN[dataset]](base / "raw", 0)
            source = make_source(OWN[dataset], dataset, **options)
        else:
            fx, source = write_fixture(dataset, base / "raw"), dataset
        report = ingest(
            source,
            fx.raw,
            shards_root=base / "shards",
            manifests_root=base / "manifests",
            workers=1,
            records_per_shard=4,
            config=_cfg(64),
        )
        runs[dataset] = (fx, report, base)
    return runs


def _cfg(size: int):
    from plankton_data.ingest.preprocess import PreprocessConfig

    return PreprocessConfig(size=size)


def test_every_registered_dataset_and_source_has_a_fixture():
    assert set(FIXTURES) == set(DATASET_IDS)
    assert set(OWN_FIXTURES) == set(SOURCE_KINDS)


@pytest.mark.parametrize("dataset", [*DATASET_IDS, *OWN])
def test_contract(ingested, dataset):
    fx, report, base = ingested[dataset]
    # Counts reconcile with what the fixture wrote: inputs = samples + rejects (+ skipped non-images).
    assert (report.samples, report.rejects, report.skipped) == (fx.samples, fx.rejects, fx.skipped)
    assert report.classes == {k: v for k, v in fx.classes.items() if v}
    df = pd.read_parquet(base / "manifests" / f"{dataset}.parquet")
    rejects = pd.read_parquet(base / "manifests" / f"{dataset}.rejects.parquet")
    assert len(df) == fx.samples and (rejects.kind == "reject").sum() == fx.rejects
    assert rejects.reason.str.len().gt(0).all()
    assert df.split.value_counts().to_dict() == {k: v for k, v in fx.splits.items() if v}
    assert (df.dataset == dataset).all() and df.key.is_unique
    assert df.key.str.match(rf"^{dataset}_[0-9a-f]{{16}}$").all()
    assert ((df.width == 64) & (df.height == 64)).all()
    # Every manifest row points at exactly its image bytes inside its tar.
    for row in df.itertuples():
        with open(base / "shards" / row.shard, "rb") as fh:
            fh.seek(row.offset)
            data = fh.read(row.length)
        assert hashlib.sha256(data).hexdigest() == row.image_sha256
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        assert img.shape == (64, 64)  # grayscale, square
        assert json.loads(row.preprocess)["version"] and isinstance(json.loads(row.meta), dict)
    # Plain webdataset reads the shards: same keys, labels in the json member.
    index = read_index(base / "shards" / dataset)
    urls = [str(base / "shards" / dataset / s.name) for s in index.shards]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
    assert sorted(s["__key__"] for s in samples) == sorted(df.key)
    by_key = df.set_index("key")
    assert all(s["json"]["label"] == by_key.loc[s["__key__"], "label"] for s in samples)
    assert index.total == len(df) == sum(s.count for s in index.shards)
    assert 0 < index.mean < 1 and 0 < index.std < 0.5
    assert index.dataset_stats == {dataset: [index.mean, index.std]}
    assert read_manifest(base / "manifests" / f"{dataset}.parquet").num_rows == len(df)


def test_dataset_specific_columns(ingested):
    _, _, base = ingested["daplankton"]
    dap = pd.read_parquet(base / "manifests" / "daplankton.parquet")
    assert set(dap.subset) == {"lab", "sea"} and set(dap.instrument) == {"CS", "FC", "IFCB"}
    assert dap.groupby("instrument").source.apply(lambda s: s.str.lower().str[-4:].unique().tolist()).to_dict() == {
        "CS": [".jpg"],
        "FC": [".png"],
        "IFCB": [".png"],
    }
    basenames = dap.source.str.rsplit("/", n=1).str[-1]
    assert basenames.duplicated().any()  # identical basenames in several folders stay distinct samples
    pmid = pd.read_parquet(base / "manifests" / "pmid2019.parquet")
    assert pmid.crop_x0.notna().all() and (pmid.crop_x1 <= pmid.orig_width).all()
    assert (pmid.label == pmid.label_raw.str.strip().str.lower().str.replace(" ", "_")).all()
    assert pmid.source.str.contains("#box").all()
    zoo = pd.read_parquet(base / "manifests" / "zoolake.parquet")
    assert all("features" in json.loads(m) for m in zoo.meta)
    ifcb = pd.read_parquet(base / "manifests" / "syke_ifcb.parquet")
    assert "Cryptophyceae-Teleaulax" in set(ifcb.label_raw)  # the folder, not the file name
    assert "cryptophyceae_teleaulax" in set(ifcb.label)
    kag = pd.read_parquet(base / "manifests" / "kaggle.parquet")
    assert (kag[kag.split == "unlabeled"].label == "").all()
    ude = pd.read_parquet(base / "manifests" / "ude_diatoms.parquet")
    rej = pd.read_parquet(base / "manifests" / "ude_diatoms.rejects.parquet")
    assert {"CSV row whose image file is missing", "image has no row in the annotation CSV"} <= set(rej.reason)
    assert len(ude) > 0


def test_zooscan_legend_is_removed_from_stored_images(ingested, tmp_path):
    fx, _, _ = ingested["syke_zooscan"]
    report = ingest("syke_zooscan", fx.raw, shards_root=tmp_path / "s", manifests_root=tmp_path / "m", config=_cfg(0))
    df = pd.read_parquet(report.manifest)
    for row in df.itertuples():
        with open(tmp_path / "s" / row.shard, "rb") as fh:
            fh.seek(row.offset)
            img = cv2.imdecode(np.frombuffer(fh.read(row.length), np.uint8), cv2.IMREAD_GRAYSCALE)
        # Native size is kept (size 0): the vignette sits centred; its bottom-left footer must be clean.
        h, w = row.orig_height, row.orig_width
        side = max(h, w)
        y0, x0 = (side - h) // 2, (side - w) // 2
        footer = img[y0 + h - 25 : y0 + h, x0 : x0 + min(w, 120)]
        assert footer.min() >= 240, row.source  # JPEG q95 leaves faint ringing at most


def test_png_variant_and_ncei_layout(tmp_path):
    from plankton_data.fixtures import write_syke_zooscan

    fx = write_syke_zooscan(tmp_path / "raw", png=True)
    report = ingest("syke_zooscan", fx.raw, shards_root=tmp_path / "s", manifests_root=tmp_path / "m", config=_cfg(32))
    assert report.samples == fx.samples and set(pd.read_parquet(report.manifest).split) - {""}
    ncei = write_kaggle_ncei(tmp_path / "raw")
    report = ingest("kaggle", ncei.raw, shards_root=tmp_path / "s", manifests_root=tmp_path / "m", config=_cfg(32))
    assert report.samples == ncei.samples and report.classes == ncei.classes


def _tree_digest(base: Path, dataset: str) -> dict[str, str]:
    files = sorted((base / "shards" / dataset).iterdir()) + [base / "manifests" / f"{dataset}.parquet"]
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def test_byte_identical_for_any_worker_count_and_rerun(tmp_path):
    raw = big_kaggle_zip(tmp_path / "train.zip", 400)  # enough batches for a real 2- and 3-process pool
    for name, workers in (("a", 1), ("b", 2), ("c", 3)):
        ingest(
            "kaggle",
            raw,
            shards_root=tmp_path / name / "shards",
            manifests_root=tmp_path / name / "manifests",
            workers=workers,
            records_per_shard=150,
            config=_cfg(48),
        )
    a, b, c = (_tree_digest(tmp_path / n, "kaggle") for n in "abc")
    assert a == b == c and len(a) == 5  # 3 tars, index.json, manifest
    # Rerun into the same folders: same bytes, no leftovers.
    ingest(
        "kaggle",
        raw,
        shards_root=tmp_path / "a" / "shards",
        manifests_root=tmp_path / "a" / "manifests",
        workers=2,
        records_per_shard=150,
        config=_cfg(48),
    )
    assert _tree_digest(tmp_path / "a", "kaggle") == a
    assert sorted(p.name for p in (tmp_path / "a" / "shards").iterdir()) == ["kaggle"]


@pytest.mark.slow  # a real SIGKILL mid-ingest, then the rerun
def test_killed_run_leaves_no_partial_output_and_rerun_completes(tmp_path):
    raw = big_kaggle_zip(tmp_path / "train.zip", 3000)
    args = ["ingest", "kaggle", "--raw", str(raw), "--records-per-shard", "100", "--workers", "1"]
    ref = tmp_path / "ref"
    subprocess.run(
        CLI + args + ["--shards", str(ref / "shards"), "--manifests", str(ref / "manifests")],
        check=True,
        capture_output=True,
    )
    out = tmp_path / "out"
    proc = subprocess.Popen(
        CLI + args + ["--shards", str(out / "shards"), "--manifests", str(out / "manifests")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while time.time() < deadline and len(list((out / "shards").glob(".kaggle.staging-*/*.rows.parquet"))) < 3:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = list((out / "shards").glob(".kaggle.staging-*/*.rows.parquet"))
    assert 3 <= len(finished) < 30, "the kill must land mid-run"
    # Nothing under a final name: no manifest, no shard folder; only staging with complete shards.
    assert not (out / "manifests" / "kaggle.parquet").exists() and not (out / "shards" / "kaggle").exists()
    for sidecar in finished:
        tar = sidecar.with_name(sidecar.name.removesuffix(".rows.parquet"))
        assert tar.is_file()
    res = subprocess.run(
        CLI + args + ["--shards", str(out / "shards"), "--manifests", str(out / "manifests")],
        check=True,
        capture_output=True,
        text=True,
    )
    assert "resumed" in res.stdout
    assert _tree_digest(out, "kaggle") == _tree_digest(ref, "kaggle")


def test_truncated_and_corrupt_images_are_rejects_with_reasons(tmp_path):
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(128, 60, (300, 300)), 0, 255).astype(np.uint8)
    jpg = cv2.imencode(".jpg", img)[1].tobytes()
    png = cv2.imencode(".png", img)[1].tobytes()
    raw = tmp_path / "train.zip"
    with zipfile.ZipFile(raw, "w") as zf:
        zf.writestr("train/a/1.jpg", jpg)
        zf.writestr("train/a/2.jpg", jpg[: len(jpg) * 2 // 3])
        zf.writestr("train/a/3.png", png[: len(png) // 2])
        zf.writestr("train/a/4.jpg", b"not an image at all")
        zf.writestr("train/a/5.jpg", b"")
    report = ingest("kaggle", raw, shards_root=tmp_path / "s", manifests_root=tmp_path / "m", config=_cfg(32))
    assert (report.samples, report.rejects) == (1, 4)
    reasons = dict(pd.read_parquet(report.rejects_path)[["source", "reason"]].values)
    assert "truncated JPEG" in reasons["train.zip/train/a/2.jpg"]
    assert "truncated PNG" in reasons["train.zip/train/a/3.png"]
    assert (
        "cannot decode" in reasons["train.zip/train/a/4.jpg"] and "cannot decode" in reasons["train.zip/train/a/5.jpg"]
    )


def test_library_errors():
    with pytest.raises(UnknownDataset, match="choose one of"):
        get_adapter("kagle")


@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown", "unknown dataset 'kagle'"),
        ("missing", "does not exist"),
        ("wrong", "does not hold Lake Zooplankton"),
        ("corrupt", "not a readable zip"),
    ],
)
def test_cli_bad_input_is_one_line_and_nonzero(tmp_path, case, message):
    fx = write_fixture("kaggle", tmp_path / "raw")
    corrupt = tmp_path / "train.zip"
    corrupt.write_bytes((fx.raw / "train.zip").read_bytes()[:300])
    argv = {
        "unknown": ["ingest", "kagle", "--raw", str(fx.raw)],
        "missing": ["ingest", "kaggle", "--raw", str(tmp_path / "nope")],
        "wrong": ["ingest", "zoolake", "--raw", str(fx.raw)],
        "corrupt": ["ingest", "kaggle", "--raw", str(corrupt)],
    }[case]
    res = subprocess.run(CLI + argv + ["--shards", str(tmp_path / "s")], capture_output=True, text=True)
    assert res.returncode == 1
    assert message in res.stderr and "Traceback" not in res.stderr + res.stdout
    assert len(res.stderr.strip().splitlines()) <= 2  # one message (a long path may wrap once)


def test_exceptions_are_typed(tmp_path):
    with pytest.raises(MissingRawData):
        ingest("kaggle", tmp_path / "nope", shards_root=tmp_path, manifests_root=tmp_path)
    bad = tmp_path / "x.zip"
    bad.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(CorruptArchive):
        ingest("kaggle", bad, shards_root=tmp_path, manifests_root=tmp_path)


def test_cli_help_and_version():
    for argv in (["--help"], ["ingest", "--help"], ["datasets", "--help"], ["demo", "--help"], ["--version"]):
        res = subprocess.run(CLI + argv, capture_output=True, text=True)
        assert res.returncode == 0 and res.stdout.strip(), argv
