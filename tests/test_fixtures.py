"""The built-in sample data: each fixture writes its dataset's published layout, and its FixtureInfo
counts agree with what is actually in the archives (computed here independently from member paths)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
import time
import xml.etree.ElementTree as ET
import zipfile
from collections import Counter
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import pytest

from plankton_data.fixtures import FIXTURES, FixtureInfo, write_all, write_fixture, write_kaggle_ncei
from plankton_data.fixtures import kaggle as kaggle_fx
from plankton_data.fixtures._images import ZOOPROCESS_BAR_PX, shared_ifcb_png, zooprocess_vignette
from plankton_data.fixtures.syke_zooscan import write_syke_zooscan

DATASET_IDS = ("kaggle", "zoolake", "syke_zooscan", "pmid2019", "syke_ifcb", "ude_diatoms", "daplankton")
REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
IMAGE_EXT = (".jpg", ".jpeg", ".png")
JUNK = re.compile(r"(^|/)(__MACOSX/|\._|\.DS_Store$|Thumbs\.db$|desktop\.ini$)")


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, FixtureInfo]:
    return write_all(tmp_path_factory.mktemp("fixtures"), seed=0)


def zip_members(data: bytes | Path) -> dict[str, bytes]:
    """Members of a zip (bytes or path), directories left out, in archive order."""
    src = io.BytesIO(data) if isinstance(data, bytes) else data
    with zipfile.ZipFile(src) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist() if not i.is_dir()}


def all_files(raw: Path) -> dict[str, bytes]:
    """Every file under ``raw`` (folder or zip), zips opened recursively; keys are '/'-joined paths."""
    out: dict[str, bytes] = {}

    def add(path: str, data: bytes) -> None:
        if path.lower().endswith(".zip"):
            for name, sub in zip_members(data).items():
                add(f"{path}/{name}", sub)
        else:
            out[path] = data

    if raw.is_dir():
        for f in sorted(p for p in raw.rglob("*") if p.is_file()):
            add(f.relative_to(raw).as_posix(), f.read_bytes())
    else:
        add(raw.name, raw.read_bytes())
    return out


def decode(data: bytes, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray | None:
    return cv2.imdecode(np.frombuffer(data, np.uint8), flags)


def check_counts(info: FixtureInfo, labels: list[tuple[str, str]], rejects: int, skipped: int) -> None:
    assert info.samples == len(labels)
    assert info.classes == dict(Counter(lab for lab, _ in labels))
    assert info.splits == dict(Counter(split for _, split in labels))
    assert (info.rejects, info.skipped) == (rejects, skipped)


# --- registry and generic properties ---------------------------------------------------------------------


def test_registry_has_the_seven_dataset_ids() -> None:
    assert tuple(FIXTURES) == DATASET_IDS
    with pytest.raises(KeyError, match="choose one of"):
        write_fixture("nope", Path("unused"))


@pytest.mark.parametrize("dataset", DATASET_IDS)
def test_info_is_self_consistent(fixtures: dict[str, FixtureInfo], dataset: str) -> None:
    info = fixtures[dataset]
    assert info.raw.exists()
    assert info.samples == sum(info.classes.values()) == sum(info.splits.values()) > 0


@pytest.mark.parametrize("dataset", DATASET_IDS)
def test_images_decode_small_and_non_square(fixtures: dict[str, FixtureInfo], dataset: str) -> None:
    images = {p: d for p, d in all_files(fixtures[dataset].raw).items() if p.lower().endswith(IMAGE_EXT)}
    assert images
    for path, data in images.items():
        if JUNK.search(path) or len(data) == 20:  # the one deliberately truncated Kaggle JPEG
            continue
        img = decode(data)
        assert img is not None, path
        h, w = img.shape[:2]
        assert min(h, w) >= 20 and max(h, w) <= 400, (path, img.shape)
        assert h != w, path


def test_deterministic_small_and_fast(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    a = write_all(tmp_path / "a", seed=0)
    elapsed = time.perf_counter() - t0
    b = write_all(tmp_path / "b", seed=0)
    c = write_all(tmp_path / "c", seed=1)

    def tree(root: Path) -> dict[Path, bytes]:
        return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    files_a, files_b = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert files_a == files_b  # byte-identical on rerun
    for dataset in DATASET_IDS:
        assert a[dataset] == dataclasses.replace(b[dataset], raw=a[dataset].raw)
        assert a[dataset].samples == c[dataset].samples  # the seed changes pixels, not the layout
        assert tree(tmp_path / "a" / dataset) != tree(tmp_path / "c" / dataset)
    assert sum(len(v) for v in files_a.values()) < 2_000_000
    assert elapsed < 10  # about 0.2 s on one core; generous for loaded CI machines


def test_zips_have_fixed_timestamps(fixtures: dict[str, FixtureInfo]) -> None:
    for info in fixtures.values():
        for f in [info.raw] if info.raw.is_file() else sorted(info.raw.rglob("*.zip")):
            with zipfile.ZipFile(f) as zf:
                assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}


# --- Kaggle ------------------------------------------------------------------------------------------------


def test_kaggle_layout(fixtures: dict[str, FixtureInfo]) -> None:
    info = fixtures["kaggle"]
    assert sorted(p.name for p in info.raw.iterdir()) == ["sampleSubmission.csv", "test.zip", "train.zip"]
    train, test = zip_members(info.raw / "train.zip"), zip_members(info.raw / "test.zip")
    labels: list[tuple[str, str]] = []
    train_ids, corrupt = set(), 0
    for name, data in train.items():
        m = re.fullmatch(r"train/([^/]+)/(\d+)\.jpg", name)
        assert m, name
        train_ids.add(m.group(2))
        if decode(data) is None:
            corrupt += 1
            assert len(data) == 20 and data[:2] == b"\xff\xd8"
        else:
            labels.append((m.group(1), "train"))
    test_ids = set()
    for name in test:
        m = re.fullmatch(r"test/(\d+)\.jpg", name)
        assert m, name
        test_ids.add(m.group(1))
        labels.append(("", "unlabeled"))
    assert not train_ids & test_ids
    quirky = {"shrimp-like_other", "copepod_calanoid_frillyAntennae", "echinoderm_larva_pluteus_typeC"}
    assert quirky <= {lab for lab, _ in labels}
    check_counts(info, labels, rejects=corrupt, skipped=0)
    assert corrupt == 1
    for data in list(train.values())[:3]:
        img = decode(data)
        if img is not None:
            assert img.ndim == 2 and int(np.median(img[0])) >= 250  # gray, white background

    rows = list(csv.reader(io.StringIO((info.raw / "sampleSubmission.csv").read_text())))
    assert rows[0] == ["image", *kaggle_fx.SUBMISSION_COLUMNS] and len(rows[0]) == 122
    assert sorted(r[0] for r in rows[1:]) == sorted(f"{i}.jpg" for i in test_ids)
    assert all(len(r) == 122 and r[1] == "0.00826446" for r in rows[1:])


def test_kaggle_header_order_matches_reference() -> None:
    ref = REFERENCE / "kaggle_submission_header.csv"
    if not ref.exists():
        pytest.skip("shared reference header not available")
    assert ["image", *kaggle_fx.SUBMISSION_COLUMNS] == ref.read_text().strip().split(",")
    assert sorted(kaggle_fx.KAGGLE_CLASSES) == list(kaggle_fx.KAGGLE_CLASSES) and len(kaggle_fx.KAGGLE_CLASSES) == 121


def test_kaggle_ncei_layout(tmp_path: Path) -> None:
    info = write_kaggle_ncei(tmp_path)
    assert "kaggle_ncei" not in FIXTURES
    labels = []
    for path in all_files(info.raw):
        m = re.fullmatch(r"0127422/2\.3/data/0-data/FINAL_Plankton_Segments_12082014/([^/]+)/\d+\.jpg", path)
        assert m, path
        labels.append((m.group(1), ""))
    check_counts(info, labels, rejects=0, skipped=0)


# --- ZooLake -----------------------------------------------------------------------------------------------


def test_zoolake_layout(fixtures: dict[str, FixtureInfo]) -> None:
    info = fixtures["zoolake"]
    assert info.raw.name == "data.zip"
    with zipfile.ZipFile(info.raw) as zf:
        assert zf.infolist()[0].filename == "data/Fig_All_plankton_images.png"
    members = zip_members(info.raw)
    assert any(n.startswith("__MACOSX/") for n in members)
    assert any(n.endswith("/.DS_Store") for n in members) and any(n.endswith("/Thumbs.db") for n in members)
    sep = "data/zoolake_train_test_val_separated"
    assert {f"{sep}/classes_ERIC.npy", f"{sep}/Data.pickle"} <= set(members)

    pattern = re.compile(
        r"data/zooplankton_0p5x/([^/]+)/training_data/"
        r"(SPC-EAWAG-0P5X-\d{16}-\d+-\d{6}-\d{3}-\d+-\d+-(\d+)-(\d+)\.jpeg)"
    )
    images: dict[tuple[str, str], bytes] = {}
    for name, data in members.items():
        if name.endswith(".jpeg"):
            m = pattern.fullmatch(name)
            assert m, name
            images[(m.group(1), m.group(2))] = data
            img = decode(data, cv2.IMREAD_COLOR)
            assert img.shape[:2] == (int(m.group(4)), int(m.group(3)))  # name carries ROI w, h
            assert int(img[0, 0].max()) < 30  # dark-field: black background
    assert "keratella_cochlearis" in {c for c, _ in images}

    split_of: dict[tuple[str, str], list[str]] = {}
    for split in ("train", "val", "test"):
        for line in members[f"{sep}/{split}_filenames.txt"].decode().split():
            parts = PurePosixPath(line).parts
            assert line.startswith("/") and parts[-3] in {c for c, _ in images} and parts[-2] == "training_data"
            split_of.setdefault((parts[-3], parts[-1]), []).append(split)
    assert set(split_of) == set(images) and all(len(v) == 1 for v in split_of.values())

    for cls in {c for c, _ in images}:
        text = members[f"data/zooplankton_0p5x/{cls}/features.tsv"].decode()
        rows = list(csv.DictReader(io.StringIO(text), delimiter="\t"))
        header = text.split("\n")[0]
        assert header.startswith("url\ttimestamp\tfile_size\t") and len(header.split("\t")) == 67
        assert {"area", "estimated_volume", "aspect_ratio"} <= set(rows[0])
        assert sorted(PurePosixPath(r["url"]).name for r in rows) == sorted(n for c, n in images if c == cls)
        assert all(r["url"].startswith("images/00000/") for r in rows)
    check_counts(info, [(c, split_of[(c, n)][0]) for c, n in images], rejects=0, skipped=0)


# --- SYKE ZooScan -------------------------------------------------------------------------------------------


def _zooscan_inner(raw: Path) -> tuple[dict[str, bytes], zipfile.ZipInfo]:
    with zipfile.ZipFile(raw) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        assert sorted(infos) == [
            "SYKE-plankton_ZooScan_2024/SYKE-plankton_ZooScan_2024.zip",
            "SYKE-plankton_ZooScan_2024/readme.md",
        ]
        inner_info = infos["SYKE-plankton_ZooScan_2024/SYKE-plankton_ZooScan_2024.zip"]
        return zip_members(zf.read(inner_info)), inner_info


@pytest.mark.parametrize("png", [False, True])
def test_syke_zooscan_layout(fixtures: dict[str, FixtureInfo], tmp_path: Path, png: bool) -> None:
    info = write_syke_zooscan(tmp_path, png=True) if png else fixtures["syke_zooscan"]
    assert info.raw.name == "SYKE-plankton_ZooScan_2024_package.zip"
    inner, inner_info = _zooscan_inner(info.raw)
    assert inner_info.compress_type == zipfile.ZIP_STORED
    assert "__MACOSX/SYKE-plankton_ZooScan_2024/._x" in inner
    base = "SYKE-plankton_ZooScan_2024/class_splits"
    for ds in ("SYKE-plankton_ZooScan_2024", "SYKE-plankton_IFCB_2022"):
        assert {f"{base}/{ds}/splits.json", f"{base}/{ds}/0.json"} <= set(inner)
        trial = json.loads(inner[f"{base}/{ds}/0.json"])
        assert set(trial) == {"Known", "Unknown"}
    splits = json.loads(inner[f"{base}/SYKE-plankton_ZooScan_2024/splits.json"])
    cats = splits["categories"]
    assert list(cats.values()) == sorted(cats.values()) and len(cats) == 20
    split_of = {}
    for cat_id, per in splits["images"].items():
        assert set(per) == {"train", "valid", "test"} and cat_id in cats
        for key, names in per.items():
            for name in names:
                assert name.endswith(".jpg") and name.startswith(cats[cat_id] + "_")
                split_of[PurePosixPath(name).stem] = {"valid": "val"}.get(key, key)

    ext = "png" if png else "jpg"
    pattern = re.compile(rf"SYKE-plankton_ZooScan_2024/images/SYKE-plankton_ZooScan_2024/([^/]+)/(\1_\d+)\.{ext}")
    labels = []
    for name, data in inner.items():
        if name.endswith((".jpg", ".png")):
            m = pattern.fullmatch(name)
            assert m and m.group(1) in cats.values(), name
            labels.append((m.group(1), split_of[m.group(2)]))
            img = decode(data)
            assert img.ndim == 3 and img.shape[2] == 3  # legacy: 3-channel
            gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
            h = gray.shape[0]
            assert gray[h - 6 : h - 4, 12 : 8 + ZOOPROCESS_BAR_PX].max() < 120  # the scale bar
            assert gray[h - 17 : h - 9, 10:34].min() < 120  # the "1 mm" text
            clean = gray.copy()
            clean[h - 31 :, : 20 + ZOOPROCESS_BAR_PX] = 255  # paint the legend box
            assert clean[h - 25 :, :120].min() >= 250
    check_counts(info, labels, rejects=0, skipped=0)


def test_zooprocess_vignette_geometry() -> None:
    rng = np.random.default_rng(0)
    for h_obj, w_obj in [(20, 30), (60, 45), (120, 100), (40, 150)]:
        v = zooprocess_vignette(rng, h_obj, w_obj)
        H, W = v.shape
        assert round(1.4 * h_obj + 31) == H and round(max(1.4 * w_obj, ZOOPROCESS_BAR_PX + 20)) == W
        footer = v[H - 31 :]
        ys, xs = np.nonzero(footer < 255)
        rows = set((ys + H - 31).tolist())
        assert rows <= set(range(H - 17, H - 9)) | {H - 6, H - 5}
        bar = v[H - 6 : H - 4]
        assert (bar[:, 9 : 11 + ZOOPROCESS_BAR_PX] == 85).all() and (bar[:, 11 + ZOOPROCESS_BAR_PX :] == 255).all()
        text = v[H - 17 : H - 9]
        assert set(np.unique(text[:, 10:34]).tolist()) == {84, 85, 255}
        assert (text[:, :10] == 255).all() and (text[:, 34:] == 255).all()
        oy, ox = np.nonzero(v[: H - 31] < 255)
        assert oy.max() < H - 31 and abs((ox.min() + ox.max()) / 2 - W / 2) <= w_obj * 0.3 + 2


# --- PMID2019 -----------------------------------------------------------------------------------------------


def test_pmid2019_layout(fixtures: dict[str, FixtureInfo]) -> None:
    info = fixtures["pmid2019"]
    base = info.raw / "PMID2019"
    assert info.raw.is_dir() and {p.name for p in base.iterdir()} == {
        "JPEGImages",
        "Annotations",
        "ImageSets",
    }
    stems = sorted(p.stem for p in (base / "JPEGImages").glob("*.jpg"))
    xmls = sorted(p.stem for p in (base / "Annotations").glob("*.xml"))
    assert all(s.isdigit() for s in stems) and set(xmls) < set(stems)
    split_of = {}
    for split in ("train", "test"):
        for stem in (base / "ImageSets" / "Main" / f"{split}.txt").read_text().split():
            split_of[stem] = split
    assert set(split_of) == set(stems)

    labels, rejects, tags, clipped = [], len(stems) - len(xmls), set(), 0
    for stem in xmls:
        text = (base / "Annotations" / f"{stem}.xml").read_text()
        root = ET.fromstring(text)
        width, height = int(root.findtext("size/width")), int(root.findtext("size/height"))
        img = decode((base / "JPEGImages" / f"{stem}.jpg").read_bytes(), cv2.IMREAD_COLOR)
        assert img.shape == (height, width, 3)
        objects = root.findall("object")
        assert 1 <= len(objects) <= 3
        tags |= {t for t in ("difficult", "Difficult") if f"<{t}>" in text}
        for obj in objects:
            xmin, ymin, xmax, ymax = (int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
            if xmax < xmin or ymax < ymin:
                rejects += 1
                continue
            clipped += xmax > width or ymax > height
            labels.append((obj.findtext("name").strip(), split_of[stem]))
    assert tags == {"difficult", "Difficult"} and clipped == 1 and rejects == 2
    xml_files = (base / "Annotations").glob("*.xml")
    raw_names = {obj.findtext("name") for p in xml_files for obj in ET.parse(p).getroot().iter("object")}
    assert " Chaetoceros " in raw_names and "ceratium fusus" in raw_names
    check_counts(info, labels, rejects=rejects, skipped=0)


# --- SYKE IFCB ----------------------------------------------------------------------------------------------


def test_syke_ifcb_layout(fixtures: dict[str, FixtureInfo]) -> None:
    info = fixtures["syke_ifcb"]
    assert info.raw.name == "phytoplankton_labeled.zip"
    labels, skipped = [], 0
    names = set()
    for name, data in zip_members(info.raw).items():
        m = re.fullmatch(r"labeled_20201020/([^/]+)/([^/]+)", name)
        assert m, name
        names.add(m.group(2))
        if name.endswith(".png"):
            img = decode(data)
            assert img.ndim == 2 and img.dtype == np.uint8  # 8-bit gray
            assert 185 <= int(np.median(img[0])) <= 215  # light-gray background
            labels.append((m.group(1), ""))
        else:
            assert name.endswith(".pdf")
            skipped += 1
    assert {"Teleaulax sp._00012.png", "Cryptophyceae_drop_00003.png"} <= names
    hyphenated = {"Cryptophyceae-Teleaulax", "Dolichospermum-Anabaenopsis-coiled", "Snowella-Woronichinia"}
    assert hyphenated <= {c for c, _ in labels}
    check_counts(info, labels, rejects=0, skipped=skipped)


def test_ifcb_and_daplankton_share_one_identical_image(fixtures: dict[str, FixtureInfo], tmp_path: Path) -> None:
    ifcb = {n: d for n, d in all_files(fixtures["syke_ifcb"].raw).items() if n.endswith(".png")}
    dap = {n: d for n, d in all_files(fixtures["daplankton"].raw).items() if n.endswith(".png")}
    shared = [(a, b) for a, da in ifcb.items() for b, db in dap.items() if da == db]
    assert len(shared) == 1
    a, b = shared[0]
    assert "/Aphanizomenon_flosaquae/" in a and "/DAPlankton_sea/IFCB/Aphanizomenon_flosaquae/" in b
    assert ifcb[a] == shared_ifcb_png()
    other = write_fixture("daplankton", tmp_path, seed=7)  # seed-independent
    assert shared_ifcb_png() in all_files(other.raw).values()


# --- UDE Diatoms --------------------------------------------------------------------------------------------


def test_ude_diatoms_layout(fixtures: dict[str, FixtureInfo]) -> None:
    info = fixtures["ude_diatoms"]
    title = "UDE Diatoms in the Wild 2024"
    assert info.raw.name == f"{title}.zip"
    members = zip_members(info.raw)
    images = set()
    for name in members:
        if name.endswith(".png"):
            m = re.fullmatch(rf"{title}/images/([^/]+\.x_\d+\.y_\d+\.png)", name)
            assert m, name
            images.add(m.group(1))
            assert decode(members[name]).shape[2] == 3  # RGB
        else:
            assert name == f"{title}/{title}.csv"
    assert any(".Chunk1." in n for n in images)
    reader = csv.DictReader(io.StringIO(members[f"{title}/{title}.csv"].decode()))
    assert reader.fieldnames == [
        "annotation_id", "type", "genus", "species", "subspecies", "annotator",
        "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1", "shape", "points",
        "image_id", "image_filename", "cutout_filename",
    ]  # fmt: skip
    rows = {r["cutout_filename"]: r for r in reader}
    assert any(r["species"] == "" and r["genus"] for r in rows.values())
    assert any(r["species"] == "None" for r in rows.values())
    labels = []
    for name in images & set(rows):
        species, genus = rows[name]["species"], rows[name]["genus"]
        labels.append((species if species not in ("", "None") else genus, ""))
    rejects = len(images - set(rows)) + len(set(rows) - images)
    assert len(images - set(rows)) == 1 and len(set(rows) - images) == 1
    check_counts(info, labels, rejects=rejects, skipped=0)


# --- DAPlankton ---------------------------------------------------------------------------------------------


def test_daplankton_layout(fixtures: dict[str, FixtureInfo]) -> None:
    info = fixtures["daplankton"]
    assert info.raw.name == "DAPlankton_package.zip"
    with zipfile.ZipFile(info.raw) as zf:
        (only,) = zf.infolist()
        assert only.filename == "DAPlankton/DAPlankton.zip" and only.compress_type == zipfile.ZIP_STORED
        inner = zip_members(zf.read(only))
    assert "DAPlankton/readme.md" in inner
    pattern = re.compile(r"DAPlankton/DAPlankton_(lab|sea)/(CS|FC|IFCB)/([^/]+)/(\3\d{5})\.(jpg|png)")
    labels, where = [], {}
    for name in inner:
        if name.endswith("readme.md"):
            continue
        m = pattern.fullmatch(name)
        assert m, name
        subset, instrument, cls, stem, ext = m.groups()
        assert ext == ("jpg" if instrument == "CS" else "png")
        assert not (subset == "sea" and instrument == "FC")
        labels.append((cls, ""))
        where.setdefault(f"{stem}.{ext}", set()).add((subset, instrument))
    assert {"lab", "sea"} <= {s for locs in where.values() for s, _ in locs}
    assert len(where["Aphanizomenon_flosaquae00001.png"]) >= 3  # same basename in several folders
    wanted = {
        "Peridiniella_catenata",
        "Teleaulax_acuta",
        "Cryptophyceae_Teleaulax",
        "Dolichospermum_Anabaenopsis",
    }
    assert wanted <= {c for c, _ in labels}
    check_counts(info, labels, rejects=0, skipped=0)
