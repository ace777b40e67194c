"""Shard sets (``plankton-data shard``) from the ingested fixtures of all seven datasets and from real data."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from plankton_data.adapters import normalize_label
from plankton_data.adapters.base import RawRecord
from plankton_data.errors import PlanktonDataError, UnknownDataset
from plankton_data.fixtures import syke_ifcb as syke_fixture
from plankton_data.fixtures import write_all
from plankton_data.fixtures._images import shared_ifcb_png
from plankton_data.ingest import ingest
from plankton_data.manifest import SHARDSET_SCHEMA, read_manifest
from plankton_data.pixels import fingerprint
from plankton_data.preprocess import PreprocessConfig, Task, process_task
from plankton_data.shard_cli import register
from plankton_data.shard_index import read_index
from plankton_data.shardset import REASONS, build_shard_set, load_shared_taxa
from plankton_data.sources import Member
from plankton_data.tarwriter import TarShardWriter
from plankton_data.verify import read_members, verify
from tests.conftest import REALDATA

REFERENCE = REALDATA.parent / "reference"
SYKE_CLASSES_CSV = REALDATA / "ifcb" / "sykefi__syke-pic" / "tests" / "data" / "prob"
REAL_IFCB = REALDATA / "ifcb" / "nodc-sweden__ifcb-pytorch-classify" / "tests" / "fixtures" / "training_data"
OTHER_IFCB = REALDATA / "ifcb" / "EuropeanIFCBGroup__ClassiPyR" / "tests" / "testthat" / "test_data" / "png"

DAP_SHARED = "DAPlankton_sea/IFCB/Aphanizomenon_flosaquae/Aphanizomenon_flosaquae00002.png"  # = the SYKE one


@dataclass(frozen=True)
class Roots:
    shards: Path
    manifests: Path
    samples: dict[str, int]  # dataset -> samples its fixture promises


@pytest.fixture(scope="session")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> Roots:
    """All seven fixtures, ingested once (tars of 8 samples)."""
    base = tmp_path_factory.mktemp("shardset")
    infos = write_all(base / "raw")
    for dataset, info in infos.items():
        ingest(dataset, info.raw, base / "shards", base / "manifests", records_per_shard=8)
    return Roots(base / "shards", base / "manifests", {d: i.samples for d, i in infos.items()})


@pytest.fixture
def roots(ingested: Roots, tmp_path: Path) -> Roots:
    """A private copy of the ingested fixtures that a test may add to or damage."""
    shutil.copytree(ingested.shards, tmp_path / "shards")
    shutil.copytree(ingested.manifests, tmp_path / "manifests")
    return Roots(tmp_path / "shards", tmp_path / "manifests", ingested.samples)


def build(roots: Roots, name: str, samples_per_shard: int = 10, **kwargs):
    return build_shard_set(
        name, shards_root=roots.shards, manifests_root=roots.manifests, samples_per_shard=samples_per_shard, **kwargs
    )


def snapshot(shards: Path, manifests: Path, name: str) -> dict[str, bytes]:
    files = [*sorted((shards / name).iterdir()), *sorted(manifests.glob(f"{name}.*parquet"))]
    return {f"{f.parent.name}/{f.name}": f.read_bytes() for f in files}


def key_of(roots: Roots, dataset: str, source_suffix: str) -> str:
    rows = read_manifest(roots.manifests / f"{dataset}.parquet").to_pylist()
    (key,) = [r["key"] for r in rows if r["source"].endswith(source_suffix)]
    return key


def decoded(shards: Path, row: dict) -> np.ndarray:
    with open(shards / row["shard"], "rb") as fh:
        fh.seek(row["offset"])
        return cv2.imdecode(np.frombuffer(fh.read(row["length"]), np.uint8), cv2.IMREAD_GRAYSCALE)


# --- pixel fingerprints -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [PreprocessConfig(), PreprocessConfig(image_format="png"), PreprocessConfig(size=0), PreprocessConfig(size=64)],
    ids=["jpg256", "png256", "native", "jpg64"],
)
def test_fingerprint_sees_through_the_key_seeded_padding(config):
    rng = np.random.default_rng(7)
    images = [shared_ifcb_png()]  # a flat background: padded without noise
    for i in range(12):  # noisy backgrounds, never square, aspect up to 2: padded with key-seeded noise
        h = int(rng.integers(20, 300))
        w = h + int(rng.integers(8, h + 1))
        h, w = (w, h) if i % 2 else (h, w)
        img = np.clip(rng.normal(200, 6, (h, w)), 0, 255).astype(np.uint8)
        cv2.ellipse(img, (w // 2, h // 2), (w // 3, h // 3), 0, 0, 360, int(rng.integers(40, 140)), -1)
        images.append(cv2.imencode(".png", img)[1].tobytes())
    prints, differ = [], 0
    for data in images:
        rec = RawRecord(source="x/a.png", member=Member("x/a.png", len(data), -1, "a.png"), label_raw="a")
        a, b = (process_task(Task(d, rec, data, config))[0] for d in ("syke_ifcb", "daplankton"))
        differ += a.image != b.image
        fa = fingerprint(a.row, a.image)
        assert fa is not None and fa == fingerprint(b.row, b.image)
        gray = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        h, w = gray.shape
        gray[h // 2 - 2 : h // 2 + 2, w // 2 - 2 : w // 2 + 2] ^= 0x80  # a visible change in the middle
        changed = cv2.imencode(".png", gray)[1].tobytes()
        c = process_task(Task("syke_ifcb", rec, changed, config))[0]
        assert fingerprint(c.row, c.image) != fa
        prints.append(fa)
    assert differ >= 8  # most pairs differ in their stored bytes (heavy downscaling can average the noise away)
    assert len(set(prints)) == len(prints)


def test_images_too_thin_for_a_pure_block_have_no_fingerprint():
    data = cv2.imencode(".png", np.full((6, 300), 200, np.uint8))[1].tobytes()
    rec = RawRecord(source="x/a.png", member=Member("x/a.png", len(data), -1, "a.png"), label_raw="a")
    sample = process_task(Task("syke_ifcb", rec, data, PreprocessConfig()))[0]
    assert fingerprint(sample.row, sample.image) is None


# --- the shared-taxa table ----------------------------------------------------------------------------------


def test_shared_taxa_table_has_32_exact_and_one_switchable_probable_taxon():
    taxa = load_shared_taxa()
    assert len(taxa) == 33 and len({t.daplankton for t in taxa}) == 33
    probable = [t for t in taxa if t.confidence != "exact"]
    assert [(t.daplankton, t.syke_ifcb, t.confidence) for t in probable] == [
        ("Peridiniella_catenata", ("Peridiniella_catenata_chain", "Peridiniella_catenata_single"), "probable")
    ]
    assert len(load_shared_taxa(uncertain=False)) == 32
    for t in taxa:
        if t.confidence == "exact":
            assert normalize_label(t.daplankton) == normalize_label(t.syke_ifcb[0])


@pytest.mark.skipif(
    not SYKE_CLASSES_CSV.is_dir() or not (REFERENCE / "daplankton_class_counts.tsv").is_file(),
    reason="reference class lists absent",
)
def test_shared_taxa_names_exist_in_both_datasets():
    header = next(iter(SYKE_CLASSES_CSV.glob("*.csv"))).read_text().splitlines()[0].split(",")[1:]
    assert len(header) == 50
    with open(REFERENCE / "daplankton_class_counts.tsv") as fh:
        dap = {r["class_dir"]: r for r in csv.DictReader(fh, delimiter="\t")}
    taxa = load_shared_taxa()
    assert {n for t in taxa for n in t.syke_ifcb} <= set(header)
    assert {t.daplankton for t in taxa} <= set(dap)
    sea = {name for name, r in dap.items() if r["in_sea"] == "1"}
    assert sea <= {t.daplankton for t in taxa} and len(sea) == 31  # every DAPlankton_SEA class is shared


# --- building sets from the fixtures ------------------------------------------------------------------------


def test_all_seven_datasets_counts_reconcile_and_every_shard_is_full(roots):
    r = build(roots, "mix")
    assert r.included == list(roots.samples) and r.inputs == roots.samples
    for d in r.included:
        assert r.inputs[d] == r.kept[d] + sum(r.removed[x].get(d, 0) for x in REASONS)
    assert sum(r.kept.values()) == r.total == r.shards * 10 == sum(roots.samples.values()) // 10 * 10
    assert len(r.remainder) == sum(roots.samples.values()) % 10
    index = read_index(r.shard_dir)
    assert index.kind == "shardset" and index.total == r.total
    assert [s.count for s in index.shards] == [10] * r.shards
    assert sorted(p.name for p in r.shard_dir.iterdir()) == sorted([*(s.name for s in index.shards), "index.json"])
    assert index.args["include"] == r.included and index.args["seed"] == 0 and index.args["samples_per_shard"] == 10
    manifest = read_manifest(r.manifest)
    assert manifest.schema.names == SHARDSET_SCHEMA.names and manifest.num_rows == r.total
    datasets = manifest.column("dataset").to_pylist()
    assert {d: datasets.count(d) for d in set(datasets)} == {d: n for d, n in r.kept.items() if n}
    removed = read_manifest(r.removed_path).to_pylist()
    assert sorted(x["key"] for x in removed) == sorted(r.remainder)
    assert not set(r.remainder) & set(manifest.column("key").to_pylist())
    by_shard: dict[str, set] = {}
    for row in manifest.to_pylist():
        by_shard.setdefault(row["shard"], set()).add(row["dataset"])
    assert all(len(ds) > 1 for ds in by_shard.values())  # the global shuffle mixes datasets in every shard
    assert verify(r.shard_dir) == []


def test_no_daplankton_removes_the_dataset_the_shared_taxa_and_its_pixels(roots):
    r = build(roots, "nodap", exclude=["daplankton"])
    rows = read_manifest(r.manifest).to_pylist()
    shared = {normalize_label(n) for t in load_shared_taxa() for n in (t.daplankton, *t.syke_ifcb)}
    assert "daplankton" not in {row["dataset"] for row in rows} and r.excluded == ["daplankton"]
    assert not {row["label"] for row in rows} & shared
    assert r.removed["shared_taxon"] == {"syke_ifcb": roots.samples["syke_ifcb"]}  # every fixture class is shared
    assert r.taxa_removed["syke_ifcb"]["Aphanizomenon_flosaquae"] == 3
    excluded = {
        fingerprint(x, _bytes(roots.shards, x))
        for x in read_manifest(roots.manifests / "daplankton.parquet").to_pylist()
    } - {None}
    assert not {fingerprint(row, _bytes(r.shard_dir.parent, row)) for row in rows} & excluded
    assert sum(r.inputs.values()) == r.total + sum(sum(v.values()) for v in r.removed.values())
    assert read_index(r.shard_dir).args["shared_taxa"] == [t.daplankton for t in load_shared_taxa()]


def _bytes(shards: Path, row: dict) -> bytes:
    with open(shards / row["shard"], "rb") as fh:
        fh.seek(row["offset"])
        return fh.read(row["length"])


def test_leak_guard_removes_the_syke_copy_of_a_daplankton_image_even_with_shared_taxa_kept(roots):
    r = build(roots, "leaky", exclude=["daplankton"], drop_class_overlap=False)
    syke_key = key_of(roots, "syke_ifcb", "/".join(syke_fixture.SHARED_IMAGE))
    dap_key = key_of(roots, "daplankton", DAP_SHARED)
    assert r.leaks == [(syke_key, dap_key)] and r.removed["shared_taxon"] == {}
    assert r.removed["leak"] == {"syke_ifcb": 1} and r.removed["possible_leak"] == {}
    removed = {x["key"]: x for x in read_manifest(r.removed_path).to_pylist()}
    assert removed[syke_key]["reason"] == "leak" and dap_key in removed[syke_key]["detail"]
    assert syke_key not in read_manifest(r.manifest).column("key").to_pylist()


def test_cross_dataset_duplicates_are_reported_and_dropped_on_request(roots):
    syke_key = key_of(roots, "syke_ifcb", "/".join(syke_fixture.SHARED_IMAGE))
    dap_key = key_of(roots, "daplankton", DAP_SHARED)
    kept = build(roots, "dups")
    assert kept.duplicates == [(dap_key, syke_key)] and kept.removed["duplicate"] == {}
    dropped = build(roots, "nodups", drop_duplicates=True)
    assert dropped.duplicates == [(dap_key, syke_key)] and dropped.removed["duplicate"] == {"daplankton": 1}
    keys = set(read_manifest(dropped.manifest).column("key").to_pylist()) | set(dropped.remainder)
    assert syke_key in keys and dap_key not in keys


def test_the_uncertain_taxon_switch_is_recorded(roots):
    r = build(roots, "certain", exclude=["daplankton"], uncertain_taxa=False)
    assert "Peridiniella_catenata" not in r.shared_taxa and len(r.shared_taxa) == 32
    assert read_index(r.shard_dir).args["uncertain_taxa"] is False


def test_output_tars_are_exactly_what_tarwriter_writes(roots, tmp_path):
    r = build(roots, "same")
    rows = [x for x in read_manifest(r.manifest).to_pylist() if x["shard"] == "same/same-000000.tar"]
    with TarShardWriter(tmp_path / "reference.tar") as writer:
        for row in rows:
            with tarfile.open(roots.shards / row["origin_shard"]) as src:
                members = {
                    m.name.partition(".")[2]: src.extractfile(m).read()
                    for m in src.getmembers()
                    if m.name.partition(".")[0] == row["key"]
                }
            assert set(members) == {"jpg", "json"}
            writer.add(row["key"], members)
    assert (tmp_path / "reference.tar").read_bytes() == (r.shard_dir / "same-000000.tar").read_bytes()


def test_manifest_locates_copied_bytes_and_their_origin(roots):
    r = build(roots, "where")
    for row in read_manifest(r.manifest).to_pylist():
        new = _bytes(roots.shards, row)
        old = _bytes(roots.shards, dict(row, shard=row["origin_shard"], offset=row["origin_offset"]))
        assert hashlib.sha256(new).hexdigest() == row["image_sha256"] and new == old
    for tar in sorted(r.shard_dir.glob("*.tar")):
        names = tarfile.open(tar).getnames()
        assert len(names) == 20 and all(n.endswith((".jpg", ".json")) for n in names)


@pytest.mark.parametrize("kwargs", [{}, {"exclude": ["daplankton"]}], ids=["all", "no_daplankton"])
def test_index_mean_and_std_match_the_decoded_set(roots, kwargs):
    r = build(roots, "pix", **kwargs)
    pixels = np.concatenate([decoded(roots.shards, row).ravel() for row in read_manifest(r.manifest).to_pylist()])
    index = read_index(r.shard_dir)
    # exact for JPEG-decoded pixels up to the JPEG rounding of the ingest sums used for whole datasets
    assert index.mean == pytest.approx(pixels.mean() / 255, abs=2e-3)
    assert index.std == pytest.approx(pixels.std() / 255, abs=2e-3)


def test_rerun_is_byte_identical_and_another_seed_reorders(roots):
    first = build(roots, "det")
    files = snapshot(roots.shards, roots.manifests, "det")
    keys = read_manifest(first.manifest).column("key").to_pylist()
    build(roots, "det")
    assert snapshot(roots.shards, roots.manifests, "det") == files
    assert not list(roots.shards.glob(".det.*"))  # no staging or old folder left behind
    other = build(roots, "det", seed=1)
    other_keys = read_manifest(other.manifest).column("key").to_pylist()
    assert other_keys != keys and set(other_keys + other.remainder) == set(keys + first.remainder)
    assert read_index(other.shard_dir).args["seed"] == 1


def test_an_interrupted_build_resumes_to_the_same_bytes(roots):
    build(roots, "res", samples_per_shard=5)
    reference = snapshot(roots.shards, roots.manifests, "res")
    shutil.rmtree(roots.shards / "res")
    for f in roots.manifests.glob("res.*parquet"):
        f.unlink()

    def interrupt(done: int, total: int) -> None:
        if done >= 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build(roots, "res", samples_per_shard=5, progress=interrupt)
    assert not (roots.shards / "res").exists() and not (roots.manifests / "res.parquet").exists()
    resumed = build(roots, "res", samples_per_shard=5)
    assert resumed.resumed_shards >= 2
    assert snapshot(roots.shards, roots.manifests, "res") == reference


# --- bad input ----------------------------------------------------------------------------------------------


def test_unknown_ids_and_bad_names_are_refused(roots):
    with pytest.raises(UnknownDataset, match="unknown dataset 'plankton'"):
        build(roots, "x", include=["plankton"])
    with pytest.raises(PlanktonDataError, match="not be a dataset id"):
        build(roots, "kaggle")
    with pytest.raises(PlanktonDataError, match="both included and excluded"):
        build(roots, "x", include=["kaggle"], exclude=["kaggle"])


def test_a_dataset_that_was_not_ingested_is_named(roots):
    (roots.manifests / "zoolake.parquet").unlink()
    with pytest.raises(PlanktonDataError, match="zoolake is not ingested"):
        build(roots, "x", include=["kaggle", "zoolake"])
    assert "zoolake" not in build(roots, "x").included  # the default takes what is ingested


def test_empty_selections_are_refused(roots):
    with pytest.raises(PlanktonDataError, match="empty selection: all 12 input samples were removed"):
        build(roots, "x", include=["syke_ifcb"], exclude=["daplankton"])
    with pytest.raises(PlanktonDataError, match="fewer than one shard of 1000"):
        build(roots, "x", samples_per_shard=1000)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_corrupt_source_shard_is_named_before_anything_is_written(roots, damage):
    tar = roots.shards / "kaggle" / "kaggle-000001.tar"
    data = bytearray(tar.read_bytes())
    if damage == "flip":
        data[3000] ^= 0xFF
    else:
        del data[-4096:]
    tar.write_bytes(bytes(data))
    with pytest.raises(PlanktonDataError, match="corrupt source shard kaggle/kaggle-000001.tar"):
        build(roots, "x")
    assert not (roots.shards / "x").exists() and not list(roots.shards.glob(".x.staging-*"))


def test_cli_errors_are_one_line_and_exit_1(roots):
    script = (
        "from plankton_data.cli import app, main; from plankton_data.shard_cli import register; register(app); main()"
    )
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "shard",
            "--name",
            "x",
            "--include",
            "zoolake",
            "--exclude",
            "zoolake",
            "--shards",
            str(roots.shards),
            "--manifests",
            str(roots.manifests),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1 and res.stderr.strip().count("\n") == 0
    assert res.stderr.startswith("error: zoolake cannot be both included and excluded")


def test_cli_shard_summary_says_what_was_removed_and_why(roots):
    app = typer.Typer()
    register(app)
    res = CliRunner().invoke(
        app,
        [
            "shard",
            "--name",
            "nd",
            "--exclude",
            "daplankton",
            "--samples-per-shard",
            "10",
            "--shards",
            str(roots.shards),
            "--manifests",
            str(roots.manifests),
        ],
        terminal_width=200,
    )
    assert res.exit_code == 0, res.output
    assert "shared taxon: the 33 taxa DAPlankton shares with SYKE-plankton_IFCB_2022" in res.output
    assert "syke_ifcb: Aphanizomenon_flosaquae 3" in res.output and "remainder: 2 samples" in res.output
    assert "the leak guard compared 32 of its images" in res.output
    assert read_index(roots.shards / "nd").total == 60


# --- real data ----------------------------------------------------------------------------------------------

KAGGLE_ZIP = REALDATA / "kaggle" / "train.zip"
ZOOLAKE_ZIP = REALDATA / "lake_zooplankton" / "data.zip"
needs_real = pytest.mark.skipif(
    not (KAGGLE_ZIP.is_file() and ZOOLAKE_ZIP.is_file()), reason="real Kaggle/ZooLake archives absent"
)


def _subset_zip(src: Path, dst: Path, folder_depth: int, folders: int) -> Path:
    """The first ``folders`` class folders (at path depth ``folder_depth``) of a real archive, in its layout."""
    with zipfile.ZipFile(src) as zin:
        names = [n for n in zin.namelist() if n.count("/") > folder_depth]
        keep = sorted({n.split("/")[folder_depth] for n in names})[:folders]
        with zipfile.ZipFile(dst, "w") as zout:
            for n in names:
                if n.split("/")[folder_depth] in keep:
                    zout.writestr(zin.getinfo(n), zin.read(n))
    return dst


@pytest.fixture(scope="session")
def real(tmp_path_factory: pytest.TempPathFactory) -> Roots:
    """Real Kaggle (8 classes) and ZooLake (2 classes) images in their published layouts, ingested at 64 px."""
    if not (KAGGLE_ZIP.is_file() and ZOOLAKE_ZIP.is_file()):
        pytest.skip("real Kaggle/ZooLake archives absent")
    base = tmp_path_factory.mktemp("real")
    config = PreprocessConfig(size=64)
    raws = {
        "kaggle": _subset_zip(KAGGLE_ZIP, base / "train.zip", 1, 8),
        "zoolake": _subset_zip(ZOOLAKE_ZIP, base / "data.zip", 2, 2),
    }
    counts = {
        d: ingest(d, raw, base / "shards", base / "manifests", config, workers=2, records_per_shard=500).samples
        for d, raw in raws.items()
    }
    return Roots(base / "shards", base / "manifests", counts)


@pytest.mark.realdata
@needs_real
def test_real_kaggle_zoolake_set_is_complete_and_free_of_false_matches(real):
    r = build_shard_set("real", shards_root=real.shards, manifests_root=real.manifests, samples_per_shard=100)
    assert r.inputs == real.samples and r.duplicates == [] and r.leaks == []
    assert r.total == sum(real.samples.values()) // 100 * 100 and len(r.remainder) == sum(real.samples.values()) % 100
    assert all(s.count == 100 for s in read_index(r.shard_dir).shards)
    assert verify(r.shard_dir) == []
    guarded = build_shard_set(
        "guarded",
        include=["kaggle"],
        exclude=["zoolake"],
        shards_root=real.shards,
        manifests_root=real.manifests,
        samples_per_shard=100,
    )
    assert guarded.leaks == [] and guarded.excluded_rows == {"zoolake": real.samples["zoolake"]}


@pytest.mark.realdata
@pytest.mark.skipif(not (REAL_IFCB.is_dir() and OTHER_IFCB.is_dir()), reason="real IFCB images absent")
def test_real_ifcb_images_published_twice_are_caught_by_the_leak_guard(tmp_path):
    """30 real IFCB PNGs laid out both as SYKE IFCB and as DAPlankton, plus 8 others only in SYKE IFCB."""
    shared, own = sorted(REAL_IFCB.glob("*/*.png")), sorted(OTHER_IFCB.glob("*/*.png"))
    syke, dap = tmp_path / "syke" / "labeled_20201020", tmp_path / "dap" / "DAPlankton" / "DAPlankton_sea" / "IFCB"
    for png in shared:
        for root in (syke, dap):
            (root / png.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(png, root / png.parent.name / png.name)
    (syke / "Other").mkdir()
    for png in own:
        shutil.copy(png, syke / "Other" / png.name)
    for dataset, raw in (("syke_ifcb", tmp_path / "syke"), ("daplankton", tmp_path / "dap")):
        ingest(dataset, raw, tmp_path / "shards", tmp_path / "manifests", workers=1)
    roots = dict(shards_root=tmp_path / "shards", manifests_root=tmp_path / "manifests")
    both = build_shard_set("both", samples_per_shard=1, **roots)
    guarded = build_shard_set(
        "guard", include=["syke_ifcb"], exclude=["daplankton"], samples_per_shard=1, drop_class_overlap=False, **roots
    )
    exact, possible = guarded.removed["leak"].get("syke_ifcb", 0), guarded.removed["possible_leak"].get("syke_ifcb", 0)
    assert exact + possible == len(shared) == len(guarded.leaks) and exact >= len(shared) - 3
    assert len(both.duplicates) == exact
    kept = read_manifest(guarded.manifest).column("source").to_pylist()
    assert sorted(Path(k).name for k in kept) == sorted(p.name for p in own)  # no false alarm


@pytest.mark.slow
@pytest.mark.realdata
@needs_real
def test_real_kill_mid_build_then_rerun_gives_the_uninterrupted_result(real, tmp_path):
    shards, manifests = tmp_path / "shards", tmp_path / "manifests"
    shutil.copytree(real.shards, shards)
    shutil.copytree(real.manifests, manifests)
    args = dict(include=["kaggle", "zoolake"], shards_root=shards, manifests_root=manifests, samples_per_shard=40)
    build_shard_set("killed", **args)
    reference = snapshot(shards, manifests, "killed")
    shutil.rmtree(shards / "killed")
    # the child writes each tar slowly (a sleep before each), so that the kill lands mid-build
    child = (
        "import sys, time\n"
        "import plankton_data.shardcopy as c\n"
        "write = c._write_tar\n"
        "c._write_tar = lambda *a: (time.sleep(0.05), write(*a))[1]\n"
        "from plankton_data.shardset import build_shard_set\n"
        "build_shard_set('killed', include=['kaggle', 'zoolake'], shards_root=sys.argv[1],"
        " manifests_root=sys.argv[2], samples_per_shard=40)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", child, str(shards), str(manifests)])
    deadline = time.monotonic() + 120
    while len(list(shards.glob(".killed.staging-*/*.done"))) < 6 and time.monotonic() < deadline:
        assert proc.poll() is None, "the build finished before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (staging,) = shards.glob(".killed.staging-*")
    done = len(list(staging.glob("*.done")))
    assert not (shards / "killed").exists() and 6 <= done < json.loads(reference["killed/index.json"])["total"] // 40
    for tar in staging.glob("*.tar"):  # nothing truncated under a final name
        assert read_members(tar.read_bytes())[1] == ""
    rerun = build_shard_set("killed", **args)
    assert rerun.resumed_shards == done
    assert snapshot(shards, manifests, "killed") == reference
