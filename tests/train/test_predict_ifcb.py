"""``plankton-train predict`` on raw IFCB bins (generated and real) and ZooProcess legend removal at predict time."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from plankton_data.format.manifest import read_manifest, write_table
from plankton_data.ingest import ops
from plankton_data.ingest.ifcb import adc_columns, ml_analyzed, parse_header, roi_name, scan_adc
from plankton_train.data.labelled import ClassMap
from plankton_train.errors import PredictError
from plankton_train.finetune import Cell, Recipe, finetune, ingest_steps
from plankton_train.models.classifier import EncoderSpec, build_classifier, save_classifier
from plankton_train.protocol.predict import UNASSIGNED, PredictModel, PredictOptions, predict, read_predict_metadata
from plankton_train.protocol.splits import SplitConfig, splits_from_manifest, write_splits
from tests.conftest import REALDATA, draw_sample, make_shard_folder

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
SPEC = EncoderSpec(arch="vit_tiny_patch16_224", init="random", model_kwargs=TINY)
CLASSES = ("bar", "disc", "ring")
OPTS = PredictOptions(batch_size=4, threads=1, device="cpu")
LAYOUT = "trigger#, ADCtime, PMTA, PMTB, RoiX, RoiY, RoiWidth, RoiHeight, StartByte"
RUN_S, INHIBIT_S = 1200.0, 48.0  # header run and inhibit times: ml_analyzed = 0.25 * (1200 - 48) / 60 = 4.8 mL


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny classifier saved as a run folder (the outputs do not need a trained one)."""
    out = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    save_classifier(
        out,
        build_classifier(SPEC, len(CLASSES)),
        classes=ClassMap(CLASSES),
        mean=0.8,
        std=0.2,
        recipe=Recipe(img_size=32, resize=36),
        initialised_from="random",
    )
    return out


def write_bin(folder: Path, bin_id: str, rois: list[np.ndarray | None], *, cut: int = 0) -> None:
    """``<bin>.hdr/.adc/.roi`` as an IFCB writes them; ``None`` is a trigger with no image; ``cut`` drops that
    many bytes from the end of ``.roi`` (a ROI past the end of the file)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, blob = [], b""
    for n, img in enumerate(rois, start=1):
        h, w = (0, 0) if img is None else img.shape
        rows.append(f"{n},{n * 0.01:.3f},0.1,0.2,{10 * n},{5 * n},{w},{h},{len(blob)}")
        blob += b"" if img is None else np.ascontiguousarray(img, np.uint8).tobytes()
    header = f"ADCFileFormat: {LAYOUT}\nrunTime: {RUN_S}\ninhibitTime: {INHIBIT_S}\nSyringeSampleVolume: 5.000000\n"
    (folder / f"{bin_id}.hdr").write_text(header)
    (folder / f"{bin_id}.adc").write_text("\n".join(rows) + "\n")
    (folder / f"{bin_id}.roi").write_bytes(blob[: len(blob) - cut])


def _rois(seed: int, n: int) -> list[np.ndarray | None]:
    """``n`` non-square gray ROIs (IFCB-like: dark objects on a light background) with one empty trigger."""
    rng = np.random.default_rng(seed)
    out: list[np.ndarray | None] = [draw_sample(CLASSES[i % 3], rng, 40)[:, : 24 + 3 * i] for i in range(n)]
    out.insert(2, None)
    return out


BIN_A, BIN_B = "D20240105T120000_IFCB999", "D20240106T000500_IFCB999"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dated folder tree of two bins (5 and 3 ROIs, one empty trigger each), as instruments store them."""
    root = tmp_path_factory.mktemp("ifcb") / "data"
    write_bin(root / "2024" / "D20240105", BIN_A, _rois(1, 5))
    write_bin(root / "2024" / "D20240106", BIN_B, _rois(2, 3))
    return root


def _zip(folder: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder.parent).as_posix())
    return dest


def test_every_roi_of_a_folder_tree_is_classified_and_the_outputs_reconcile(model_dir, tree, tmp_path):
    counts = predict(model_dir, source=tree, out=tmp_path / "p.parquet", opts=OPTS)
    long = pd.read_parquet(tmp_path / "p.parquet")
    assert len(long) == 5 + 3  # ROIs in = rows out; the empty triggers are not ROIs
    assert long["source"].tolist() == [roi_name(BIN_A, n) for n in (1, 2, 4, 5, 6)] + [
        roi_name(BIN_B, n) for n in (1, 2, 4)
    ]
    assert long["bin"].tolist() == [BIN_A] * 5 + [BIN_B] * 3 and long["roi"].tolist() == [1, 2, 4, 5, 6, 1, 2, 4]
    probs = long[[f"prob_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    folder = tmp_path / "p_bins"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{BIN_A}.csv", f"{BIN_B}.csv", "counts.csv", "bins.csv"]
    )
    per_bin = pd.read_csv(folder / f"{BIN_A}.csv")
    assert list(per_bin.columns) == ["roi", *(f"prob_{c}" for c in CLASSES), "top_class", "passed"]
    assert per_bin["roi"].tolist() == [1, 2, 4, 5, 6] and per_bin["passed"].all()
    np.testing.assert_allclose(per_bin[[f"prob_{c}" for c in CLASSES]], probs[:5], rtol=1e-6)
    assert per_bin["top_class"].tolist() == long["top1"][:5].tolist()
    bins = pd.read_csv(folder / "bins.csv").set_index("bin")
    assert bins.loc[BIN_A, ["triggers", "rois", "classified", "empty_triggers", "unreadable"]].tolist() == [
        6,
        5,
        5,
        1,
        0,
    ]
    assert bins.loc[BIN_A, "path"] == "2024/D20240105" and (bins["status"] == "ok").all()
    ml = 0.25 * (RUN_S - INHIBIT_S) / 60
    assert bins["ml_analyzed"].tolist() == pytest.approx([ml, ml]) and bins["syringe_ml"].tolist() == [5.0, 5.0]
    on_disk = pd.read_csv(folder / "counts.csv")
    assert list(on_disk.columns) == ["bin", "class", "count", "ml_analyzed", "count_per_ml"]
    assert on_disk.groupby("bin")["count"].sum().to_dict() == {BIN_A: 5, BIN_B: 3}
    assert set(on_disk["class"]) == {*CLASSES, UNASSIGNED}  # every class, zero counts included
    np.testing.assert_allclose(on_disk["count_per_ml"], on_disk["count"] / ml)
    expected = long.groupby(["bin", "label"]).size()
    for (b, label), n in expected.items():
        assert on_disk.set_index(["bin", "class"]).loc[(b, label), "count"] == n
    pd.testing.assert_frame_equal(counts.reset_index(drop=True), on_disk, check_dtype=False)
    meta = read_predict_metadata(tmp_path / "p.parquet")
    assert meta["images"] == 8 and meta["bins"] == 2 and meta["bins_skipped"] == [] and meta["volume"] == "ml_analyzed"


def test_same_roi_same_prediction_from_a_zip_and_under_another_bin_name(model_dir, tree, tmp_path):
    """The padding noise is seeded from the ROI's pixels, not its name or where it lies."""
    first = pd.read_csv(_run(model_dir, tree, tmp_path / "a.csv"))
    zipped = _zip(tree, tmp_path / "bins.zip")
    again = pd.read_csv(_run(model_dir, zipped, tmp_path / "b.csv"))
    cols = [f"prob_{c}" for c in CLASSES]
    pd.testing.assert_frame_equal(first.drop(columns="source"), again.drop(columns="source"))
    renamed = tmp_path / "renamed"
    for ext in ("hdr", "adc", "roi"):
        renamed.mkdir(exist_ok=True)
        shutil.copy(tree / "2024" / "D20240106" / f"{BIN_B}.{ext}", renamed / f"D20250101T000000_IFCB1.{ext}")
    other = pd.read_csv(_run(model_dir, renamed, tmp_path / "c.csv"))
    np.testing.assert_array_equal(other[cols].to_numpy(), first[cols].to_numpy()[5:])
    assert read_predict_metadata(tmp_path / "c.csv")["images"] == 3  # the CSV's metadata lies beside it
    one = pd.read_csv(_run(model_dir, tree / "2024" / "D20240106" / f"{BIN_B}.adc", tmp_path / "d.csv"))
    pd.testing.assert_frame_equal(one, first[5:].reset_index(drop=True))  # one bin, given by one of its files


def _run(model_dir: Path, source: Path, out: Path, opts: PredictOptions = OPTS) -> Path:
    predict(model_dir, source=source, out=out, opts=opts)
    return out


def test_min_confidence_sends_rois_to_unassigned_in_every_output(model_dir, tree, tmp_path):
    opts = PredictOptions(batch_size=3, threads=2, device="cpu", min_confidence=0.999)
    counts = predict(model_dir, source=tree, out=tmp_path / "p.csv", opts=opts)
    per_bin = pd.read_csv(tmp_path / "p_bins" / f"{BIN_B}.csv")
    assert not per_bin["passed"].any()  # an untrained 3-class head is never 99.9 % sure
    assert counts.set_index(["bin", "class"]).loc[(BIN_B, UNASSIGNED), "count"] == 3
    assert counts.groupby("class")["count"].sum()[UNASSIGNED] == 8
    assert (pd.read_csv(tmp_path / "p.csv")["label"] == UNASSIGNED).all()
    assert counts.attrs["predict"]["unassigned"] == 8


def test_a_roi_past_the_end_of_the_roi_file_is_reported(model_dir, tmp_path, caplog):
    write_bin(tmp_path / "in", BIN_A, _rois(3, 4), cut=10)  # the last ROI loses 10 bytes
    with caplog.at_level("WARNING"):
        predict(model_dir, source=tmp_path / "in", out=tmp_path / "p.csv", opts=OPTS)
    bins = pd.read_csv(tmp_path / "p_bins" / "bins.csv").iloc[0]
    assert (bins["rois"], bins["classified"], bins["unreadable"]) == (4, 3, 1)
    assert any("1 ROIs cannot be read (first: ROI 5, ROI runs past the end" in r.message for r in caplog.records)
    assert len(pd.read_csv(tmp_path / "p.csv")) == 3


def test_a_bin_missing_a_file_is_a_listed_skip_and_no_complete_bin_is_an_error(model_dir, tree, tmp_path, caplog):
    src = tmp_path / "src"
    shutil.copytree(tree, src)
    (src / "2024" / "D20240106" / f"{BIN_B}.roi").unlink()
    stale = tmp_path / "p_bins" / f"{BIN_B}.csv"  # left by an earlier run: removed, the folder is this run's
    stale.parent.mkdir()
    stale.write_text("roi\n1\n")
    with caplog.at_level("WARNING"):
        counts = predict(model_dir, source=src, out=tmp_path / "p.csv", opts=OPTS)
    assert any(f"skipping bin {BIN_B} in 2024/D20240106: missing .roi" in r.message for r in caplog.records)
    assert set(counts["bin"]) == {BIN_A} and not stale.exists()
    bins = pd.read_csv(tmp_path / "p_bins" / "bins.csv").set_index("bin")
    assert bins.loc[BIN_B, "status"] == "skipped: missing .roi" and bins.loc[BIN_A, "status"] == "ok"
    assert counts.attrs["predict"]["bins_skipped"] == [[BIN_B, "2024/D20240106", "missing .roi"]]
    (src / "2024" / "D20240105" / f"{BIN_A}.adc").unlink()
    with pytest.raises(PredictError, match=r"no complete IFCB bin in .*2 skipped; D20240105T120000_IFCB999: missing"):
        predict(model_dir, source=src, out=tmp_path / "q.csv", opts=OPTS)
    assert not (tmp_path / "q.csv").exists()


def _console() -> Path:
    script = Path(sys.executable).parent / "plankton-train"
    if not script.is_file():
        pytest.skip(f"{script} is not installed (pip install -e '.[train,dev]')")
    return script


def test_console_script_on_a_zip_of_bins_and_on_a_broken_bin(model_dir, tree, tmp_path):
    zipped = _zip(tree, tmp_path / "bins.zip")
    out = tmp_path / "out" / "pred.csv"
    args = [str(_console()), "predict", str(model_dir), str(zipped), "--out", str(out), "--device", "cpu"]
    res = subprocess.run([*args, "--min-confidence", "0.5"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "8 images" in res.stdout and "2 IFCB bins" in res.stdout and "pred_bins" in res.stdout, res.stdout
    assert len(pd.read_csv(out)) == 8 and (tmp_path / "out" / "pred_bins" / "counts.csv").is_file()
    half = tmp_path / "half"
    write_bin(half, BIN_A, _rois(1, 2))
    (half / f"{BIN_A}.hdr").write_text("runTime: 10\n")  # no ADCFileFormat: the bin cannot be cut
    res = subprocess.run([*args[:3], str(half), *args[4:]], capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and "Traceback" not in res.stdout + res.stderr
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "no readable IFCB bin" in lines[0] and "ADCFileFormat" in lines[0], res.stderr
    assert f"skipping bin {BIN_A}: header has no ADCFileFormat" in " ".join(res.stderr.split())


IFCB = REALDATA / "ifcb"


@pytest.mark.realdata
@pytest.mark.skipif(not IFCB.is_dir(), reason="../shared/realdata/ifcb absent")
def test_the_real_bins_of_two_instrument_generations(model_dir, tmp_path, caplog):
    """The three published bins (IFCB134 and IFCB114): every ROI their .adc lists is classified once."""
    with caplog.at_level("WARNING"):
        counts = predict(model_dir, source=IFCB, out=tmp_path / "real.parquet", opts=PredictOptions(device="cpu"))
    # ClassiPyR publishes PNG exports beside its bin, the other repos training PNGs: left out, and said so
    assert any("image files beside the IFCB bins" in r.message for r in caplog.records)
    long = pd.read_parquet(tmp_path / "real.parquet")
    bins = pd.read_csv(tmp_path / "real_bins" / "bins.csv").set_index("bin")
    assert len(bins) == 3 and (bins["status"] == "ok").all()
    for hdr in sorted(IFCB.rglob("*.hdr")):
        header = parse_header(hdr.read_text())
        scan = scan_adc(hdr.with_suffix(".adc").read_text(), adc_columns(header))
        b = hdr.stem
        assert long.loc[long["bin"] == b, "roi"].tolist() == [r.number for r in scan.rois]
        assert bins.loc[b, "classified"] == len(scan.rois) and bins.loc[b, "unreadable"] == 0
        assert bins.loc[b, "ml_analyzed"] == pytest.approx(ml_analyzed(header))
        assert counts.loc[counts["bin"] == b, "count"].sum() == len(scan.rois)
        if "roiCount" in header:
            assert len(scan.rois) == int(header["roiCount"])
    assert len(long) == bins["classified"].sum() == counts["count"].sum()


# --- ZooProcess legend removal at predict time -------------------------------------------------------------


def _vignette() -> np.ndarray:
    """A ZooProcess-style vignette: an organism above the 31-px footer holding a scale bar and '1 mm'."""
    img = np.full((115, 134), 255, np.uint8)
    cv2.ellipse(img, (67, 42), (20, 30), 0, 0, 360, 90, -1)
    img[109:111, 9:104] = 85
    cv2.putText(img, "1 mm", (10, 105), cv2.FONT_HERSHEY_PLAIN, 0.6, 84, 1)
    return img


def _with_steps(model_dir: Path, dest: Path, steps: list[str]) -> Path:
    shutil.copytree(model_dir, dest)
    info = json.loads((dest / "classifier.json").read_text())
    (dest / "classifier.json").write_text(json.dumps({**info, "ingest_steps": steps}))
    return dest


def test_a_zooscan_model_erases_the_legend_at_predict_time_and_others_do_not(model_dir, tmp_path):
    zoo = _with_steps(model_dir, tmp_path / "zoo", ["zooprocess_legend", "grayscale", "pad_square", "resize"])
    other = _with_steps(model_dir, tmp_path / "other", ["grayscale", "pad_square", "resize"])
    img = _vignette()
    plain = PredictModel(other, OPTS)
    legend_free = plain.raw_input(ops.remove_zooprocess_legend(img), key="k")
    assert np.array_equal(PredictModel(zoo, OPTS).raw_input(img, key="k"), legend_free)
    assert not np.array_equal(plain.raw_input(img, key="k"), legend_free)  # the legend reaches the model
    assert PredictModel(model_dir, OPTS).steps == ()  # a model from before the key: nothing applied
    folder = tmp_path / "vignettes"
    folder.mkdir()
    cv2.imwrite(str(folder / "v.png"), img)
    a = predict(zoo, source=folder, out=tmp_path / "zoo.csv", opts=OPTS)
    b = predict(other, source=folder, out=tmp_path / "other.csv", opts=OPTS)
    assert a.attrs["predict"]["ingest_steps"] == ["zooprocess_legend"] and b.attrs["predict"]["ingest_steps"] == []
    assert not np.allclose(a["prob_bar"], b["prob_bar"])


def test_finetuning_records_the_ingest_steps_of_its_training_images(tmp_path):
    folder = make_shard_folder(tmp_path, name="zoo", per_class=8, size=32, per_shard=50, seed=1)
    table = read_manifest(folder.manifest)
    steps = json.dumps({"version": "1", "steps": ["zooprocess_legend", "grayscale", "pad_square", "resize"]})
    write_table(table.set_column(table.schema.get_field_index("preprocess"), "preprocess",
                                 [[steps] * len(table)]), folder.manifest)  # fmt: skip
    cfg = SplitConfig(seed=0)
    splits = write_splits(splits_from_manifest(folder.manifest, cfg=cfg), tmp_path / "splits.parquet", cfg=cfg)
    recipe = Recipe(epochs=1, warmup_epochs=0, batch_size=8, img_size=32, resize=36, num_workers=0)
    spec = EncoderSpec(arch="vit_tiny_patch16_224", init="random", model_kwargs=TINY)
    finetune(Cell(folder.manifest, folder.root, splits, "zoo/synthetic", 0, 1.0), encoder=spec, recipe=recipe,
             out=tmp_path / "run")  # fmt: skip
    info = json.loads((tmp_path / "run" / "classifier.json").read_text())
    assert info["ingest_steps"] == ["zooprocess_legend", "grayscale", "pad_square", "resize"]
    assert PredictModel(tmp_path / "run", OPTS).steps == ("zooprocess_legend",)


def test_a_legend_step_only_some_training_images_had_is_not_recorded(tmp_path, caplog):
    folder = make_shard_folder(tmp_path, name="mix", per_class=2, size=32, seed=1)
    table = read_manifest(folder.manifest)
    legend = json.dumps({"steps": ["zooprocess_legend", "grayscale"]})
    values = [legend if i % 2 else json.dumps({"steps": ["grayscale"]}) for i in range(len(table))]
    write_table(table.set_column(table.schema.get_field_index("preprocess"), "preprocess", [values]), folder.manifest)
    keys = table["key"].to_pylist()
    with caplog.at_level("WARNING"):
        assert ingest_steps(folder.manifest, keys) == ["grayscale"]
    assert any("zooprocess_legend was applied to 3 of 6 training images" in r.message for r in caplog.records)
    assert ingest_steps(folder.manifest, keys[1::2]) == ["zooprocess_legend", "grayscale"]
