"""``verify``, ``stats`` and ``preview`` on ingested fixtures, a shard set built from them, and real Kaggle data."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from plankton_data.audit.preview import contact_sheet
from plankton_data.audit.stats import SIZE_BINS, resolve_target, summarize
from plankton_data.audit.verify import Problem, verify
from plankton_data.cli.shards import register
from plankton_data.errors import PlanktonDataError
from plankton_data.fixtures import write_fixture
from plankton_data.format.manifest import read_manifest
from plankton_data.ingest import ingest
from plankton_data.ingest.preprocess import PreprocessConfig
from plankton_data.shardset import build_shard_set
from tests.conftest import REALDATA

DATASETS = ("kaggle", "zoolake", "syke_ifcb", "daplankton")
KAGGLE_ZIP = REALDATA / "kaggle" / "train.zip"


@dataclass(frozen=True)
class Tree:
    shards: Path
    manifests: Path

    @property
    def mix(self) -> Path:
        return self.shards / "mix"


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    """Four ingested fixtures (tars of 8) and a shard set ``mix`` of them (tars of 8)."""
    base = tmp_path_factory.mktemp("verify")
    for dataset in DATASETS:
        info = write_fixture(dataset, base / "raw")
        ingest(dataset, info.raw, shards_root=base / "shards", manifests_root=base / "manifests", records_per_shard=8)
    build_shard_set("mix", shards_root=base / "shards", manifests_root=base / "manifests", samples_per_shard=8)
    return Tree(base / "shards", base / "manifests")


@pytest.fixture
def tree(built: Tree, tmp_path: Path) -> Tree:
    """A private copy to damage."""
    shutil.copytree(built.shards, tmp_path / "shards")
    shutil.copytree(built.manifests, tmp_path / "manifests")
    return Tree(tmp_path / "shards", tmp_path / "manifests")


def rows_of(tree: Tree, tar: str) -> list[dict]:
    return [r for r in read_manifest(tree.manifests / "mix.parquet").to_pylist() if r["shard"] == f"mix/{tar}"]


def app() -> typer.Typer:
    cli = typer.Typer()
    register(cli)
    return cli


# --- verify -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["mix", *DATASETS])
def test_intact_folders_have_no_problems(built, folder):
    assert verify(built.shards / folder) == []


def test_a_flipped_image_byte_is_reported_with_its_shard_and_key(tree):
    row = rows_of(tree, "mix-000001.tar")[3]
    tar = tree.mix / "mix-000001.tar"
    data = bytearray(tar.read_bytes())
    data[row["offset"] + 10] ^= 0x01
    tar.write_bytes(bytes(data))
    assert verify(tree.mix) == [
        Problem("mix-000001.tar", "", "sha256 differs from index.json"),
        Problem("mix-000001.tar", row["key"], "image bytes do not match the manifest sha256"),
    ]


def test_a_flipped_byte_in_an_ingested_dataset_folder_is_reported_too(tree):
    row = read_manifest(tree.manifests / "kaggle.parquet").to_pylist()[9]
    tar = tree.shards / row["shard"]
    data = bytearray(tar.read_bytes())
    data[row["offset"] + row["length"] // 2] ^= 0xFF
    tar.write_bytes(bytes(data))
    problems = verify(tree.shards / "kaggle")
    assert [(p.shard, p.key) for p in problems] == [(tar.name, ""), (tar.name, row["key"])]


def test_a_truncated_shard_reports_the_lost_samples_by_key(tree):
    tar = tree.mix / "mix-000002.tar"
    data = tar.read_bytes()
    rows = rows_of(tree, "mix-000002.tar")
    cut = rows[5]["offset"] + 100  # inside the 6th image: samples 0-4 stay readable
    tar.write_bytes(data[:cut])
    problems = verify(tree.mix)
    messages = [p.message for p in problems if not p.key]
    assert all(p.shard == "mix-000002.tar" for p in problems)
    assert f"size is {cut} bytes, index.json says {len(data)}" in messages
    assert "sha256 differs from index.json" in messages and "holds 5 readable samples, index.json says 8" in messages
    assert any("runs past the end of the file" in m for m in messages)
    assert {p.key for p in problems if p.key} == {r["key"] for r in rows[5:]}


def test_damaged_headers_json_and_missing_or_stray_tars_are_reported(tree):
    rows = rows_of(tree, "mix-000003.tar")
    tar = tree.mix / "mix-000003.tar"
    data = bytearray(tar.read_bytes())
    json_start = rows[0]["offset"] + -(-rows[0]["length"] // 512) * 512 + 512  # jpg, then its json member
    data[json_start] = ord("x")
    data[rows[2]["offset"] - 512 + 3] ^= 0x20  # a byte of the 3rd sample's header name
    tar.write_bytes(bytes(data))
    shutil.copy(tree.mix / "mix-000000.tar", tree.mix / "extra.tar")
    (tree.mix / "mix-000004.tar").unlink()
    problems = {(p.shard, p.key, p.message) for p in verify(tree.mix)}
    assert ("mix-000003.tar", rows[0]["key"], "json member does not parse") in problems
    assert any(p[0] == "mix-000003.tar" and p[2].startswith("bad tar header checksum") for p in problems)
    assert ("extra.tar", "", "tar not listed in index.json") in problems
    assert ("mix-000004.tar", "", "tar listed in index.json is missing") in problems


def test_a_manifest_from_another_build_is_reported(tree):
    seed0 = (tree.manifests / "mix.parquet").read_bytes()
    build_shard_set("mix", shards_root=tree.shards, manifests_root=tree.manifests, samples_per_shard=8, seed=3)
    (tree.manifests / "mix.parquet").write_bytes(seed0)  # seed-3 shards, seed-0 manifest
    problems = verify(tree.mix)
    assert any("come from different builds" in p.message for p in problems)
    assert any(p.key and p.message == "sample is not in the manifest" for p in problems)


def test_cli_verify_lists_every_problem_and_exits_1(tree):
    row = rows_of(tree, "mix-000000.tar")[0]
    tar = tree.mix / "mix-000000.tar"
    data = bytearray(tar.read_bytes())
    data[row["offset"]] ^= 0xFF
    tar.write_bytes(bytes(data))
    bad = CliRunner().invoke(app(), ["verify", str(tree.mix)], terminal_width=200)
    assert bad.exit_code == 1
    assert f"mix-000000.tar/{row['key']}: image bytes do not match the manifest sha256" in bad.output
    good = CliRunner().invoke(app(), ["verify", str(tree.shards / "kaggle")], terminal_width=200)
    assert good.exit_code == 0 and "intact" in good.output
    # the installed console script too: `verify ... && next-step` must stop on corruption
    script = Path(sys.executable).parent / "plankton-data"
    res = subprocess.run([str(script), "verify", str(tree.mix)], capture_output=True, text=True)
    assert res.returncode == 1 and "image bytes do not match the manifest sha256" in res.stdout
    res = subprocess.run([str(script), "verify", str(tree.shards / "kaggle")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


# --- stats --------------------------------------------------------------------------------------------------


def test_stats_count_datasets_classes_and_published_sizes(built):
    summary = summarize(built.mix)
    manifest = read_manifest(built.manifests / "mix.parquet").to_pandas()
    assert summary["total"] == len(manifest) and list(summary["datasets"]) == list(DATASETS)
    for dataset, s in summary["datasets"].items():
        part = manifest[manifest.dataset == dataset]
        assert s["samples"] == len(part) and s["classes"] == dict(Counter(part.label_raw).most_common())
        assert s["orig_width"]["min"] == part.orig_width.min() and s["orig_width"]["max"] == part.orig_width.max()
        assert s["orig_height"]["median"] in set(part.orig_height)
        longer = np.maximum(part.orig_width, part.orig_height)
        assert s["longer_side"][f"<{SIZE_BINS[0]}"] == int((longer < SIZE_BINS[0]).sum())
        assert sum(s["longer_side"].values()) == len(part) and s["stored"] == {"256x256": len(part)}
    assert json.loads(json.dumps(summary)) == summary


def test_stats_targets_resolve_to_the_same_manifest(built):
    by_folder = summarize(built.mix)
    assert summarize(built.manifests / "mix.parquet") == by_folder
    assert summarize("mix", built.shards, built.manifests) == by_folder
    assert resolve_target(built.shards / "kaggle").shards_root == built.shards
    with pytest.raises(PlanktonDataError, match="not a manifest, a shard folder"):
        summarize("nothing_here", built.shards, built.manifests)


def test_cli_stats_json_and_table(built):
    res = CliRunner().invoke(
        app(), ["stats", "mix", "--json", "--shards", str(built.shards), "--manifests", str(built.manifests)]
    )
    assert res.exit_code == 0 and json.loads(res.output) == summarize(built.mix)
    table = CliRunner().invoke(app(), ["stats", str(built.mix)], terminal_width=200)
    assert table.exit_code == 0 and all(d in table.output for d in DATASETS)


# --- preview ------------------------------------------------------------------------------------------------


def png_dpi(path: Path) -> float:
    """Resolution a PNG declares in its ``pHYs`` chunk (0 when it has none)."""
    data = path.read_bytes()
    at = data.find(b"pHYs")
    if at < 0:
        return 0.0
    x, _, unit = struct.unpack(">IIB", data[at + 4 : at + 13])
    return round(x * 0.0254, 1) if unit == 1 else 0.0


def pdf_image(path: Path) -> tuple[np.ndarray, tuple[float, float]]:
    """The gray image of a one-image PDF as :func:`contact_sheet` writes it, and its page size in points;
    the xref table's offsets are checked to point at their objects."""
    data = path.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    xref = int(data[data.rindex(b"startxref") + 9 :].split()[0])
    table = data[xref:].split(b"trailer")[0].split(b"\n")[2:]
    for n, entry in enumerate((e for e in table if e.strip().endswith(b"n")), 1):
        assert data[int(entry[:10]) :].startswith(f"{n} 0 obj".encode()), n
    head = re.search(rb"/Width (\d+) /Height (\d+).*?/Length (\d+) >>\nstream\n", data)
    assert head is not None
    w, h, n = (int(g) for g in head.groups())
    pixels = zlib.decompress(data[head.end() : head.end() + n])
    box = re.search(rb"/MediaBox \[0 0 ([\d.]+) ([\d.]+)\]", data)
    assert box is not None
    return np.frombuffer(pixels, np.uint8).reshape(h, w), (float(box.group(1)), float(box.group(2)))


def test_preview_draws_one_labelled_row_of_samples_per_dataset(built, tmp_path):
    out = contact_sheet(built.mix, tmp_path / "sheet.png", per_dataset=4, tile=64)
    sheet = cv2.imread(str(out), cv2.IMREAD_GRAYSCALE)
    assert sheet.shape[1] == 220 + 4 * 68 + 4
    row = (sheet.shape[0] - 4) // len(DATASETS)  # tile + class-name caption + gap
    assert sheet.shape[0] == len(DATASETS) * row + 4 and row - 4 >= 64 + 2 * 8  # room for two caption lines
    for r in range(len(DATASETS)):
        y = 4 + r * row
        assert (sheet[y : y + 64, :200] < 60).any()  # the dataset name is drawn
        for c in range(4):
            x = 224 + c * 68
            tile = sheet[y : y + 64, x : x + 64]
            assert tile.std() > 5  # a real image, not the empty background
            caption = sheet[y + 64 : y + row - 4, x : x + 64]
            assert (caption < 60).sum() > 10  # the class name (or "(unlabelled)") is written under the tile
            assert (sheet[y + 64 : y + row - 4, x + 64 : x + 68] >= 200).all()  # ... and stays in its column
    assert contact_sheet(built.mix, tmp_path / "again.png", per_dataset=4, tile=64).read_bytes() == out.read_bytes()
    other = contact_sheet(built.mix, tmp_path / "other.png", per_dataset=4, tile=64, seed=1)
    assert other.read_bytes() != out.read_bytes()
    # for papers: the PNG declares 200 dpi; the PDF beside it holds the same pixels on a page at 200 dpi
    assert png_dpi(out) >= 200
    pixels, (pw, ph) = pdf_image(out.with_suffix(".pdf"))
    np.testing.assert_array_equal(pixels, sheet)
    assert (pw, ph) == pytest.approx((sheet.shape[1] * 72 / 200, sheet.shape[0] * 72 / 200), abs=0.01)
    with pytest.raises(PlanktonDataError, match="PNG to write"):
        contact_sheet(built.mix, tmp_path / "sheet.pdf", per_dataset=2, tile=32)


def test_preview_captions_fit_their_tile():
    from plankton_data.audit.preview import _caption_lines, _text_width

    assert _caption_lines("daphnia", 126, 0.4) == ["daphnia"]
    lines = _caption_lines("dolichospermum_anabaenopsis_coiled", 126, 0.4)
    assert lines[0].endswith("_") and len(lines) == 2 and all(_text_width(t, 0.4) <= 126 for t in lines)
    long = _caption_lines("x" * 200, 62, 0.3)
    assert len(long) == 2 and long[1].endswith("..") and all(_text_width(t, 0.3) <= 62 for t in long)


def test_cli_preview_writes_the_png(built, tmp_path):
    res = CliRunner().invoke(app(), ["preview", str(built.shards / "zoolake"), "--out", str(tmp_path / "z.png")])
    assert res.exit_code == 0
    assert cv2.imread(str(tmp_path / "z.png")).shape[0] > 4 + 128 + 20 + 4  # one row: tile, caption, gaps
    assert (tmp_path / "z.pdf").read_bytes().startswith(b"%PDF")


# --- real data ----------------------------------------------------------------------------------------------


@pytest.mark.realdata
@pytest.mark.skipif(not KAGGLE_ZIP.is_file(), reason="real Kaggle train.zip absent")
def test_real_kaggle_classes_verify_stats_and_preview(tmp_path):
    classes = ("amphipods", "artifacts", "fish_larvae_thin_body")
    with zipfile.ZipFile(KAGGLE_ZIP) as zin, zipfile.ZipFile(tmp_path / "train.zip", "w") as zout:
        names = [n for n in zin.namelist() if n.count("/") == 2 and n.split("/")[1] in classes]
        for n in names:
            zout.writestr(zin.getinfo(n), zin.read(n))
    expected = Counter(n.split("/")[1] for n in names if n.endswith(".jpg"))
    report = ingest(
        "kaggle",
        tmp_path / "train.zip",
        shards_root=tmp_path / "shards",
        manifests_root=tmp_path / "manifests",
        config=PreprocessConfig(size=64),
        records_per_shard=100,
    )
    assert verify(report.shard_dir) == []
    stats = summarize("kaggle", tmp_path / "shards", tmp_path / "manifests")["datasets"]["kaggle"]
    assert stats["classes"] == dict(expected.most_common()) and len(expected) == 3
    sheet = contact_sheet(report.shard_dir, tmp_path / "k.png", per_dataset=3, tile=32)
    assert cv2.imread(str(sheet)).shape[1] == 220 + 3 * 36 + 4 and sheet.with_suffix(".pdf").is_file()
    tar = report.shard_dir / "kaggle-000000.tar"
    tar.write_bytes(tar.read_bytes()[:-20000])
    problems = verify(report.shard_dir)
    assert {p.shard for p in problems} == {"kaggle-000000.tar"} and any(p.key for p in problems)
    with pytest.raises(PlanktonDataError, match="fails its sha256"):
        contact_sheet(report.shard_dir, tmp_path / "k2.png", per_dataset=10_000, tile=32)


def test_verify_finds_the_manifest_from_any_working_directory_and_manifests_location(tmp_path, monkeypatch):
    """index.json names its manifest relative to the shard folder, for ingest and shard sets alike."""
    info = write_fixture("zoolake", tmp_path / "raw")
    shards, manifests = tmp_path / "A" / "shards", tmp_path / "B" / "elsewhere"
    monkeypatch.chdir(tmp_path)
    ingest("zoolake", info.raw, shards_root=Path("A/shards"), manifests_root=Path("B/elsewhere"), records_per_shard=4)
    build_shard_set("set", shards_root=Path("A/shards"), manifests_root=Path("B/elsewhere"), samples_per_shard=2)
    elsewhere = tmp_path / "C" / "deep"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    for name in ("zoolake", "set"):
        assert (
            json.loads((shards / name / "index.json").read_text())["manifest"] == f"../../../B/elsewhere/{name}.parquet"
        )
        assert verify(shards / name) == []
        assert summarize(shards / name)["manifest"] == str(manifests / f"{name}.parquet")
    moved = tmp_path / "moved"  # the shard root and its manifests moved together keep working
    shutil.move(tmp_path / "A", moved / "A")
    shutil.move(tmp_path / "B", moved / "B")
    assert verify(moved / "A" / "shards" / "set") == []
