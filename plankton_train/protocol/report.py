"""Metrics and the paper's report outputs from experiment results.

Per run (fine-tuning writes ``test_predictions.parquet``: key, label, pred, confidence): accuracy,
balanced accuracy, macro-F1, expected calibration error and per-class precision/recall/F1.
Over runs (:func:`write_report`, from the experiment's ``results.csv``):

* ``accuracy.md`` / ``accuracy.csv`` - Table 3 layout: mean +/- std test accuracy (%) over folds, one row
  per group (instrument) and model, one column per labelled fraction;
* ``metrics.csv`` - the same cells with balanced accuracy, macro-F1 and ECE (mean and std over folds);
* ``accuracy_vs_fraction.png`` - Figures 4/6: accuracy against fraction, one panel per group, one line per
  model, error bars = std over folds;
* ``confusion/<group>__<model>__<pct>.png`` - Figure 5: row-normalised confusion matrix pooled over folds
  with each class's accuracy (recall) beside it; ``per_class.csv`` - precision/recall/F1/support per class.
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


def plot_accuracy_vs_fraction(results: pd.DataFrame, path: Path) -> Path:
    """One panel per group: mean test accuracy vs labelled fraction (log x), std over folds as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = cell_summary(results)
    groups = sorted(summary["group"].unique())
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.6), squeeze=False, sharey=True)
    for ax, group in zip(axes[0], groups, strict=True):
        for model, rows in summary[summary["group"] == group].groupby("model", sort=True):
            rows = rows.sort_values("fraction")
            ax.errorbar(
                rows["fraction"] * 100,
                rows["accuracy_mean"] * 100,
                yerr=rows["accuracy_std"].fillna(0) * 100,
                marker="o",
                capsize=3,
                label=model,
            )
        ax.set_xscale("log")
        fractions = sorted(summary["fraction"].unique())
        ax.set_xticks([f * 100 for f in fractions], [_pct(f) for f in fractions])
        ax.set_title(group, fontsize=10)
        ax.set_xlabel("labelled training data")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_confusion(labels: Sequence[str], preds: Sequence[str], classes: Sequence[str], path: Path, title: str) -> Path:
    """Row-normalised confusion matrix (true rows, predicted columns) plus per-class accuracy bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = confusion_matrix(labels, preds, labels=list(classes)).astype(np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(classes)
    side = max(4.0, 0.32 * n + 2.5)
    fig, (ax, bar) = plt.subplots(1, 2, figsize=(side + 2.5, side), gridspec_kw={"width_ratios": [side, 2.0]})
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(n), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
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
    bar.barh(range(n), np.diag(norm) * 100, color="tab:blue")
    bar.set_ylim(n - 0.5, -0.5)
    bar.set_yticks([])
    bar.set_xlim(0, 100)
    bar.set_xlabel("class accuracy (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
    ``confusion_fractions`` limits which fractions get a confusion PNG (default: all).
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
    written.append(plot_accuracy_vs_fraction(results, out / "accuracy_vs_fraction.png"))
    per_class = []
    for (group, model, fraction), runs in results.groupby(CELL, sort=True):
        preds = _pooled_predictions(runs, results_path.parent)
        if preds is None:
            continue
        classes = sorted(set(preds["label"]) | set(preds["pred"]))
        pc = per_class_metrics(preds["label"], preds["pred"], classes)
        per_class.append(pc.assign(group=group, model=model, fraction=fraction))
        if confusion_fractions is None or fraction in confusion_fractions:
            (out / "confusion").mkdir(exist_ok=True)
            name = f"{_slug(group)}__{_slug(model)}__{_pct(fraction).rstrip('%')}pct.png"
            title = f"{group} - {model} - {_pct(fraction)} ({len(runs)} folds, {len(preds)} test images)"
            written.append(plot_confusion(preds["label"], preds["pred"], classes, out / "confusion" / name, title))
    if per_class:
        frame = pd.concat(per_class, ignore_index=True)[[*CELL, "class", "precision", "recall", "f1", "support"]]
        frame.to_csv(out / "per_class.csv", index=False)
        written.append(out / "per_class.csv")
    return written
