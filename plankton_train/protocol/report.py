"""Metrics and the paper's report outputs from experiment results.

Per run (fine-tuning writes ``test_predictions.parquet``: key, label, pred, confidence): accuracy,
balanced accuracy, macro-F1, expected calibration error and per-class precision/recall/F1.
Over runs (:func:`write_report`, from the experiment's ``results.csv``):

* ``accuracy.md`` / ``accuracy.csv`` - Table 3 layout: mean +/- std test accuracy (%) over folds, one row
  per group (instrument) and model, one column per labelled fraction;
* ``metrics.csv`` - the same cells with balanced accuracy, macro-F1 and ECE (mean and std over folds);
* ``accuracy_vs_fraction.png`` - Figures 4/6: accuracy, balanced accuracy and macro-F1 against fraction (a
  row of panels per group, one line per model, error bars = std over folds, y axis from 0 to 100 %);
* ``confusion/<group>__<model>__<pct>.png`` - Figure 5: row-normalised confusion matrix pooled over folds,
  with a colour bar, per-class test counts and each class's accuracy (recall) beside it;
* ``reliability/<group>__<model>__<pct>.png`` - reliability diagram of the pooled predictions, with its ECE;
* ``per_class.csv`` - precision/recall/F1/support per class.

Every figure is written as PNG (200 dpi) and as PDF, same name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import (
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from plankton_train.errors import ReportError

PREDICTIONS_NAME = "test_predictions.parquet"
CELL = ["group", "model", "fraction"]


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """ECE: ``sum_b (n_b / N) |accuracy_b - mean confidence_b|`` over ``bins`` equal-width confidence bins.

    ``confidence``: (N,) top-1 probabilities in [0, 1]; ``correct``: (N,) bool. 0 = perfectly calibrated.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if confidence.size == 0:
        return float("nan")
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)  # bin b covers [b/bins, (b+1)/bins)
    counts = np.bincount(which, minlength=bins)
    gap = np.abs(np.bincount(which, correct, bins) - np.bincount(which, confidence, bins))
    return float(gap.sum() / counts.sum())


def classification_metrics(labels: Sequence[str], preds: Sequence[str], confidence: Sequence[float]) -> dict:
    """Accuracy, balanced accuracy (mean per-class recall), macro-F1 and ECE of one set of predictions."""
    y, p = np.asarray(labels, dtype=object), np.asarray(preds, dtype=object)
    if y.size == 0:
        raise ReportError("no predictions to score")
    return {
        "accuracy": float((y == p).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(y, p)),
        "macro_f1": float(f1_score(y, p, average="macro", zero_division=0)),
        "ece": expected_calibration_error(np.asarray(confidence), y == p),
    }


def per_class_metrics(labels: Sequence[str], preds: Sequence[str], classes: Sequence[str]) -> pd.DataFrame:
    """Precision, recall (= per-class accuracy), F1 and support for each of ``classes``."""
    prec, rec, f1, sup = precision_recall_fscore_support(labels, preds, labels=list(classes), zero_division=0)
    return pd.DataFrame({"class": list(classes), "precision": prec, "recall": rec, "f1": f1, "support": sup})


def read_results(path: Path | str) -> pd.DataFrame:
    """The experiment's results table (CSV or Parquet), checked for the columns the report needs."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"no results at {path}")
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    missing = [c for c in [*CELL, "fold", "accuracy"] if c not in frame.columns]
    if missing:
        raise ReportError(f"{path} lacks columns {missing}")
    if frame.empty:
        raise ReportError(f"{path} has no runs")
    return frame


def _pct(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def cell_summary(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over folds of every metric column, per (group, model, fraction); ``folds`` = runs."""
    metrics = [c for c in ("accuracy", "balanced_accuracy", "macro_f1", "ece") if c in results.columns]
    agg = results.groupby(CELL, sort=True)[metrics].agg(["mean", "std"])
    agg.columns = [f"{m}_{s}" for m, s in agg.columns]
    agg["folds"] = results.groupby(CELL, sort=True).size()
    return agg.reset_index()


def accuracy_table(results: pd.DataFrame) -> pd.DataFrame:
    """Table 3 layout: rows (group, model), columns fractions, cells ``"mean ± std"`` accuracy in % with two
    decimals, as the paper's Table 3 (its differences between models are often below 0.5 points)."""
    summary = cell_summary(results)
    std = summary["accuracy_std"].fillna(0.0)
    summary["cell"] = [f"{100 * m:.2f} ± {100 * s:.2f}" for m, s in zip(summary["accuracy_mean"], std, strict=True)]
    table = summary.pivot(index=["group", "model"], columns="fraction", values="cell")
    table.columns = [_pct(f) for f in table.columns]
    return table.reset_index().fillna("-")


def _markdown(frame: pd.DataFrame) -> str:
    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body]) + "\n"


FIGURE_DPI = 200  # PNG resolution; every figure is also written as a vector PDF beside it
METRIC_LABELS = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "macro_f1": "macro-F1"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path | str) -> list[Path]:
    """Write ``fig`` as ``path`` (PNG, :data:`FIGURE_DPI` dpi) and the same name with ``.pdf``; close it.

    Returns ``[png, pdf]``. The PDF carries no creation date, so the same figure gives the same bytes.
    """
    path = Path(path).with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    pdf = path.with_suffix(".pdf")
    fig.savefig(path, dpi=FIGURE_DPI, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(pdf, bbox_inches="tight", metadata={"CreationDate": None, "Producer": None, "Creator": None})
    _pyplot().close(fig)
    return [path, pdf]


def plot_accuracy_vs_fraction(results: pd.DataFrame, path: Path) -> list[Path]:
    """Figures 4/6: test accuracy, balanced accuracy and macro-F1 (columns; those the results have) against
    the labelled fraction (log x), one row of panels per group, one line per model, error bars = std over
    folds. The y axis runs from 0 to 100 % in every panel so that gaps between models are not magnified; the
    tick labels of the x axis give the mean number of labelled training images when the results record it.

    Returns the PNG and PDF paths.
    """
    plt = _pyplot()
    summary = cell_summary(results)
    metrics = [m for m in METRIC_LABELS if f"{m}_mean" in summary.columns]
    groups = sorted(summary["group"].unique())
    n_train = results.groupby(["group", "fraction"])["n_train"].mean() if "n_train" in results.columns else None
    fig, axes = plt.subplots(
        len(groups), len(metrics), figsize=(3.6 * len(metrics), 3.2 * len(groups)), squeeze=False, sharey=True
    )
    for r, group in enumerate(groups):
        rows_g = summary[summary["group"] == group]
        fractions = sorted(rows_g["fraction"].unique())
        ticks = [_pct(f) + (f"\n({n_train[(group, f)]:,.0f})" if n_train is not None else "") for f in fractions]
        for c, metric in enumerate(metrics):
            ax = axes[r][c]
            for model, rows in rows_g.groupby("model", sort=True):
                rows = rows.sort_values("fraction")
                ax.errorbar(
                    rows["fraction"] * 100,
                    rows[f"{metric}_mean"] * 100,
                    yerr=rows[f"{metric}_std"].fillna(0) * 100,
                    marker="o",
                    capsize=3,
                    label=model,
                )
            ax.set_xscale("log")
            ax.set_xticks([f * 100 for f in fractions], ticks, fontsize=8)
            ax.minorticks_off()
            ax.set_ylim(0, 100)
            ax.set_title(f"{group}: {METRIC_LABELS[metric]}", fontsize=9)
            ax.set_xlabel("labelled training data" + (" (images)" if n_train is not None else ""), fontsize=8)
            ax.grid(alpha=0.3)
            if c == 0:
                ax.set_ylabel("test score (%), axis from 0", fontsize=8)
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_confusion(
    labels: Sequence[str], preds: Sequence[str], classes: Sequence[str], path: Path, title: str
) -> list[Path]:
    """Row-normalised confusion matrix (true rows, predicted columns) with a colour bar, each class's number
    of test images in its row label, and per-class accuracy (recall) bars beside it.

    The figure grows with the number of classes (about 0.22 in per class) so names stay readable at 35+
    classes; column labels are rotated. Returns the PNG and PDF paths.
    """
    plt = _pyplot()
    cm = confusion_matrix(labels, preds, labels=list(classes)).astype(np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(classes)
    side = max(3.5, 0.22 * n + 1.5)
    font = 8 if n <= 40 else 6
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    fig, ax = plt.subplots(figsize=(side + 3.6, side + 1.4))
    divider = make_axes_locatable(ax)  # colour bar and bars get the matrix's height
    cax = divider.append_axes("right", size=0.18, pad=0.1)
    bar = divider.append_axes("right", size=1.6, pad=0.7)
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, aspect="equal")
    ax.set_xticks(range(n), classes, rotation=60, ha="right", rotation_mode="anchor", fontsize=font)
    ax.set_yticks(range(n), [f"{c} (n={int(k)})" for c, k in zip(classes, rows[:, 0], strict=True)], fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (test images)")
    ax.set_title(title, fontsize=9)
    if n <= 20:
        for i, j in zip(*np.nonzero(cm), strict=True):
            ax.text(
                j,
                i,
                f"{norm[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=6,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    fig.colorbar(image, cax=cax, label="share of the true class")
    bar.barh(range(n), np.diag(norm) * 100, color="tab:blue")
    bar.set_ylim(n - 0.5, -0.5)
    bar.set_yticks([])
    bar.set_xlim(0, 100)
    bar.set_xlabel("class accuracy (%)")
    bar.grid(axis="x", alpha=0.3)
    return save_figure(fig, path)


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> pd.DataFrame:
    """Per equal-width confidence bin (as :func:`expected_calibration_error`): ``lo``, ``hi``, ``n``,
    ``confidence`` (mean) and ``accuracy``; NaN where a bin is empty."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    n = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(which, confidence, bins) / n
        acc = np.bincount(which, correct, bins) / n
    edges = np.linspace(0, 1, bins + 1)
    return pd.DataFrame({"lo": edges[:-1], "hi": edges[1:], "n": n, "confidence": conf, "accuracy": acc})


def plot_reliability(
    confidence: Sequence[float], correct: Sequence[bool], path: Path, title: str, bins: int = 15
) -> list[Path]:
    """Reliability diagram: accuracy per confidence bin against the diagonal, the gap shaded, ECE in the
    legend; below it the number of predictions per bin. Returns the PNG and PDF paths."""
    plt = _pyplot()
    conf, right = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=bool)
    table = reliability_bins(conf, right, bins)
    ece = expected_calibration_error(conf, right, bins)
    fig, (ax, hist) = plt.subplots(
        2, 1, figsize=(4.2, 5.0), sharex=True, gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08}
    )
    width = 1 / bins
    full = table[table["n"] > 0]
    ax.bar(
        full["lo"],
        full["accuracy"],
        width=width,
        align="edge",
        color="tab:blue",
        edgecolor="white",
        label="accuracy in bin",
    )
    ax.bar(
        full["lo"],
        (full["confidence"] - full["accuracy"]).abs(),
        bottom=np.minimum(full["accuracy"], full["confidence"]),
        width=width,
        align="edge",
        facecolor="none",
        edgecolor="tab:red",
        hatch="///",
        label="gap to mean confidence",
    )
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nECE = {100 * ece:.2f} % ({bins} bins, {len(conf):,} predictions)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    hist.bar(table["lo"], table["n"], width=width, align="edge", color="gray", edgecolor="white")
    hist.set_xlabel("confidence (top-1 probability)")
    hist.set_ylabel("predictions")
    hist.grid(alpha=0.3)
    return save_figure(fig, path)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def _pooled_predictions(runs: pd.DataFrame, base: Path) -> pd.DataFrame | None:
    """Concatenated test predictions of a cell's runs (one per fold); None if any run lacks them."""
    frames = []
    for run_dir in runs.get("run_dir", pd.Series(dtype=str)):
        path = Path(run_dir)
        path = (path if path.is_absolute() else base / path) / PREDICTIONS_NAME
        if not path.is_file():
            return None
        frames.append(pd.read_parquet(path))
    return pd.concat(frames, ignore_index=True) if frames else None


def write_report(
    results_path: Path | str, *, out: Path | str, confusion_fractions: Sequence[float] | None = None
) -> list[Path]:
    """Write all report files into ``out``; returns their paths.

    Confusion matrices and per-class metrics are pooled over the folds of each cell and need the runs'
    ``test_predictions.parquet`` (found through the results' ``run_dir``, relative to the results file).
    ``confusion_fractions`` limits which fractions get confusion and reliability figures (default: all).
    Every figure is a PNG (:data:`FIGURE_DPI` dpi) with a PDF of the same name beside it.
    """
    results_path, out = Path(results_path), Path(out)
    results = read_results(results_path)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    table = accuracy_table(results)
    table.to_csv(out / "accuracy.csv", index=False)
    (out / "accuracy.md").write_text("Test accuracy (%), mean ± std over folds\n\n" + _markdown(table))
    cell_summary(results).to_csv(out / "metrics.csv", index=False)
    written += [out / "accuracy.csv", out / "accuracy.md", out / "metrics.csv"]
    written += plot_accuracy_vs_fraction(results, out / "accuracy_vs_fraction.png")
    per_class = []
    for (group, model, fraction), runs in results.groupby(CELL, sort=True):
        preds = _pooled_predictions(runs, results_path.parent)
        if preds is None:
            continue
        classes = sorted(set(preds["label"]) | set(preds["pred"]))
        pc = per_class_metrics(preds["label"], preds["pred"], classes)
        per_class.append(pc.assign(group=group, model=model, fraction=fraction))
        if confusion_fractions is None or fraction in confusion_fractions:
            name = f"{_slug(group)}__{_slug(model)}__{_pct(fraction).rstrip('%')}pct.png"
            folds = f"{len(runs)} fold" + ("s" if len(runs) != 1 else "")
            title = f"{group} - {model} - {_pct(fraction)} ({folds}, {len(preds)} test images)"
            written += plot_confusion(preds["label"], preds["pred"], classes, out / "confusion" / name, title)
            right = (preds["label"] == preds["pred"]).to_numpy()
            written += plot_reliability(preds["confidence"], right, out / "reliability" / name, title)
    if per_class:
        frame = pd.concat(per_class, ignore_index=True)[[*CELL, "class", "precision", "recall", "f1", "support"]]
        frame.to_csv(out / "per_class.csv", index=False)
        written.append(out / "per_class.csv")
    return written
