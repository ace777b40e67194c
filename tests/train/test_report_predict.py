"""Metrics, report files, prediction output schema, the experiment grid (resumable) and the CLI commands."""

from __future__ import annotations

import json
import struct
import zipfile
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import timm
import torch
from timm.models import save_for_hf
from typer.testing import CliRunner

from plankton_data.format.index import read_index
from plankton_train.cli.main import app
from plankton_train.data.labelled import ClassMap
from plankton_train.errors import ExperimentError, PredictError
from plankton_train.finetune import Recipe
from plankton_train.models.classifier import EncoderSpec, build_classifier, save_classifier
from plankton_train.protocol.experiment import load_experiment, run_experiment
from plankton_train.protocol.predict import (
    UNASSIGNED,
    PredictOptions,
    distribution_check,
    predict,
    read_predict_metadata,
    read_thresholds,
)
from plankton_train.protocol.report import (
    classification_metrics,
    expected_calibration_error,
    per_class_metrics,
    plot_confusion,
    read_results,
    reliability_bins,
    write_report,
)
from tests.conftest import draw_sample

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
SPEC = EncoderSpec(arch="vit_tiny_patch16_224", init="random", model_kwargs=TINY)
CLASSES = ("bar", "disc", "ring")
runner = CliRunner()


def test_expected_calibration_error_known_values() -> None:
    assert expected_calibration_error(np.ones(10), np.ones(10, bool)) == 0.0
    conf = np.full(10, 0.8)
    assert expected_calibration_error(conf, np.arange(10) < 8) == pytest.approx(0.0)  # 80 % right at 0.8
    assert expected_calibration_error(np.full(4, 0.9), np.array([1, 0, 1, 0], bool)) == pytest.approx(0.4)
    # two bins: (0.95 conf, 100 % right) and (0.55 conf, 0 % right) -> 0.5*0.05 + 0.5*0.55
    conf = np.array([0.95, 0.95, 0.55, 0.55])
    assert expected_calibration_error(conf, np.array([1, 1, 0, 0], bool)) == pytest.approx(0.3)


def test_classification_metrics_by_hand() -> None:
    labels = ["a", "a", "a", "a", "b", "b", "c", "c"]
    preds = ["a", "a", "a", "b", "b", "b", "a", "c"]
    m = classification_metrics(labels, preds, [1.0] * 8)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 1 + 1 / 2) / 3)
    f1 = [
        2 * 0.75 * 0.75 / 1.5,
        2 * (2 / 3) / (2 / 3 + 1),
        2 * 0.5 / 1.5,
    ]  # a: P=R=.75; b: P=2/3,R=1; c: P=1,R=.5
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    assert m["ece"] == pytest.approx(0.25)  # all at confidence 1.0, 75 % right
    pc = per_class_metrics(labels, preds, ["a", "b", "c"]).set_index("class")
    assert pc.loc["c", "recall"] == 0.5 and pc.loc["b", "precision"] == pytest.approx(2 / 3)
    assert pc["support"].tolist() == [4, 2, 2]


def png_dpi(path: Path) -> float:
    """Resolution a PNG declares in its ``pHYs`` chunk (0 when it has none)."""
    data = path.read_bytes()
    at = data.find(b"pHYs")
    if at < 0:
        return 0.0
    x, _, unit = struct.unpack(">IIB", data[at + 4 : at + 13])
    return round(x * 0.0254, 1) if unit == 1 else 0.0  # pixels per metre -> dpi (7874 -> 200.0)


def test_reliability_bins_match_the_ece() -> None:
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.2, 1.0, 500)
    right = rng.random(500) < conf
    bins = reliability_bins(conf, right)
    assert len(bins) == 15 and bins["n"].sum() == 500
    full = bins[bins["n"] > 0]
    ece = float((full["n"] * (full["accuracy"] - full["confidence"]).abs()).sum() / 500)
    assert ece == pytest.approx(expected_calibration_error(conf, right))


def test_confusion_figure_grows_with_the_classes_and_reads_at_38(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    many = [f"Asterionella_formosa_{i:02d}" for i in range(38)]
    labels = rng.choice(many, 800)
    small = plot_confusion(["a", "b", "a"], ["a", "b", "b"], ["a", "b"], tmp_path / "small.png", "two")
    big = plot_confusion(labels, labels, many, tmp_path / "big.png", "38 classes")
    assert [p.suffix for p in big] == [".png", ".pdf"] and all(p.is_file() for p in small + big)
    h_small, w_small = cv2.imread(str(small[0])).shape[:2]
    h_big, w_big = cv2.imread(str(big[0])).shape[:2]
    # ~0.22 in per class at 200 dpi: 38 rows of names get >= 40 px each
    assert h_big > 38 * 40 and h_big > 2 * h_small and w_big > w_small + 1000
    assert png_dpi(big[0]) >= 200


def _fake_results(base: Path) -> Path:
    """2 models x 2 fractions x 3 folds, with per-run test predictions; model `good` is right 90 %."""
    rng = np.random.default_rng(0)
    rows = []
    for model, p_right in (("good", 0.9), ("weak", 0.5)):
        for fraction in (0.1, 1.0):
            for fold in range(3):
                labels = rng.choice(CLASSES, 60)
                right = rng.random(60) < p_right
                preds = np.where(right, labels, np.roll(labels, 1))
                preds = np.where(right | (preds != labels), preds, "bar")
                run = Path("runs") / model / f"{fraction}" / f"fold{fold}"
                (base / run).mkdir(parents=True)
                pd.DataFrame(
                    {
                        "key": [f"k{i}" for i in range(60)],
                        "label": labels,
                        "pred": preds,
                        "confidence": rng.uniform(0.4, 1.0, 60),
                    }
                ).to_parquet(base / run / "test_predictions.parquet")
                rows.append(
                    {
                        "model": model,
                        "group": "syn/A",
                        "fraction": fraction,
                        "fold": fold,
                        "accuracy": float((labels == preds).mean()),
                        "balanced_accuracy": 0.5,
                        "macro_f1": 0.5,
                        "ece": 0.1,
                        "run_dir": run.as_posix(),
                    }
                )
    pd.DataFrame(rows).to_csv(base / "results.csv", index=False)
    return base / "results.csv"


def test_report_writes_table3_layout_plots_and_per_class_metrics(tmp_path: Path) -> None:
    results = _fake_results(tmp_path / "exp")
    files = write_report(results, out=tmp_path / "report", confusion_fractions=[0.1])
    names = {p.relative_to(tmp_path / "report").as_posix() for p in files}
    assert {
        "accuracy.md",
        "accuracy.csv",
        "metrics.csv",
        "accuracy_vs_fraction.png",
        "accuracy_vs_fraction.pdf",
        "per_class.csv",
    } <= names
    cells = {
        f"{kind}/syn-A__{m}__10pct.{ext}"
        for kind in ("confusion", "reliability")
        for m in ("good", "weak")
        for ext in ("png", "pdf")
    }
    assert cells == {n for n in names if n.startswith(("confusion/", "reliability/"))}
    pngs = sorted((tmp_path / "report").rglob("*.png"))
    assert len(pngs) == 5
    for png in pngs:
        img = cv2.imread(str(png))
        assert img is not None and img.shape[0] > 200 and img.std() > 5, png  # a real, non-blank picture
        assert png_dpi(png) >= 200, png
        assert png.with_suffix(".pdf").read_bytes().startswith(b"%PDF"), png
    table = pd.read_csv(tmp_path / "report" / "accuracy.csv")
    assert list(table.columns) == ["group", "model", "10%", "100%"]
    res = read_results(results)
    acc = res[(res["model"] == "good") & (res["fraction"] == 0.1)]["accuracy"] * 100
    cell = table.set_index("model").loc["good", "10%"]
    assert cell == f"{acc.mean():.2f} ± {acc.std():.2f}"  # mean ± sample std over the 3 folds, as Table 3
    assert "| syn/A | good |" in (tmp_path / "report" / "accuracy.md").read_text()
    per_class = pd.read_csv(tmp_path / "report" / "per_class.csv")
    assert len(per_class) == 2 * 2 * 3 and per_class.groupby(["model", "fraction"])["support"].sum().eq(180).all()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny classifier saved as a run folder (the predict schema does not need training)."""
    out = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    model = build_classifier(SPEC, len(CLASSES))
    save_classifier(
        out,
        model,
        classes=ClassMap(CLASSES),
        mean=0.8,
        std=0.2,
        recipe=Recipe(img_size=32, resize=36),
        initialised_from="random",
    )
    return out


@pytest.fixture(scope="module")
def raw_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Raw images as a user has them: colour, non-square, mixed formats, plus junk and a corrupt file."""
    folder = tmp_path_factory.mktemp("raw") / "imgs"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, cls in enumerate(CLASSES * 2):
        img = cv2.cvtColor(draw_sample(cls, rng, 48)[:, : 30 + i], cv2.COLOR_GRAY2BGR)
        cv2.imwrite(str(folder / ("sub" if i % 2 else "") / f"{cls}_{i}.{'png' if i % 2 else 'jpg'}"), img)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / ".DS_Store").write_bytes(b"junk")
    return folder


def test_predict_schema_on_a_folder_with_embeddings_and_threshold(
    model_dir: Path, raw_images: Path, tmp_path: Path
) -> None:
    table = predict(
        model_dir, source=raw_images, out=tmp_path / "p.parquet", opts=PredictOptions(top_k=2, embeddings=True)
    )
    assert len(table) == 6  # broken.jpg skipped, junk ignored
    assert table["source"].str.endswith((".jpg", ".png")).all()
    expected = [
        "source",
        "label",
        "confidence",
        "top1",
        "top1_prob",
        "top2",
        "top2_prob",
        *[f"prob_{c}" for c in CLASSES],
        *[f"emb_{i:04d}" for i in range(TINY["embed_dim"])],
    ]
    assert list(table.columns) == expected
    probs = table[[f"prob_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert (table["top1_prob"] >= table["top2_prob"]).all() and (table["label"] == table["top1"]).all()
    np.testing.assert_allclose(table["confidence"], probs.max(1), atol=1e-6)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "p.parquet"), table)
    strict = predict(model_dir, source=raw_images, out=tmp_path / "p.csv", opts=PredictOptions(min_confidence=0.999))
    assert (strict["label"] == UNASSIGNED).all() and "emb_0000" not in strict.columns
    np.testing.assert_allclose(strict["confidence"], table["confidence"], atol=1e-5)  # same preprocessing, same seed
    assert len(pd.read_csv(tmp_path / "p.csv")) == 6


def test_predict_reads_zip_archives_and_shard_sets(
    model_dir: Path, raw_images: Path, synthetic_shards, tmp_path: Path
) -> None:
    archive = tmp_path / "imgs.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(raw_images.rglob("*.*")):
            zf.write(p, p.relative_to(raw_images.parent).as_posix())
    from_zip = predict(model_dir, source=archive, out=tmp_path / "z.csv")
    from_dir = predict(model_dir, source=raw_images, out=tmp_path / "d.csv")
    np.testing.assert_allclose(np.sort(from_zip["confidence"]), np.sort(from_dir["confidence"]), atol=1e-5)
    shards = predict(model_dir, source=synthetic_shards.folder, out=tmp_path / "s.parquet")
    manifest = pd.read_parquet(synthetic_shards.manifest)
    assert sorted(shards["source"]) == sorted(manifest["key"])
    with pytest.raises(PredictError, match=r"\.parquet or \.csv"):
        predict(model_dir, source=raw_images, out=tmp_path / "p.txt")


def _config(tmp_path: Path, shards, models: str) -> Path:
    cfg = tmp_path / "exp.toml"
    cfg.write_text(f"""
manifest = "{shards.manifest}"
shards_root = "{shards.root}"
splits = "splits.parquet"
out = "out"
fractions = [0.1]
folds = [0, 1]

[encoder]
arch = "vit_tiny_patch16_224"
model_kwargs = {{ img_size = 32, patch_size = 8, embed_dim = 32, depth = 2, num_heads = 2 }}

[models]
{models}

[recipe]
epochs = 1
warmup_epochs = 0
batch_size = 8
img_size = 32
resize = 36
num_workers = 0
""")
    return cfg


def test_experiment_grid_is_resumable_and_reports(tmp_path: Path, synthetic_shards) -> None:
    r = runner.invoke(app, ["splits", str(synthetic_shards.manifest), "--out", str(tmp_path / "splits.parquet")])
    assert r.exit_code == 0, r.output
    assert "synthetic/synthetic" in r.output and "1-1" in r.output  # 1 %: one image per class
    cfg = _config(tmp_path, synthetic_shards, 'scratch = "random"\nscratch2 = { init = "random", drop_path = 0.0 }')
    exp = load_experiment(cfg)
    assert exp.splits == tmp_path / "splits.parquet" and exp.models["scratch2"].drop_path == 0.0
    results = run_experiment(exp)
    assert len(results) == 4 and set(results["model"]) == {"scratch", "scratch2"}
    assert results.groupby("fold")["n_test"].nunique().eq(1).all()  # same test set for both models
    assert results["n_test"].between(6, 9).all() and results["accuracy"].between(0, 1).all()  # 2-3 per class
    stamp = (tmp_path / "out" / "results.csv").stat().st_mtime_ns
    again = run_experiment(load_experiment(cfg))  # every cell done: nothing reruns
    assert len(again) == 4 and (tmp_path / "out" / "results.csv").stat().st_mtime_ns == stamp
    (tmp_path / "out" / "results.csv").write_text(
        "\n".join((tmp_path / "out" / "results.csv").read_text().splitlines()[:-1]) + "\n"
    )  # lose the last row
    assert len(run_experiment(load_experiment(cfg))) == 4  # ... and only that cell reruns
    # rows of other settings never join the table; another model name may
    with pytest.raises(ExperimentError, match=r"another recipe \(differs in \['epochs'\]\)"):
        run_experiment(replace(exp, recipe=replace(exp.recipe, epochs=2)))
    with pytest.raises(ExperimentError, match="another 'scratch2' encoder spec"):
        run_experiment(replace(exp, models={"scratch2": replace(exp.models["scratch2"], drop_path=0.1)}))
    assert len(pd.read_csv(tmp_path / "out" / "results.csv")) == 4
    wider = replace(exp, models={**exp.models, "scratch3": exp.models["scratch2"]}, folds=(0,))
    assert len(run_experiment(wider)) == 5
    settings = json.loads((tmp_path / "out" / "experiment.json").read_text())
    assert sorted(settings["models"]) == ["scratch", "scratch2", "scratch3"] and settings["recipe"]["epochs"] == 1
    # a folder written before a recipe field existed: the missing field counts as its default
    for key in ("precision", "compile"):
        del settings["recipe"][key]
    (tmp_path / "out" / "experiment.json").write_text(json.dumps(settings))
    assert len(run_experiment(wider)) == 5
    r = runner.invoke(app, ["report", str(tmp_path / "out" / "results.csv"), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "rep" / "confusion" / "synthetic-synthetic__scratch__10pct.png").is_file()
    bad = _config(tmp_path, synthetic_shards, 'x = { init = "random", dropout = 0.1 }')
    with pytest.raises(ExperimentError, match="dropout"):
        load_experiment(bad)


def test_cli_finetune_and_predict_end_to_end(tmp_path: Path, synthetic_shards) -> None:
    """`splits` -> `finetune` (init from a local timm-format folder) -> `predict`, through the CLI only."""
    torch.manual_seed(0)
    save_for_hf(
        timm.create_model(SPEC.arch, num_classes=0, in_chans=1, **TINY),
        tmp_path / "tiny",
        model_args=dict(in_chans=1, num_classes=0, **TINY),
    )
    splits = tmp_path / "splits.parquet"
    assert runner.invoke(app, ["splits", str(synthetic_shards.manifest), "--out", str(splits)]).exit_code == 0
    args = [
        "finetune",
        "--manifest",
        str(synthetic_shards.manifest),
        "--shards",
        str(synthetic_shards.root),
        "--splits",
        str(splits),
        "--fraction",
        "0.1",
        "--init",
        str(tmp_path / "tiny"),
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--img-size",
        "32",
        "--resize",
        "36",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "run"),
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "test accuracy" in r.output and (tmp_path / "run" / "metrics.json").is_file()
    info = json.loads((tmp_path / "run" / "classifier.json").read_text())
    index = read_index(synthetic_shards.folder)
    assert info["normalisation"] == "dataset" and info["mean"] == pytest.approx(index.mean)
    r = runner.invoke(app, [*args[:-1], str(tmp_path / "run2"), "--normalization", "encoder", "--epochs", "1"])
    info = json.loads((tmp_path / "run2" / "classifier.json").read_text())
    assert r.exit_code == 0 and info["normalisation"] == "encoder" and info["mean"] != pytest.approx(index.mean)
    r = runner.invoke(
        app,
        [
            "predict",
            str(tmp_path / "run"),
            str(synthetic_shards.folder),
            "--out",
            str(tmp_path / "p.csv"),
            "--min-confidence",
            "0.5",
        ],
    )
    assert r.exit_code == 0, r.output
    assert len(pd.read_csv(tmp_path / "p.csv")) == synthetic_shards.total


def test_cli_errors_are_one_line_with_nonzero_exit(tmp_path: Path, model_dir: Path) -> None:
    cases = [
        ["splits", str(tmp_path / "missing.parquet"), "--out", str(tmp_path / "s.parquet")],
        ["predict", str(model_dir), str(tmp_path / "nothing"), "--out", str(tmp_path / "p.csv")],
        ["predict", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "p.csv")],
        ["report", str(tmp_path / "results.csv"), "--out", str(tmp_path / "r")],
        ["experiment", str(tmp_path / "nope.toml")],
    ]
    for args in cases:
        r = runner.invoke(app, args)
        assert r.exit_code == 1, (args, r.output)
        assert "Traceback" not in r.output and "error:" in r.output, r.output
    for cmd in ("splits", "finetune", "experiment", "report", "predict"):
        r = runner.invoke(app, [cmd, "--help"])
        assert r.exit_code == 0 and "Example: plankton-train" in r.output


def _model_copy(model_dir: Path, dest: Path, **info_changes) -> Path:
    """``model_dir`` with its ``classifier.json`` changed (same weights)."""
    dest.mkdir(parents=True)
    for p in model_dir.iterdir():
        (dest / p.name).write_bytes(p.read_bytes())
    info = json.loads((dest / "classifier.json").read_text())
    info.update(info_changes)
    (dest / "classifier.json").write_text(json.dumps(info))
    return dest


def test_predict_warns_once_when_inputs_are_far_from_the_training_pixels(
    model_dir: Path, raw_images: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = predict(model_dir, source=raw_images, out=tmp_path / "first.parquet")
    seen = first.attrs["predict"]["distribution"]["input_pixels"]
    assert 0 < seen["mean"] < 1 and 0 < seen["std"] < 1
    same = _model_copy(model_dir, tmp_path / "same", train_pixels={"mean": seen["mean"], "std": seen["std"]})
    caplog.clear()
    near = predict(same, source=raw_images, out=tmp_path / "near.parquet")
    assert near.attrs["predict"]["warning"] is None and near.attrs["predict"]["distribution"]["far"] is False
    assert not [r for r in caplog.records if r.levelname == "WARNING" and "unlike" in r.getMessage()]
    # these bright images against a model trained on dark images (bright-field fed to a dark-field model)
    bright = _model_copy(model_dir, tmp_path / "bright", mean=max(seen["mean"] - 0.6, 0.05), std=0.1)
    caplog.clear()
    table = predict(bright, source=raw_images, out=tmp_path / "far.parquet")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "unlike" in r.getMessage()]
    assert len(warnings) == 1 and "training stds apart" in warnings[0] and "\n" not in warnings[0]
    meta = read_predict_metadata(tmp_path / "far.parquet")
    assert meta == table.attrs["predict"] and meta["warning"] == warnings[0] and meta["images"] == 6
    assert meta["distribution"]["far"] is True and meta["distribution"]["mean_shift_sd"] > 1
    assert meta["distribution"]["train_pixels"]["from"] == "classifier.json mean/std"
    predict(bright, source=raw_images, out=tmp_path / "far.csv")
    assert read_predict_metadata(tmp_path / "far.csv")["warning"] == warnings[0]  # far.csv.json beside it
    assert (tmp_path / "far.csv.json").is_file() and len(pd.read_csv(tmp_path / "far.csv")) == 6
    # a std far narrower than training's is flagged too
    assert distribution_check({"mean": 0.5, "std": 0.05}, {"mean": 0.5, "std": 0.2, "from": "x"})["far"] is True
    # encoder normalisation: classifier.json's mean/std are not the training set's -> no check, no warning
    enc = _model_copy(model_dir, tmp_path / "enc", normalisation="encoder", mean=0.1)
    meta = predict(enc, source=raw_images, out=tmp_path / "enc.parquet").attrs["predict"]
    assert meta["distribution"]["far"] is None and meta["warning"] is None


def test_predict_per_class_thresholds(model_dir: Path, raw_images: Path, tmp_path: Path) -> None:
    base = predict(model_dir, source=raw_images, out=tmp_path / "base.csv")
    top = base["top1"].value_counts().index[0]
    csv = tmp_path / "thr.csv"
    csv.write_text(f"class,threshold\n{top},1.0\n")
    table = predict(
        model_dir, source=raw_images, out=tmp_path / "t.csv", opts=PredictOptions(thresholds=read_thresholds(csv))
    )
    assert ((table["top1"] == top) == (table["label"] == UNASSIGNED)).all()  # only that class needs 1.0
    assert read_predict_metadata(tmp_path / "t.csv")["thresholds"] == {top: 1.0}
    # a class threshold overrides --min-confidence for that class only
    csv.write_text(f"class,threshold\n{top},0\n")
    mixed = predict(
        model_dir,
        source=raw_images,
        out=tmp_path / "m.csv",
        opts=PredictOptions(min_confidence=0.999, thresholds=read_thresholds(csv)),
    )
    assert ((mixed["top1"] == top) == (mixed["label"] == top)).all() and (mixed["label"] != top).sum() == (
        mixed["label"] == UNASSIGNED
    ).sum()
    csv.write_text("class,threshold\nno_such_class,0.5\n")
    with pytest.raises(PredictError, match="no_such_class"):
        predict(
            model_dir, source=raw_images, out=tmp_path / "x.csv", opts=PredictOptions(thresholds=read_thresholds(csv))
        )
    csv.write_text("class,threshold\nbar,1.5\n")
    with pytest.raises(PredictError, match=r"\[0, 1\]"):
        read_thresholds(csv)
    csv.write_text("name,value\nbar,0.5\n")
    with pytest.raises(PredictError, match="class,threshold"):
        read_thresholds(csv)
    csv.write_text(f"class,threshold\n{top},1.0\n")
    r = runner.invoke(
        app, ["predict", str(model_dir), str(raw_images), "--out", str(tmp_path / "c.csv"), "--thresholds", str(csv)]
    )
    assert r.exit_code == 0, r.output
    assert (pd.read_csv(tmp_path / "c.csv")["label"] == UNASSIGNED).sum() == (base["top1"] == top).sum()
    r = runner.invoke(
        app, ["predict", str(model_dir), str(raw_images), "--out", str(tmp_path / "c.csv"), "--thresholds", "nope.csv"]
    )
    assert r.exit_code == 1 and "no thresholds file" in r.output
