"""Shard sets (``plankton-data shard``) from the ingested fixtures of all seven datasets and from real data."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from plankton_data.audit.verify import verify
from plankton_data.cli.shards import register
from plankton_data.errors import PlanktonDataError, UnknownDataset
from plankton_data.fixtures import syke_ifcb as syke_fixture
from plankton_data.fixtures import write_all, write_fixture
from plankton_data.format.index import read_index
from plankton_data.format.manifest import SHARDSET_SCHEMA, pixel_stats, read_manifest, write_table
from plankton_data.format.tar import TarShardWriter, read_members
from plankton_data.ingest import ingest
from plankton_data.ingest.adapters import normalize_label
from plankton_data.ingest.preprocess import PreprocessConfig
from plankton_data.shardset import REASONS, build_shard_set, load_shared_taxa
from plankton_data.shardset.copy import write_all as writev_all
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
        ingest(dataset, info.raw, shards_root=base / "shards", manifests_root=base / "manifests", records_per_shard=8)
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


def _bytes(shards: Path, row: dict) -> bytes:
    with open(shards / row["shard"], "rb") as fh:
        fh.seek(row["offset"])
        return fh.read(row["length"])


def decoded(shards: Path, row: dict) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(_bytes(shards, row), np.uint8), cv2.IMREAD_GRAYSCALE)


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
    r = build(roots, "mix", all_splits=True)
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
    excluded = set(read_manifest(roots.manifests / "daplankton.parquet").column("pixel_sha256").to_pylist())
    assert not {row["pixel_sha256"] for row in rows} & excluded
    syke_copy = key_of(roots, "syke_ifcb", "/".join(syke_fixture.SHARED_IMAGE))  # = a DAPlankton IFCB image
    assert syke_copy not in {row["key"] for row in rows}
    assert sum(r.inputs.values()) == r.total + sum(sum(v.values()) for v in r.removed.values())
    assert read_index(r.shard_dir).args["shared_taxa"] == [t.daplankton for t in load_shared_taxa()]


def test_leak_guard_removes_the_syke_copy_of_a_daplankton_image_even_with_shared_taxa_kept(roots):
    r = build(roots, "leaky", exclude=["daplankton"], drop_class_overlap=False)
    syke_key = key_of(roots, "syke_ifcb", "/".join(syke_fixture.SHARED_IMAGE))
    dap_key = key_of(roots, "daplankton", DAP_SHARED)
    assert r.leaks == [(syke_key, dap_key)] and r.removed["shared_taxon"] == {}
    assert r.removed["leak"] == {"syke_ifcb": 1}
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


# --- identical images behind different padding noise ----------------------------------------------------------


def _noisy_pngs(n: int) -> list[bytes]:
    """``n`` non-square gray PNGs on a noisy background: ingest pads them with noise seeded by the sample key."""
    rng = np.random.default_rng(11)
    images = []
    for i in range(n):
        h = int(rng.integers(60, 140))
        w = h + int(rng.integers(10, h))
        h, w = (w, h) if i % 2 else (h, w)
        img = np.clip(rng.normal(200, 8, (h, w)), 0, 255).astype(np.uint8)
        cv2.ellipse(img, (w // 2, h // 2), (w // 3, h // 3), 0, 0, 360, int(rng.integers(40, 140)), -1)
        images.append(cv2.imencode(".png", img)[1].tobytes())
    return images


@dataclass(frozen=True)
class NoisyPair:
    jpg: Roots  # syke_ifcb and daplankton, both ingested as 256 px JPEG
    png_dap: Roots  # syke_ifcb as 256 px JPEG, daplankton as 128 px PNG
    shared: list[str]  # file names published by both datasets


@pytest.fixture(scope="session")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> NoisyPair:
    """The same 3 noisy-background images published as SYKE IFCB and as DAPlankton, each dataset with 2 images of
    its own; DAPlankton also has a copy of the first shared image with a 4x4-pixel patch changed."""
    base = tmp_path_factory.mktemp("noisy")
    images = _noisy_pngs(7)
    syke = base / "raw_syke" / "labeled_20201020" / "Noisy"
    dap = base / "raw_dap" / "DAPlankton" / "DAPlankton_sea" / "IFCB" / "Noisy"
    for folder, mine in ((syke, images[3:5]), (dap, images[5:7])):
        folder.mkdir(parents=True)
        for i, data in enumerate([*images[:3], *mine]):
            (folder / f"img_{i}.png").write_bytes(data)
    edited = cv2.imdecode(np.frombuffer(images[0], np.uint8), cv2.IMREAD_GRAYSCALE)
    edited[30:34, 30:34] ^= 0x80
    (dap / "img_edited.png").write_bytes(cv2.imencode(".png", edited)[1].tobytes())
    roots = {}
    for kind, dap_config in (("jpg", PreprocessConfig()), ("png_dap", PreprocessConfig(size=128, image_format="png"))):
        shards, manifests = base / kind / "shards", base / kind / "manifests"
        ingest("syke_ifcb", base / "raw_syke", shards_root=shards, manifests_root=manifests)
        ingest("daplankton", base / "raw_dap", shards_root=shards, manifests_root=manifests, config=dap_config)
        roots[kind] = Roots(shards, manifests, {"syke_ifcb": 5, "daplankton": 6})
    return NoisyPair(roots["jpg"], roots["png_dap"], [f"img_{i}.png" for i in range(3)])


def test_identical_images_ingested_by_two_datasets_are_stored_differently_but_paired(noisy):
    syke = {Path(r["source"]).name: r for r in read_manifest(noisy.jpg.manifests / "syke_ifcb.parquet").to_pylist()}
    dap = {Path(r["source"]).name: r for r in read_manifest(noisy.jpg.manifests / "daplankton.parquet").to_pylist()}
    for name in noisy.shared:  # the key-seeded padding noise makes the stored images differ...
        assert syke[name]["image_sha256"] != dap[name]["image_sha256"]
        assert syke[name]["pixel_sum"] != dap[name]["pixel_sum"]
        assert syke[name]["pixel_sha256"] == dap[name]["pixel_sha256"]  # ...but not the published pixels
    assert dap["img_edited.png"]["pixel_sha256"] != dap["img_0.png"]["pixel_sha256"]
    r = build(noisy.jpg, "both", samples_per_shard=1)
    pairs = [(dap[n]["key"], syke[n]["key"]) for n in noisy.shared]  # the registry lists syke_ifcb first
    assert r.duplicates == pairs and r.removed["duplicate"] == {} and r.total == 11
    dropped = build(noisy.jpg, "dropped", samples_per_shard=1, drop_duplicates=True)
    assert dropped.duplicates == pairs and dropped.removed["duplicate"] == {"daplankton": 3} and dropped.total == 8
    kept = set(read_manifest(dropped.manifest).column("key").to_pylist())
    assert {syke[n]["key"] for n in noisy.shared} <= kept and dap["img_edited.png"]["key"] in kept
    removed = {x["key"]: x for x in read_manifest(dropped.removed_path).to_pylist()}
    detail = removed[dap["img_0.png"]["key"]]["detail"]
    assert detail == f"pixels identical to {syke['img_0.png']['key']}, which is kept"


@pytest.mark.parametrize("kind", ["jpg", "png_dap"])
def test_leak_guard_catches_noisy_copies_whatever_the_excluded_encoding(noisy, kind):
    roots = getattr(noisy, kind)
    syke = {Path(r["source"]).name: r["key"] for r in read_manifest(roots.manifests / "syke_ifcb.parquet").to_pylist()}
    dap = {Path(r["source"]).name: r["key"] for r in read_manifest(roots.manifests / "daplankton.parquet").to_pylist()}
    r = build(roots, "guarded", samples_per_shard=1, exclude=["daplankton"], drop_class_overlap=False)
    assert r.leaks == [(syke[n], dap[n]) for n in noisy.shared] and r.removed["leak"] == {"syke_ifcb": 3}
    kept = read_manifest(r.manifest).column("source").to_pylist()
    assert sorted(Path(k).name for k in kept) == ["img_3.png", "img_4.png"]


def test_the_uncertain_taxon_switch_is_recorded(roots):
    r = build(roots, "certain", exclude=["daplankton"], uncertain_taxa=False)
    assert "Peridiniella_catenata" not in r.shared_taxa and len(r.shared_taxa) == 32
    assert read_index(r.shard_dir).args["uncertain_taxa"] is False


@pytest.fixture(scope="session")
def ingested_png(tmp_path_factory: pytest.TempPathFactory) -> Roots:
    """Four fixtures ingested as lossless PNG (stored pixels = decoded pixels; the json member comes first)."""
    base = tmp_path_factory.mktemp("png")
    samples = {}
    for dataset in ("kaggle", "zoolake", "syke_ifcb", "daplankton"):
        info = write_fixture(dataset, base / "raw")
        config = PreprocessConfig(image_format="png", size=64)
        ingest(
            dataset,
            info.raw,
            shards_root=base / "shards",
            manifests_root=base / "manifests",
            config=config,
            records_per_shard=8,
        )
        samples[dataset] = info.samples
    return Roots(base / "shards", base / "manifests", samples)


@pytest.mark.parametrize("fixture,ext", [("roots", "jpg"), ("ingested_png", "png")])
def test_output_tars_are_exactly_what_tarwriter_writes(request, tmp_path, fixture, ext):
    roots = request.getfixturevalue(fixture)
    r = build(roots, f"same_{ext}")
    assert verify(r.shard_dir) == []
    for tar in sorted(r.shard_dir.glob("*.tar"))[:3]:
        rows = [x for x in read_manifest(r.manifest).to_pylist() if x["shard"] == f"same_{ext}/{tar.name}"]
        with TarShardWriter(tmp_path / tar.name) as writer:
            for row in rows:
                with tarfile.open(roots.shards / row["origin_shard"]) as src:
                    members = {
                        m.name.partition(".")[2]: src.extractfile(m).read()
                        for m in src.getmembers()
                        if m.name.partition(".")[0] == row["key"]
                    }
                assert set(members) == {ext, "json"}
                writer.add(row["key"], members)
        assert (tmp_path / tar.name).read_bytes() == tar.read_bytes()


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
def test_index_mean_and_std_are_exactly_those_of_the_stored_pixels(ingested_png, kwargs):
    r = build(ingested_png, f"pix{len(kwargs)}", samples_per_shard=7, **kwargs)
    rows = read_manifest(r.manifest).to_pylist()
    pixels = np.concatenate([decoded(ingested_png.shards, row).ravel() for row in rows]).astype(np.float64)
    index = read_index(r.shard_dir)
    assert (index.mean, index.std) == (r.mean, r.std)
    n = sum(row["width"] * row["height"] for row in rows)
    mean = Fraction(sum(row["pixel_sum"] for row in rows), n * 255)
    var = Fraction(sum(row["pixel_sq_sum"] for row in rows), n * 255 * 255) - mean * mean
    assert index.mean == pytest.approx(float(mean), abs=1e-15) and index.std == pytest.approx(math.sqrt(var), abs=1e-12)
    assert index.mean == pytest.approx(pixels.mean() / 255, abs=1e-15)
    # ingest's pixel_sq_sum can be 1 below the true sum (cv2.norm gives 88612053.99999999, truncated by int())
    assert index.std == pytest.approx(pixels.std() / 255, abs=1e-8)
    inputs = [read_manifest(ingested_png.manifests / f"{d}.parquet") for d in ingested_png.samples]
    assert abs(pixel_stats(pa.concat_tables(inputs))[0] - index.mean) > 1e-6  # the set's rows, not all inputs
    # the same per source dataset (what per-dataset normalisation in pretraining reads)
    datasets = sorted({row["dataset"] for row in rows})
    assert sorted(index.dataset_stats) == datasets and len(datasets) >= 2
    for d in datasets:
        mine = np.concatenate([decoded(ingested_png.shards, r).ravel() for r in rows if r["dataset"] == d])
        mean, std = index.dataset_stats[d]
        assert mean == pytest.approx(mine.mean() / 255, abs=1e-15) and std == pytest.approx(mine.std() / 255, abs=1e-8)


def test_index_mean_and_std_match_the_decoded_jpeg_set(roots):
    r = build(roots, "pix")
    pixels = np.concatenate([decoded(roots.shards, row).ravel() for row in read_manifest(r.manifest).to_pylist()])
    index = read_index(r.shard_dir)
    # the sums are of the pixels before JPEG encoding: equal to the decoded ones up to JPEG rounding
    assert index.mean == pytest.approx(pixels.mean() / 255, abs=2e-3)
    assert index.std == pytest.approx(pixels.std() / 255, abs=2e-3)


def test_rerun_is_byte_identical_and_another_seed_reorders(roots):
    first = build(roots, "det")
    files = snapshot(roots.shards, roots.manifests, "det")
    keys = read_manifest(first.manifest).column("key").to_pylist()
    build(roots, "det")
    assert snapshot(roots.shards, roots.manifests, "det") == files
    assert not list(roots.shards.glob(".det.*"))  # no staging or old folder left behind
    # leftovers of earlier runs of "det" (a stopped build of other arguments, a crashed swap) go with the
    # next successful build; those of another name stay
    for leftover in (".det.staging-0123456789ab", ".det.old-0123456789ab", ".detail.staging-0123456789ab"):
        (roots.shards / leftover).mkdir()
        (roots.shards / leftover / "det-000000.tar.partial").write_bytes(b"x" * 512)
    other = build(roots, "det", seed=1)
    other_keys = read_manifest(other.manifest).column("key").to_pylist()
    assert other_keys != keys and set(other_keys + other.remainder) == set(keys + first.remainder)
    assert read_index(other.shard_dir).args["seed"] == 1
    assert [p.name for p in roots.shards.glob(".det*")] == [".detail.staging-0123456789ab"]


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
    assert not (roots.shards / "res").exists() and not list(roots.manifests.glob("*res.*parquet*"))
    (staging,) = roots.shards.glob(".res.staging-*")
    done = sorted(staging.glob("*.tar.done"))
    assert len(done) >= 2 and not list(staging.glob("*.partial"))
    damaged = staging / done[0].name.removesuffix(".done")  # as an unsynced tar after a power loss might be
    data = bytearray(damaged.read_bytes())
    data[700] ^= 0x01
    damaged.write_bytes(bytes(data))
    resumed = build(roots, "res", samples_per_shard=5)
    assert resumed.resumed_shards == len(done) - 1  # the damaged one was rewritten
    assert snapshot(roots.shards, roots.manifests, "res") == reference


def test_writev_helper_resumes_after_short_writes(tmp_path, monkeypatch):
    bufs = [bytes([i]) * n for i, n in enumerate((500, 1500, 3, 4096, 1, 777), 1)]
    expected = b"".join(bufs)
    calls = []

    def short(fd: int, batch: list) -> int:  # the kernel may write less than asked (signals, quotas)
        calls.append(len(batch))
        return os.write(fd, b"".join(batch)[:1000])

    monkeypatch.setattr("plankton_data.shardset.copy.os.writev", short)
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        writev_all(fd, list(bufs))
    finally:
        os.close(fd)
    assert path.read_bytes() == expected and len(calls) == -(-len(expected) // 1000)


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


def test_a_manifest_of_an_older_ingest_asks_for_a_re_ingest(roots):
    table = read_manifest(roots.manifests / "zoolake.parquet")
    write_table(table.drop_columns(["pixel_sha256"]), roots.manifests / "zoolake.parquet")
    with pytest.raises(PlanktonDataError, match=r"lacks columns \['pixel_sha256'\].*re-ingest zoolake"):
        build(roots, "x")


def test_kaggle_pretrains_on_its_unlabelled_test_images_only_as_the_paper(roots):
    kaggle = read_manifest(roots.manifests / "kaggle.parquet").to_pandas()
    labelled = kaggle[kaggle["split"] != "unlabeled"]
    assert len(labelled) == 22 and (labelled["label_raw"] != "").all()
    r = build(roots, "paper", samples_per_shard=1)
    assert r.removed["split_rule"] == {"kaggle": 22} and r.kept["kaggle"] == len(kaggle) - 22
    assert r.inputs["kaggle"] == r.kept["kaggle"] + sum(r.removed[x].get("kaggle", 0) for x in REASONS)
    assert list(r.split_rules) == ["kaggle"] and "unlabelled test images only" in r.split_rules["kaggle"]
    manifest = read_manifest(r.manifest).to_pandas()
    assert set(manifest.loc[manifest["dataset"] == "kaggle", "split"]) == {"unlabeled"}
    removed = pq.read_table(r.removed_path).to_pandas()
    rule = removed[removed["reason"] == "split_rule"]
    assert sorted(rule["key"]) == sorted(labelled["key"]) and rule["detail"].str.startswith("split 'train'").all()
    assert read_index(r.shard_dir).args["all_splits"] is False
    everything = build(roots, "all", samples_per_shard=1, all_splits=True)
    assert everything.removed["split_rule"] == {} and everything.kept["kaggle"] == len(kaggle)
    assert everything.plan != r.plan


def _damage(roots: Roots, row: dict, where: int) -> None:
    tar = roots.shards / row["shard"]
    data = bytearray(tar.read_bytes())
    data[where] ^= 0x01
    tar.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncate", "first_name", "image_size", "json_size"])
def test_a_corrupt_source_shard_is_named_before_anything_is_written(roots, damage):
    rows = [r for r in read_manifest(roots.manifests / "kaggle.parquet").to_pylist() if r["shard"].endswith("01.tar")]
    row = rows[0 if damage == "first_name" else 2]
    if damage == "truncate":
        tar = roots.shards / row["shard"]
        tar.write_bytes(tar.read_bytes()[:-4096])
    elif damage == "first_name":
        _damage(roots, row, row["offset"] - 512 + 10)  # a character of the key in the image member's name
    elif damage == "image_size":
        _damage(roots, row, row["offset"] - 512 + 134)  # the last octal digit of the image member's size
    else:  # the 512s digit of the json member's size: the sample's run no longer ends where the next one starts
        _damage(roots, row, row["offset"] + -(-row["length"] // 512) * 512 + 131)
    message = "bytes, its index.json says" if damage == "truncate" else f"tar headers of sample {row['key']} do not"
    with pytest.raises(PlanktonDataError, match=f"corrupt source shard kaggle/kaggle-000001.tar: .*{message}"):
        build(roots, "x", all_splits=True)
    assert not (roots.shards / "x").exists() and not list(roots.shards.glob(".x.staging-*"))
    assert not list(roots.manifests.glob("*x.*parquet*"))


@pytest.mark.parametrize("damage", ["image_byte", "name_byte"])
def test_damage_inside_a_sample_is_left_to_verify_which_names_it_in_source_and_set(roots, damage):
    """The build hashes every byte once, for the output; image bytes and mid-tar names are verify's to check."""
    rows = [r for r in read_manifest(roots.manifests / "kaggle.parquet").to_pylist() if r["shard"].endswith("01.tar")]
    row = sorted(rows, key=lambda r: r["offset"])[3]  # inside the tar: the build checks names at its ends only
    _damage(roots, row, row["offset"] + 300 if damage == "image_byte" else row["offset"] - 512 + 12)
    r = build(roots, "x", samples_per_shard=1, all_splits=True)
    (copied,) = [x for x in read_manifest(r.manifest).to_pylist() if x["key"] == row["key"]]
    source, shard = verify(roots.shards / "kaggle"), verify(r.shard_dir)
    if damage == "image_byte":
        expected = (row["key"], "image bytes do not match the manifest sha256")
        assert [(p.key, p.message) for p in source if p.key] == [expected]
        assert [(p.shard, p.key, p.message) for p in shard if p.key] == [(copied["shard"].split("/")[1], *expected)]
    else:
        assert any(p.shard == row["shard"].split("/")[1] and "bad tar header checksum" in p.message for p in source)
        assert {p.shard for p in shard} == {copied["shard"].split("/")[1]}
        assert any("bad tar header checksum" in p.message for p in shard)


def test_cli_errors_are_one_line_and_exit_1(roots):
    script = "from plankton_data.cli.main import main; main()"
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
            "12",
            "--shards",
            str(roots.shards),
            "--manifests",
            str(roots.manifests),
        ],
        terminal_width=200,
    )
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())  # rich wraps long lines at the console width
    assert "split rule: kaggle keeps only split unlabeled: the paper pretrains on Kaggle's 130,400" in text
    assert "unlabelled test images only; 22 rows left out (--all-splits keeps them)" in text
    assert "shared taxon: the 33 taxa DAPlankton shares with SYKE-plankton_IFCB_2022" in res.output
    assert "syke_ifcb: Aphanizomenon_flosaquae 3" in res.output and "remainder: 4 samples" in res.output
    assert "the leak guard compared 32 of its images" in res.output
    assert read_index(roots.shards / "nd").total == 36  # 106 - 32 daplankton - 12 shared taxa - 22 kaggle train


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
        d: ingest(
            d,
            raw,
            shards_root=base / "shards",
            manifests_root=base / "manifests",
            config=config,
            workers=2,
            records_per_shard=500,
        ).samples
        for d, raw in raws.items()
    }
    return Roots(base / "shards", base / "manifests", counts)


@pytest.mark.realdata
@needs_real
def test_real_kaggle_zoolake_set_is_complete_and_free_of_false_matches(real):
    r = build_shard_set(
        "real", shards_root=real.shards, manifests_root=real.manifests, samples_per_shard=100, all_splits=True
    )
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
        all_splits=True,
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
        ingest(dataset, raw, shards_root=tmp_path / "shards", manifests_root=tmp_path / "manifests", workers=1)
    roots = dict(shards_root=tmp_path / "shards", manifests_root=tmp_path / "manifests")
    both = build_shard_set("both", samples_per_shard=1, **roots)
    guarded = build_shard_set(
        "guard", include=["syke_ifcb"], exclude=["daplankton"], samples_per_shard=1, drop_class_overlap=False, **roots
    )
    assert guarded.removed["leak"] == {"syke_ifcb": len(shared)} and len(guarded.leaks) == len(shared)
    assert len(both.duplicates) == len(shared) and {k.split("_")[0] for k, _ in both.duplicates} == {"daplankton"}
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
        "import plankton_data.shardset.copy as c\n"
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
