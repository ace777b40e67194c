"""Ingest of the REAL published files in ../shared/realdata (skipped cleanly where they are absent)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import pandas as pd
import pytest

from plankton_data.ingest import ingest
from plankton_data.ingest.preprocess import PreprocessConfig
from tests.conftest import REALDATA

KAGGLE = REALDATA / "kaggle"
ZOOLAKE = REALDATA / "lake_zooplankton" / "data.zip"
ZOOSCAN = REALDATA / "zooscan"
IFCB = REALDATA / "ifcb" / "nodc-sweden__ifcb-pytorch-classify" / "tests" / "fixtures" / "training_data"
SMALL = PreprocessConfig(size=64)  # counts and labels do not depend on the output size

pytestmark = pytest.mark.realdata


@pytest.mark.skipif(not (KAGGLE / "train.zip").is_file(), reason="real Kaggle train.zip absent")
def test_kaggle_train_zip_gives_30336_samples_in_121_classes(tmp_path):
    report = ingest(
        "kaggle",
        KAGGLE / "train.zip",
        shards_root=tmp_path / "s",
        manifests_root=tmp_path / "m",
        config=SMALL,
        workers=2,
    )
    assert report.samples == 30_336 and report.rejects == 0
    assert len(report.classes) == 121
    header = (REALDATA.parent / "reference" / "kaggle_submission_header.csv").read_text().strip().split(",")[1:]
    if header:
        assert set(report.classes) == set(header)
    df = pd.read_parquet(report.manifest)
    assert (df.split == "train").all() and df.label_raw.ne("").all()


@pytest.mark.skipif(not (KAGGLE / "test.zip").is_file(), reason="real Kaggle test.zip absent")
def test_kaggle_test_zip_is_ingested_unlabelled(tmp_path):
    with zipfile.ZipFile(KAGGLE / "test.zip") as zf:
        n_images = sum(n.endswith(".jpg") for n in zf.namelist())
    report = ingest(
        "kaggle",
        KAGGLE / "test.zip",
        shards_root=tmp_path / "s",
        manifests_root=tmp_path / "m",
        config=SMALL,
        workers=2,
    )
    assert report.samples == n_images == 5016
    df = pd.read_parquet(report.manifest)
    assert (df.split == "unlabeled").all() and (df.label == "").all()


@pytest.mark.skipif(not ZOOLAKE.is_file(), reason="real ZooLake data.zip absent")
def test_zoolake_one_sample_per_jpeg_labelled_by_class_folder(tmp_path):
    with zipfile.ZipFile(ZOOLAKE) as zf:
        jpegs = [n for n in zf.namelist() if n.endswith(".jpeg")]
        with_tsv = {PurePosixPath(n).parent.name for n in zf.namelist() if n.endswith("/features.tsv")}
    report = ingest(
        "zoolake", ZOOLAKE, shards_root=tmp_path / "s", manifests_root=tmp_path / "m", config=SMALL, workers=2
    )
    assert report.samples == len(jpegs) and report.rejects == 0
    df = pd.read_parquet(report.manifest)
    expected = {f"data.zip/{n}": PurePosixPath(n).parent.parent.name for n in jpegs}
    assert dict(zip(df.source, df.label_raw, strict=True)) == expected
    # features.tsv rows are joined by basename for every class that ships one (this copy lacks dinobryon's).
    has_features = df.meta.map(lambda m: "features" in json.loads(m))
    assert (has_features == df.label_raw.isin(with_tsv)).all() and has_features.sum() > 5000


def _zip_from(files: list[tuple[str, Path]], dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for name, path in files:
            zf.write(path, name)
    return dest


@pytest.mark.skipif(not ZOOSCAN.is_dir(), reason="real ZooProcess vignettes absent")
def test_real_zooscan_vignettes_lose_their_legend_through_ingest(tmp_path):
    files = sorted(ZOOSCAN.glob("jiho__zooprocess_ai_demo/images/*.jpg"))
    prefix = "SYKE-plankton_ZooScan_2024/images/SYKE-plankton_ZooScan_2024/Copepoda_calanoida/"
    raw = _zip_from([(prefix + f.name, f) for f in files], tmp_path / "zooscan.zip")
    report = ingest(
        "syke_zooscan",
        raw,
        shards_root=tmp_path / "s",
        manifests_root=tmp_path / "m",
        config=PreprocessConfig(size=0, image_format="png"),
    )
    assert report.samples == len(files)
    for row in pd.read_parquet(report.manifest).itertuples():
        with open(tmp_path / "s" / row.shard, "rb") as fh:
            fh.seek(row.offset)
            img = cv2.imdecode(np.frombuffer(fh.read(row.length), np.uint8), cv2.IMREAD_GRAYSCALE)
        src = cv2.imread(str(ZOOSCAN / "jiho__zooprocess_ai_demo" / "images" / Path(row.source).name), 0)
        h, w = src.shape
        side = max(h, w)
        y0, x0 = (side - h) // 2, (side - w) // 2
        stored = img[y0 : y0 + h, x0 : x0 + w]  # lossless PNG: the vignette itself, legend removed
        assert stored[h - 25 :, : min(w, 120)].min() >= 250, row.source
        assert np.array_equal(stored[: h - 31], src[: h - 31]), "organism changed"


@pytest.mark.skipif(not IFCB.is_dir(), reason="real IFCB PNGs absent")
def test_real_ifcb_pngs_in_the_syke_layout(tmp_path):
    files = sorted(IFCB.glob("*/*.png"))
    raw = _zip_from([(f"labeled_20201020/{f.parent.name}/{f.name}", f) for f in files], tmp_path / "ifcb.zip")
    report = ingest("syke_ifcb", raw, shards_root=tmp_path / "s", manifests_root=tmp_path / "m", config=SMALL)
    assert report.samples == len(files)
    assert report.classes == {c: sum(f.parent.name == c for f in files) for c in {f.parent.name for f in files}}
