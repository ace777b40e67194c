"""The user's own data: ``plankton-data ingest folder|csv|ecotaxa|ifcb --name NAME`` and the rest of the chain.

The contract (counts, schema, offsets, webdataset) is in ``tests/test_ingest.py::test_contract`` with the built-in
datasets; here: what each source must do beyond it, the real files in ../shared/realdata, bad input, and the
user dataset going through shard sets, stats, verify, preview and splits.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from plankton_data.errors import PlanktonDataError
from plankton_data.fixtures.own_data import OWN_FIXTURES, ifcb_bin
from plankton_data.format.index import read_index
from plankton_data.ingest import ifcb, ingest
from plankton_data.ingest.adapters import make_source
from plankton_data.ingest.adapters.ecotaxa import read_ecotaxa_tsv
from plankton_data.ingest.preprocess import PreprocessConfig
from tests.conftest import REALDATA

CLI = [sys.executable, "-m", "plankton_data"]
CFG = PreprocessConfig(size=64)


def _ingest(kind: str, raw: Path, out: Path, name: str | None = None, workers: int = 1, **options):
    return ingest(
        make_source(kind, name or f"my_{kind}", **options),
        raw,
        shards_root=out / "shards",
        manifests_root=out / "manifests",
        config=CFG,
        workers=workers,
        records_per_shard=3,
    )


def _outputs(out: Path, name: str) -> dict[str, str]:
    """sha256 of every file a run wrote for dataset ``name``."""
    files = [*sorted((out / "shards" / name).iterdir()), *sorted((out / "manifests").glob(f"{name}.*"))]
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("kind", ["folder", "ifcb"])
def test_byte_identical_for_any_worker_count_and_rerun(tmp_path, kind):
    fx, options = OWN_FIXTURES[kind](tmp_path / "raw", 0)
    one = _ingest(kind, fx.raw, tmp_path / "w1", **options)
    two = _ingest(kind, fx.raw, tmp_path / "w2", workers=2, **options)
    assert (
        (one.samples, one.rejects, one.skipped)
        == (two.samples, two.rejects, two.skipped)
        == (
            fx.samples,
            fx.rejects,
            fx.skipped,
        )
    )
    first = _outputs(tmp_path / "w1", f"my_{kind}")
    assert first == _outputs(tmp_path / "w2", f"my_{kind}")
    _ingest(kind, fx.raw, tmp_path / "w1", **options)  # a rerun of the same plan changes nothing
    assert _outputs(tmp_path / "w1", f"my_{kind}") == first


def test_folder_labels_levels_zip_and_unlabelled(tmp_path):
    fx, _ = OWN_FIXTURES["folder"](tmp_path / "raw", 0)
    _ingest("folder", fx.raw, tmp_path / "a")
    df = pd.read_parquet(tmp_path / "a/manifests/my_folder.parquet")
    assert set(df.label_raw) == {"Daphnia", "Bosmina", "Keratella"} and (df.dataset == "my_folder").all()
    assert {Path(s).suffix for s in df.source} == {".JPG", ".png", ".tif", ".BMP", ".jpeg"}
    rejects = pd.read_parquet(tmp_path / "a/manifests/my_folder.rejects.parquet")
    reasons = dict(zip(rejects.source, rejects.reason, strict=True))
    assert (
        "cannot decode" in reasons["2024/Keratella/broken.png"] or "truncated" in reasons["2024/Keratella/broken.png"]
    )
    assert "already read" in reasons["2024/Keratella/back_to_top"] and "junk" in reasons["2024/.DS_Store"]
    assert reasons["README.txt"].startswith("not an image")
    # one level up: the year folders
    _ingest("folder", fx.raw, tmp_path / "b", label_level=2)
    assert set(pd.read_parquet(tmp_path / "b/manifests/my_folder.parquet").label_raw) == {"2023", "2024"}
    _ingest("folder", fx.raw, tmp_path / "c", unlabelled=True, strip_legend=True)
    c = pd.read_parquet(tmp_path / "c/manifests/my_folder.parquet")
    assert (c.label_raw == "").all() and all(json.loads(p)["steps"][0] == "zooprocess_legend" for p in c.preprocess)
    # the same images in a zip: the same labels and pixels
    archive = tmp_path / "mine.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(fx.raw.rglob("*")):
            if f.is_file() and not f.is_symlink() and "back_to_top" not in f.parts:
                zf.write(f, f.relative_to(fx.raw).as_posix())
    _ingest("folder", archive, tmp_path / "z")
    z = pd.read_parquet(tmp_path / "z/manifests/my_folder.parquet")
    assert sorted(zip(z.label_raw, z.pixel_sha256, strict=True)) == sorted(
        zip(df.label_raw, df.pixel_sha256, strict=True)
    )


def test_ifcb_rois_names_meta_and_pixel_identity(tmp_path):
    fx, options = OWN_FIXTURES["ifcb"](tmp_path / "raw", 0)
    _ingest("ifcb", fx.raw, tmp_path, **options)
    df = pd.read_parquet(tmp_path / "manifests/my_ifcb.parquet").set_index("source")
    assert df.loc["D20240101T000000_IFCB999_00001", "label_raw"] == "Skeletonema"
    assert df.loc["D20240101T000000_IFCB999_00004", "label_raw"] == "Dinobryon"
    assert "D20240103T060000_IFCB999_00002" in df.index  # the bin inside the zip
    meta = json.loads(df.loc["D20240101T000000_IFCB999_00002", "meta"])
    assert meta["bin"] == "D20240101T000000_IFCB999" and meta["roi"] == 2
    assert meta["ml_analyzed"] == pytest.approx(4.75) and meta["sample_volume_ml"] == 5
    # pixel_sha256 is the shared definition over the ROI's own pixels (before padding)
    base = fx.raw / "2024/D20240101/D20240101T000000_IFCB999"
    header = ifcb.parse_header(Path(f"{base}.hdr").read_text())
    scan = ifcb.scan_adc(Path(f"{base}.adc").read_text(), ifcb.adc_columns(header))
    roi_bytes = Path(f"{base}.roi").read_bytes()
    for r in scan.rois:
        px = ifcb.roi_pixels(roi_bytes, r)
        want = hashlib.sha256(px.shape[0].to_bytes(4, "little") + px.shape[1].to_bytes(4, "little") + px.tobytes())
        name = ifcb.roi_name("D20240101T000000_IFCB999", r.number)
        assert df.loc[name, "pixel_sha256"] == want.hexdigest()
        assert (df.loc[name, "orig_width"], df.loc[name, "orig_height"]) == (r.width, r.height)
    rejects = pd.read_parquet(tmp_path / "manifests/my_ifcb.rejects.parquet").set_index("source")
    assert "fields" in rejects.loc["D20240101T000000_IFCB999_00006", "reason"]
    assert "past the end" in rejects.loc["D20240102T120000_IFCB999_00003", "reason"]
    assert "no .roi" in rejects.loc["2024/D20240104/D20240104T000000_IFCB999.hdr", "reason"]
    assert "no image" in rejects.loc["D20240103T060000_IFCB999_00001", "reason"]
    # one bin given by one of its files
    one = _ingest("ifcb", Path(f"{base}.adc"), tmp_path / "one", name="one_bin")
    assert one.samples == 4 and one.rejects == 1 and one.skipped == 1


def test_ecotaxa_status_rule_type_row_and_legend(tmp_path):
    fx, options = OWN_FIXTURES["ecotaxa"](tmp_path / "raw", 0)
    _ingest("ecotaxa", fx.raw, tmp_path / "a", **options)
    df = pd.read_parquet(tmp_path / "a/manifests/my_ecotaxa.parquet").set_index("source")
    s1 = df.loc["export.zip/export/s1/s1_2.jpg"]  # predicted: unlabelled, status and category kept
    assert s1.label_raw == "" and json.loads(s1.meta)["status"] == "predicted"
    assert json.loads(s1.meta)["category"] == "Cladocera" and json.loads(s1.meta)["pixel_size_mm"] == 0.0106
    assert df.loc["export.zip/export/s1/s1_0.jpg", "label_raw"] == "Copepoda"
    assert all(json.loads(p)["steps"][0] == "zooprocess_legend" for p in df.preprocess)
    _ingest("ecotaxa", fx.raw, tmp_path / "v", status="validated")
    v = pd.read_parquet(tmp_path / "v/manifests/my_ecotaxa.parquet")
    assert sorted(v.label_raw) == ["Cladocera", "Cladocera", "Copepoda", "Copepoda"]
    skipped = pd.read_parquet(tmp_path / "v/manifests/my_ecotaxa.rejects.parquet").query("kind == 'skipped'")
    assert skipped.reason.str.contains("not validated").sum() == 3
    rows = read_ecotaxa_tsv(b"img_file_name\tobject_id\n[t]\t[t]\na.jpg\t1\n", "x.tsv")
    assert rows == [{"img_file_name": "a.jpg", "object_id": "1"}]


@pytest.mark.slow
def test_the_chain_takes_a_user_dataset(tmp_path):
    """shard --include NAME, verify, stats, preview, and plankton-train splits, finetune and predict on it."""
    fx, _ = OWN_FIXTURES["folder"](tmp_path / "raw", 0)
    base = ["--shards", str(tmp_path / "shards"), "--manifests", str(tmp_path / "manifests")]
    res = _cli("ingest", "folder", "--raw", str(fx.raw), "--name", "lab_scope", "--size", "64", *base)
    assert res.returncode == 0, res.stderr
    res = _cli("shard", "--name", "mine", "--include", "lab_scope", "--samples-per-shard", "4", *base)
    assert res.returncode == 0, res.stderr
    index = read_index(tmp_path / "shards/mine")
    assert index.total == 8 and set(index.dataset_stats) == {"lab_scope"}
    res = _cli("verify", str(tmp_path / "shards/mine"))
    assert res.returncode == 0, res.stdout + res.stderr
    res = _cli("stats", "lab_scope", *base)
    assert res.returncode == 0 and "lab_scope" in res.stdout and "Daphnia" in res.stdout
    res = _cli("preview", "lab_scope", "--out", str(tmp_path / "preview.png"), *base)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "preview.png").stat().st_size > 1000
    # the default selection is the built-in datasets only (the paper's sets stay the paper's); --add mixes yours in
    res = _cli("shard", "--name", "paper_only", *base)
    assert res.returncode == 1 and "empty selection" in res.stderr
    res = _cli("shard", "--name", "added", "--add", "lab_scope", "--samples-per-shard", "4", *base)
    assert res.returncode == 0 and read_index(tmp_path / "shards/added").total == 8, res.stderr
    res = _cli("shard", "--name", "lab_scope", *base)
    assert res.returncode == 1 and "dataset id" in res.stderr
    res = _cli("shard", "--name", "x", "--include", "not_ingested", *base)
    assert res.returncode == 1 and "lab_scope" in res.stderr  # the choices include the user dataset
    train = shutil.which("plankton-train", path=str(Path(sys.executable).parent))
    if train is None:
        pytest.skip("plankton-train not installed")
    out = tmp_path / "splits.parquet"
    res = subprocess.run(
        [train, "splits", str(tmp_path / "manifests/lab_scope.parquet"), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert len(pd.read_parquet(out)) > 0
    run = tmp_path / "run"
    args = [
        "finetune",
        "--manifest",
        str(tmp_path / "manifests/lab_scope.parquet"),
        "--shards",
        str(tmp_path / "shards"),
    ]
    args += ["--splits", str(out), "--init", "random", "--arch", "vit_tiny_patch16_224", "--img-size", "32"]
    args += ["--epochs", "1", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--out", str(run)]
    res = subprocess.run([train, *args], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    classes = json.loads((run / "classifier.json").read_text())["classes"]
    assert sorted(classes) == ["bosmina", "daphnia", "keratella"]  # the user's folder names, normalised
    res = subprocess.run([train, "predict", str(run), str(fx.raw), "--out", str(tmp_path / "p.csv")], text=True)
    assert res.returncode == 0
    assert len(pd.read_csv(tmp_path / "p.csv")) == 10  # every decodable image of the folder


def _bad_bins(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    files = ifcb_bin([rng.integers(0, 255, (10, 12), dtype=np.uint8)], when="20240105T000000")
    for ext, blob in files.items():
        (tmp_path / "bins").mkdir(exist_ok=True)
        (tmp_path / "bins" / f"D20240105T000000_IFCB999.{ext}").write_bytes(blob)
    return tmp_path / "bins"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("builtin_name", "is a built-in dataset id"),
        ("bad_name", "must match"),
        ("no_name", "needs --name"),
        ("wrong_option", "not for ingest folder"),
        ("csv_column", "has no column 'file'"),
        ("tsv_no_category", "no object_annotation_category column"),
        ("labels_columns", "has no column 'file_name'"),
        ("only_bin_without_roi", "no sample for ifcb"),
    ],
)
def test_cli_bad_input_is_one_line_and_nonzero(tmp_path, case, message):
    folder, _ = OWN_FIXTURES["folder"](tmp_path / "raw", 0)
    table, _ = OWN_FIXTURES["csv"](tmp_path / "raw", 0)
    out = ["--shards", str(tmp_path / "s"), "--manifests", str(tmp_path / "m")]
    if case == "builtin_name":
        args = ["ingest", "folder", "--raw", str(folder.raw), "--name", "zoolake"]
    elif case == "bad_name":
        args = ["ingest", "folder", "--raw", str(folder.raw), "--name", "My Data"]
    elif case == "no_name":
        args = ["ingest", "folder", "--raw", str(folder.raw)]
    elif case == "wrong_option":
        args = ["ingest", "folder", "--raw", str(folder.raw), "--name", "x", "--path-column", "p"]
    elif case == "csv_column":
        args = ["ingest", "csv", "--raw", str(table.raw), "--name", "x", "--path-column", "file"]
    elif case == "tsv_no_category":
        export = tmp_path / "export"
        export.mkdir()
        (export / "ecotaxa_a.tsv").write_text("img_file_name\tobject_id\na.jpg\t1\n")
        args = ["ingest", "ecotaxa", "--raw", str(export), "--name", "x"]
    elif case == "labels_columns":
        (tmp_path / "labels.csv").write_text("roi,taxon\nx,y\n")
        args = [
            "ingest",
            "ifcb",
            "--raw",
            str(_bad_bins(tmp_path)),
            "--name",
            "x",
            "--labels",
            str(tmp_path / "labels.csv"),
        ]
    else:
        bins = _bad_bins(tmp_path)
        (bins / "D20240105T000000_IFCB999.roi").unlink()
        args = ["ingest", "ifcb", "--raw", str(bins), "--name", "x"]
    res = _cli(*args, *out)
    assert res.returncode == 1, res.stdout + res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_library_refuses_bad_names_and_a_shard_set_in_the_way(tmp_path):
    with pytest.raises(PlanktonDataError, match="built-in"):
        make_source("folder", "kaggle")
    fx, _ = OWN_FIXTURES["folder"](tmp_path / "raw", 0)
    (tmp_path / "shards/taken").mkdir(parents=True)
    (tmp_path / "shards/taken/index.json").write_text(
        json.dumps({"format": "plankton-shards/1", "name": "taken", "kind": "shardset", "image_format": "jpg",
                    "size": 64, "total": 0, "mean": 0, "std": 0, "shards": []})
    )  # fmt: skip
    with pytest.raises(PlanktonDataError, match="is a shardset"):
        _ingest("folder", fx.raw, tmp_path, name="taken")


# --- the real files in ../shared/realdata --------------------------------------------------------------------

IFCB = REALDATA / "ifcb"
CLASSIPYR = IFCB / "EuropeanIFCBGroup__ClassiPyR/tests/testthat/test_data"
needs_real = pytest.mark.skipif(not IFCB.is_dir(), reason="../shared/realdata absent")


@needs_real
@pytest.mark.realdata
def test_real_bins_ingest_with_classipyr_labels(tmp_path):
    labels = CLASSIPYR / "D20220522T000439_IFCB134.csv"
    report = _ingest("ifcb", IFCB, tmp_path, labels=labels)
    df = pd.read_parquet(tmp_path / "manifests/my_ifcb.parquet")
    per_bin = df.source.str.rpartition("_")[0].value_counts().to_dict()
    for bin_id, count in per_bin.items():
        header = ifcb.parse_header(next(IFCB.rglob(f"{bin_id}.hdr")).read_text())
        if "roiCount" in header:
            assert count == int(header["roiCount"])
    assert len(per_bin) == 3 and report.rejects == 0
    published = pd.read_csv(labels)
    by_source = df.set_index("source").label_raw
    for row in published.itertuples():
        assert by_source[row.file_name.removesuffix(".png")] == row.class_name
    # the stored ROIs match the PNGs published beside the bin (contrast-stretched: compare by correlation)
    import cv2

    png_dir = CLASSIPYR / "png" / "D20220522T000439_IFCB134"
    base = CLASSIPYR / "raw/2022/D20220522/D20220522T000439_IFCB134"
    header = ifcb.parse_header(Path(f"{base}.hdr").read_text())
    scan = ifcb.scan_adc(Path(f"{base}.adc").read_text(), ifcb.adc_columns(header))
    roi_bytes = Path(f"{base}.roi").read_bytes()
    checked = 0
    for r in scan.rois:
        png = png_dir / f"{ifcb.roi_name('D20220522T000439_IFCB134', r.number)}.png"
        if png.is_file():
            ours = ifcb.roi_pixels(roi_bytes, r).astype(float).ravel()
            theirs = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE).astype(float).ravel()
            assert np.corrcoef(ours, theirs)[0, 1] > 0.99
            checked += 1
    assert checked >= 5


@needs_real
@pytest.mark.realdata
def test_real_png_folders_and_diatoms_ingest_through_folder(tmp_path):
    smhi = IFCB / "nodc-sweden__ifcb-pytorch-classify"
    report = _ingest("folder", smhi, tmp_path, name="smhi")
    assert report.samples == sum(1 for p in smhi.rglob("*.png")) and report.rejects == 0
    assert set(report.classes) == {p.parent.name for p in smhi.rglob("*.png")}
    diatoms = REALDATA / "diatoms"
    report = _ingest("folder", diatoms, tmp_path, name="diatoms", unlabelled=True)
    images = [p for p in diatoms.rglob("*.png")]
    zipped = sum(1 for z in diatoms.rglob("*.zip") for n in zipfile.ZipFile(z).namelist() if n.endswith(".png"))
    assert report.samples == len(images) + zipped and report.rejects == 0


@needs_real
@pytest.mark.realdata
def test_real_zooprocess_tsvs_parse():
    tsvs = sorted((REALDATA / "zooscan/ecotaxa__ZooProcess-lib/tests/data/features").glob("ecotaxa_*.tsv"))
    assert len(tsvs) == 2
    for tsv in tsvs:
        rows = read_ecotaxa_tsv(tsv.read_bytes(), tsv.name)
        assert len(rows) == 1 and rows[0]["img_file_name"].endswith(".jpg")  # the [t]/[f] row is dropped
        assert float(rows[0]["object_area"]) > 0 and "[t]" not in rows[0].values()
