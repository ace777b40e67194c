"""Classify images with a fine-tuned model: a folder, a zip archive or a shard set -> Parquet or CSV.

Raw images (folder or archive, any format OpenCV reads, zips nested in zips included) get the same
preprocessing as ``plankton-data ingest`` (:func:`plankton_data.ingest.preprocess.square_gray`: grayscale -> pad
to square on background-matched noise -> resize), then the model's evaluation view (resize + centre crop). The
padding noise is seeded from the file's sha256, so the same file gets the same prediction wherever it lives
(folder or archive) and however often it is classified. Dataset-specific ingest steps (ZooProcess legend
removal, box crops) are not applied: pass already-cropped vignettes. Shard sets (a folder with ``index.json``)
are already preprocessed and only get the evaluation view; their images are read at the offsets the format
layer gives (:func:`plankton_data.format.samples.sample_table`).

One output row per image:

============== =====================================================================================
source         path inside the input (folder/archive) or sample key (shard set)
label          top-1 class, or ``unassigned`` when its probability is below the class's threshold
               (``thresholds``, e.g. from :func:`read_thresholds`) or else ``min_confidence``
confidence     top-1 probability
top1..topK     the K most probable classes; ``top1_prob..topK_prob`` their probabilities
prob_<class>   probability of every class (sums to 1 per row)
emb_0000...    pooled encoder embedding (only with ``embeddings=True``), float32
============== =====================================================================================

Distribution check: the pooled pixel mean and std of the inputs (as the model sees them, in [0, 1]) are
compared with the training images' (``classifier.json``'s normalisation statistics when they are the training
set's, i.e. ``normalisation = "dataset"``, or a ``train_pixels`` entry). A mean more than
:data:`MAX_MEAN_SHIFT` training standard deviations away, or a std ratio outside :data:`STD_RATIO`, logs one
warning: the inputs are unlike the training images (another instrument or illumination, e.g. bright-field
images fed to a dark-field model) and the predictions should not be trusted. The check, its numbers and the
thresholds used are recorded with the output: in the Parquet file's key-value metadata under
:data:`METADATA_KEY`, or for CSV in ``<out>.json`` beside it; the returned frame has them in
``attrs["predict"]``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from plankton_data.compat import batched
from plankton_data.format.index import INDEX_NAME, read_index
from plankton_data.format.samples import sample_table
from plankton_data.ingest.preprocess import square_gray
from plankton_data.ingest.sources import RawTree, is_image
from plankton_train.data.augment import normalize
from plankton_train.data.decode import decode_gray
from plankton_train.data.labelled import EvalAugment
from plankton_train.engine.device import autocast, resolve_device
from plankton_train.errors import CorruptSample, PredictError
from plankton_train.models.classifier import load_classifier

log = logging.getLogger(__name__)

UNASSIGNED = "unassigned"
METADATA_KEY = "plankton_predict"  # Parquet key-value metadata entry with the run's settings and checks
MAX_MEAN_SHIFT = 1.0  # warn when the inputs' pixel mean is this many training stds from the training mean
STD_RATIO = (0.5, 2.0)  # ... or when the inputs' pixel std / the training std falls outside this range
COLLAPSE_SHARE = 0.9  # named in the warning when one label takes this share of the predictions


@dataclass(frozen=True)
class PredictOptions:
    """How to classify and what to write (top-k width, threshold, embeddings) and with what resources."""

    top_k: int = 3
    min_confidence: float = 0.0  # below this top-1 probability the label is "unassigned"
    thresholds: Mapping[str, float] | None = None  # per-class thresholds of the top-1 class (else min_confidence)
    embeddings: bool = False
    batch_size: int = 128
    threads: int = 4  # decode/preprocess threads (OpenCV releases the GIL)
    device: str = "auto"


@dataclass(frozen=True)
class _Item:
    source: str
    data: bytes
    fmt: str  # "raw" (needs ingest preprocessing) or the stored format of a shard member (jpg/png)


def _shard_items(folder: Path) -> Iterator[_Item]:
    """Every image of a shard folder in shard-list then tar order, read at its offset (no tar parsing here)."""
    index = read_index(folder)
    table = sample_table(folder, index)
    fd, open_shard = -1, -1
    try:
        for i in range(len(table)):
            if table.shard[i] != open_shard:
                if fd >= 0:
                    os.close(fd)
                open_shard = int(table.shard[i])
                fd = os.open(folder / table.shard_names[open_shard], os.O_RDONLY)
            data = os.pread(fd, int(table.length[i]), int(table.offset[i]))
            yield _Item(table.keys[i].decode(), data, index.image_format)
    finally:
        if fd >= 0:
            os.close(fd)


def _raw_items(path: Path) -> Iterator[_Item]:
    with RawTree(path) as tree:
        for m in tree.members:
            if is_image(m.path):
                yield _Item(m.path, tree.read(m), "raw")


def iter_items(source: Path | str) -> Iterator[_Item]:
    """Images of a shard folder (has ``index.json``), a folder or a zip archive, in a stable order."""
    source = Path(source)
    if not source.exists():
        raise PredictError(f"input {source} does not exist")
    if source.is_dir() and (source / INDEX_NAME).is_file():
        return _shard_items(source)
    return _raw_items(source)


def _raw_view(data: bytes, size: int) -> np.ndarray:
    """Raw image bytes -> the ``size x size`` uint8 gray square ingest would have stored (seeded by the bytes)."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError("undecodable image")
    return square_gray(img, key=hashlib.sha256(data).hexdigest(), size=size)


def _prepare(item: _Item, view: EvalAugment) -> np.ndarray | None:
    try:
        img = _raw_view(item.data, view.resize) if item.fmt == "raw" else decode_gray(item.data)
        return view(img)
    except (ValueError, CorruptSample, cv2.error) as exc:
        log.warning("skipping %s: %s", item.source, exc)
        return None


def read_thresholds(path: Path | str) -> dict[str, float]:
    """Per-class confidence thresholds from a CSV with columns ``class`` and ``threshold`` (in [0, 1])."""
    path = Path(path)
    if not path.is_file():
        raise PredictError(f"no thresholds file at {path}")
    frame = pd.read_csv(path, dtype={"class": str})
    if not {"class", "threshold"} <= set(frame.columns):
        raise PredictError(f"{path} needs columns class,threshold; it has {list(frame.columns)}")
    values = pd.to_numeric(frame["threshold"], errors="coerce")
    bad = frame["class"][values.isna() | (values < 0) | (values > 1)].tolist()
    if bad:
        raise PredictError(f"{path}: thresholds must be numbers in [0, 1]; see classes {bad}")
    if frame["class"].duplicated().any():
        raise PredictError(f"{path} lists classes twice: {sorted(set(frame['class'][frame['class'].duplicated()]))}")
    return dict(zip(frame["class"], values.astype(float), strict=True))


def _class_thresholds(classes: list[str], opts: PredictOptions) -> np.ndarray:
    """(C,) top-1 probability each class needs to be the label: its own threshold, else ``min_confidence``."""
    given = dict(opts.thresholds or {})
    unknown = sorted(set(given) - set(classes))
    if unknown:
        raise PredictError(f"thresholds for classes the model does not have: {unknown} (it has {classes})")
    out_of_range = sorted(c for c, t in given.items() if not 0 <= t <= 1)
    if out_of_range:
        raise PredictError(f"thresholds must be in [0, 1]; see classes {out_of_range}")
    return np.array([given.get(c, opts.min_confidence) for c in classes], dtype=np.float64)


def _rows(
    sources: list[str],
    probs: np.ndarray,
    embs: np.ndarray | None,
    classes: list[str],
    opts: PredictOptions,
    thresholds: np.ndarray,
) -> pd.DataFrame:
    k = min(opts.top_k, len(classes))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # (N, k) class indices, most probable first
    conf = probs[np.arange(len(probs)), order[:, 0]]
    names = np.asarray(classes, dtype=object)
    cols: dict[str, object] = {
        "source": sources,
        "label": np.where(conf >= thresholds[order[:, 0]], names[order[:, 0]], UNASSIGNED),
        "confidence": conf,
    }
    for j in range(k):
        cols[f"top{j + 1}"] = names[order[:, j]]
        cols[f"top{j + 1}_prob"] = probs[np.arange(len(probs)), order[:, j]]
    cols.update({f"prob_{c}": probs[:, i] for i, c in enumerate(classes)})
    if embs is not None:
        cols.update({f"emb_{i:04d}": embs[:, i] for i in range(embs.shape[1])})
    return pd.DataFrame(cols)


def training_pixel_stats(info: dict) -> dict | None:
    """The training images' pooled pixel mean/std in [0, 1] as stored with the model, or None if unknown.

    A ``train_pixels`` entry (``{"mean", "std"}``) wins; else the normalisation statistics, which are the
    training set's when ``normalisation`` is ``"dataset"`` (the default; runs without the key used it too).
    """
    stored = info.get("train_pixels")
    if isinstance(stored, dict) and {"mean", "std"} <= set(stored):
        return {"mean": float(stored["mean"]), "std": float(stored["std"]), "from": "classifier.json train_pixels"}
    if info.get("normalisation", "dataset") == "dataset" and info.get("mean") is not None:
        return {"mean": float(info["mean"]), "std": float(info["std"]), "from": "classifier.json mean/std"}
    return None


def distribution_check(inputs: dict, train: dict | None) -> dict:
    """Compare the inputs' pooled pixel ``{"mean", "std"}`` with the training images'; returns the record
    written with the output (``mean_shift_sd``, ``std_ratio``, ``far`` and the thresholds)."""
    record: dict = {"input_pixels": inputs, "train_pixels": train, "max_mean_shift_sd": MAX_MEAN_SHIFT}
    record["std_ratio_range"] = list(STD_RATIO)
    if train is None or train["std"] <= 0:
        record.update(mean_shift_sd=None, std_ratio=None, far=None)
        return record
    shift = abs(inputs["mean"] - train["mean"]) / train["std"]
    ratio = inputs["std"] / train["std"]
    far = bool(shift > MAX_MEAN_SHIFT or not STD_RATIO[0] <= ratio <= STD_RATIO[1])
    record.update(mean_shift_sd=round(shift, 4), std_ratio=round(ratio, 4), far=far)
    return record


def _warning(check: dict, table: pd.DataFrame) -> str | None:
    if not check["far"]:
        return None
    i, t = check["input_pixels"], check["train_pixels"]
    line = (
        f"inputs look unlike the training images: pixel mean {i['mean']:.3f} / std {i['std']:.3f} against "
        f"{t['mean']:.3f} / {t['std']:.3f} in training ({check['mean_shift_sd']:.1f} training stds apart, std "
        f"ratio {check['std_ratio']:.2f}); another instrument or illumination? Do not trust these predictions"
    )
    top = table["top1"].value_counts(normalize=True)
    if len(table) >= 20 and top.iloc[0] >= COLLAPSE_SHARE:
        line += f" ({top.iloc[0]:.0%} of the {len(table):,} images are top-1 {top.index[0]!r})"
    return line


def _write(table: pd.DataFrame, out: Path, meta: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        arrow = pa.Table.from_pandas(table, preserve_index=False)
        extra = {METADATA_KEY.encode(): json.dumps(meta).encode()}
        pq.write_table(arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), **extra}), out)
    else:
        table.to_csv(out, index=False)
        (out.parent / (out.name + ".json")).write_text(json.dumps(meta, indent=2) + "\n")


def read_predict_metadata(path: Path | str) -> dict:
    """The settings and distribution check recorded with a :func:`predict` output (Parquet or CSV)."""
    path = Path(path)
    if path.suffix == ".parquet":
        raw = (pq.read_schema(path).metadata or {}).get(METADATA_KEY.encode())
        if raw is None:
            raise PredictError(f"{path} has no {METADATA_KEY} metadata")
        return json.loads(raw)
    side = path.parent / (path.name + ".json")
    if not side.is_file():
        raise PredictError(f"no {side.name} beside {path}")
    return json.loads(side.read_text())


def predict(
    run: Path | str, *, source: Path | str, out: Path | str, opts: PredictOptions = PredictOptions()
) -> pd.DataFrame:
    """Classify every image of ``source`` with the model in run folder ``run``; write ``out`` (.parquet/.csv).

    Returns the written table (its ``attrs["predict"]``: the recorded settings and distribution check).
    Unreadable images are skipped with a warning; inputs unlike the training images get one warning line.
    """
    out = Path(out)
    if out.suffix not in (".parquet", ".csv"):
        raise PredictError(f"output must end in .parquet or .csv, got {out.name}")
    if not 0 <= opts.min_confidence <= 1:
        raise PredictError(f"min confidence must be in [0, 1], got {opts.min_confidence}")
    device = resolve_device(opts.device)
    model, info = load_classifier(run, device)
    classes, mean, std = info["classes"], info["mean"], info["std"]
    thresholds = _class_thresholds(classes, opts)
    view = EvalAugment(info["img_size"], info["resize"])
    frames = []
    pixels, total, squares = 0, 0.0, 0.0  # pooled pixel statistics of the inputs, in [0, 1]
    with ThreadPoolExecutor(max(1, opts.threads)) as pool, torch.no_grad():
        for batch in batched(iter_items(source), opts.batch_size):
            imgs = list(pool.map(lambda it: _prepare(it, view), batch))
            keep = [(it.source, im) for it, im in zip(batch, imgs, strict=True) if im is not None]
            if not keep:
                continue
            stack = np.stack([im for _, im in keep])
            as_float = stack.astype(np.float64) / 255.0
            pixels, total, squares = pixels + as_float.size, total + as_float.sum(), squares + (as_float**2).sum()
            x = torch.from_numpy(stack)[:, None].to(device)
            with autocast(device):
                feats = model.embed(normalize(x, mean, std))
                logits = model.head(feats)
            probs = torch.softmax(logits.float(), 1).cpu().numpy()
            embs = feats.float().cpu().numpy() if opts.embeddings else None
            frames.append(_rows([s for s, _ in keep], probs, embs, classes, opts, thresholds))
    if not frames:
        raise PredictError(f"no readable images in {source}")
    table = pd.concat(frames, ignore_index=True)
    in_mean = total / pixels
    inputs = {"mean": round(in_mean, 6), "std": round(float(np.sqrt(max(squares / pixels - in_mean**2, 0.0))), 6)}
    check = distribution_check(inputs, training_pixel_stats(info))
    warning = _warning(check, table)
    if warning:
        log.warning(warning)
    elif check["far"] is None:
        log.info("no training pixel statistics stored with the model: distribution check skipped")
    meta = {
        "model": str(run),
        "source": str(source),
        "images": len(table),
        "min_confidence": opts.min_confidence,
        "thresholds": dict(opts.thresholds or {}),
        "distribution": check,
        "top_label_share": round(float(table["top1"].value_counts(normalize=True).iloc[0]), 4),
        "warning": warning,
    }
    _write(table, out, meta)
    table.attrs["predict"] = meta
    log.info("classified %d images -> %s", len(table), out)
    return table
