"""Classify images with a fine-tuned model: a folder, a zip archive or a shard set -> Parquet or CSV.

Raw images (folder or archive, any format OpenCV reads, zips nested in zips included) get the same
preprocessing as ``plankton-data ingest`` (:func:`plankton_data.ingest.preprocess.square_gray`: grayscale -> pad
to square on background-matched noise -> resize), then the model's evaluation view (resize + centre crop). The
padding noise is seeded from the file's sha256, so the same file gets the same prediction wherever it lives
(folder or archive) and however often it is classified. The dataset step ingest gave the model's training
images is given to raw images too: a model fine-tuned on ZooScan/EcoTaxa vignettes whose ingest erased the
ZooProcess size legend (manifest ``preprocess`` steps ``zooprocess_legend``, recorded by fine-tuning in
``classifier.json`` as ``ingest_steps``) gets :func:`plankton_data.ingest.ops.remove_zooprocess_legend` applied
before the padding, exactly as ingest does; a model trained on other data never does (:data:`RAW_STEPS`). Box
crops are not redone: pass already-cropped vignettes. Raw IFCB bins (``.hdr``/``.adc``/``.roi``, anywhere in a
folder tree or zip) are classified ROI by ROI: see :mod:`plankton_train.protocol.predict_ifcb`. Shard sets (a
folder with ``index.json``) are already preprocessed and only get the evaluation view; their images are read at
the offsets the format layer gives (:func:`plankton_data.format.samples.sample_table`).

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
from plankton_data.format.atomic import atomic_path
from plankton_data.format.index import INDEX_NAME, read_index
from plankton_data.format.remote import is_remote, localize
from plankton_data.format.samples import sample_table
from plankton_data.ingest import ops
from plankton_data.ingest.preprocess import square_gray
from plankton_data.ingest.sources import RawTree, is_image
from plankton_train.data.augment import normalize
from plankton_train.data.decode import decode_gray
from plankton_train.data.labelled import EvalAugment
from plankton_train.engine.device import autocast, resolve_device
from plankton_train.errors import CorruptSample, PredictError
from plankton_train.models.classifier import PlanktonClassifier, load_classifier

log = logging.getLogger(__name__)

UNASSIGNED = "unassigned"
METADATA_KEY = "plankton_predict"  # Parquet key-value metadata entry with the run's settings and checks
MAX_MEAN_SHIFT = 1.0  # warn when the inputs' pixel mean is this many training stds from the training mean
STD_RATIO = (0.5, 2.0)  # ... or when the inputs' pixel std / the training std falls outside this range
COLLAPSE_SHARE = 0.9  # named in the warning when one label takes this share of the predictions
#: Dataset-specific ingest steps predict redoes on raw images, by their manifest ``preprocess`` step name. A
#: model's ``classifier.json`` ``ingest_steps`` (the steps every training image had) says which apply to it.
RAW_STEPS = {"zooprocess_legend": ops.remove_zooprocess_legend}


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


def raw_steps(info: Mapping) -> tuple[str, ...]:
    """The :data:`RAW_STEPS` a model's training images had at ingest (``classifier.json`` ``ingest_steps``).

    Models fine-tuned before the key existed, and models trained on data without such a step, get none.
    """
    return tuple(s for s in info.get("ingest_steps") or () if s in RAW_STEPS)


class PredictModel:
    """A fine-tuned model as predict uses it: raw pixels -> model input, batches -> probabilities, and the
    pooled pixel statistics of everything it was shown (for :func:`distribution_check`)."""

    def __init__(self, run: Path | str, opts: PredictOptions) -> None:
        self.opts = opts
        self.device = resolve_device(opts.device)
        model, self.info = load_classifier(run, self.device)
        self.model: PlanktonClassifier = model
        self.classes: list[str] = list(self.info["classes"])
        self.thresholds = _class_thresholds(self.classes, opts)  # (C,) top-1 probability each class needs
        self.view = EvalAugment(self.info["img_size"], self.info["resize"])
        self.steps = raw_steps(self.info)
        self._pixels, self._total, self._squares = 0, 0.0, 0.0  # pooled pixel statistics, in [0, 1]

    def raw_input(self, img: np.ndarray, *, key: str) -> np.ndarray:
        """A decoded raw image (``H x W`` or ``H x W x C``) -> the model's input view (uint8 square).

        The model's dataset steps (:func:`raw_steps`), then ingest's :func:`square_gray` with padding noise
        seeded from ``key``, then the evaluation view (resize + centre crop).
        """
        gray = ops.to_gray(img)
        for step in self.steps:
            gray = RAW_STEPS[step](gray)
        return self.view(square_gray(gray, key=key, size=self.view.resize))

    def classify(self, imgs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """``N`` input views -> ``(N, C)`` float32 probabilities and ``(N, D)`` embeddings (if asked for)."""
        stack = np.stack(imgs)
        as_float = stack.astype(np.float64) / 255.0
        self._pixels += as_float.size
        self._total += as_float.sum()
        self._squares += (as_float**2).sum()
        x = torch.from_numpy(stack)[:, None].to(self.device)
        with torch.no_grad(), autocast(self.device):
            feats = self.model.embed(normalize(x, self.info["mean"], self.info["std"]))
            logits = self.model.head(feats)
        probs = torch.softmax(logits.float(), 1).cpu().numpy()
        return probs, (feats.float().cpu().numpy() if self.opts.embeddings else None)

    def rows(self, sources: list[str], probs: np.ndarray, embs: np.ndarray | None) -> pd.DataFrame:
        """The output table's rows for one classified batch (module docstring)."""
        return _rows(sources, probs, embs, self.classes, self.opts, self.thresholds)

    def check(self, top1_counts: pd.Series) -> tuple[dict, str | None]:
        """``(distribution check record, warning line or None)`` for everything classified so far; logs it."""
        in_mean = self._total / self._pixels
        spread = float(np.sqrt(max(self._squares / self._pixels - in_mean**2, 0.0)))
        check = distribution_check(
            {"mean": round(in_mean, 6), "std": round(spread, 6)}, training_pixel_stats(self.info)
        )
        warning = _warning(check, top1_counts)
        if warning:
            log.warning(warning)
        elif check["far"] is None:
            log.info("no training pixel statistics stored with the model: distribution check skipped")
        return check, warning


def _prepare(item: _Item, model: PredictModel) -> np.ndarray | None:
    try:
        if item.fmt != "raw":
            return model.view(decode_gray(item.data))
        img = cv2.imdecode(np.frombuffer(item.data, np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ValueError("undecodable image")
        return model.raw_input(img, key=hashlib.sha256(item.data).hexdigest())
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


def _warning(check: dict, top1_counts: pd.Series) -> str | None:
    if not check["far"]:
        return None
    i, t = check["input_pixels"], check["train_pixels"]
    line = (
        f"inputs look unlike the training images: pixel mean {i['mean']:.3f} / std {i['std']:.3f} against "
        f"{t['mean']:.3f} / {t['std']:.3f} in training ({check['mean_shift_sd']:.1f} training stds apart, std "
        f"ratio {check['std_ratio']:.2f}); another instrument or illumination? Do not trust these predictions"
    )
    n = int(top1_counts.sum())
    top = top1_counts.sort_values(ascending=False, kind="stable") / max(n, 1)
    if n >= 20 and top.iloc[0] >= COLLAPSE_SHARE:
        line += f" ({top.iloc[0]:.0%} of the {n:,} images are top-1 {top.index[0]!r})"
    return line


def run_meta(run: Path | str, source: Path | str, model: PredictModel, top1_counts: pd.Series, unassigned: int) -> dict:
    """The settings and checks recorded with an output (:func:`read_predict_metadata` reads them back)."""
    check, warning = model.check(top1_counts)
    n = int(top1_counts.sum())
    return {
        "model": str(run),
        "source": str(source),
        "images": n,
        "unassigned": int(unassigned),
        "min_confidence": model.opts.min_confidence,
        "thresholds": dict(model.opts.thresholds or {}),
        "ingest_steps": list(model.steps),
        "distribution": check,
        "top_label_share": round(float(top1_counts.max() / max(n, 1)), 4),
        "warning": warning,
    }


def check_output(out: Path, opts: PredictOptions) -> None:
    """Refuse an output name or option predict cannot honour, before any work."""
    if out.suffix not in (".parquet", ".csv"):
        raise PredictError(f"output must end in .parquet or .csv, got {out.name}")
    if not 0 <= opts.min_confidence <= 1:
        raise PredictError(f"min confidence must be in [0, 1], got {opts.min_confidence}")


def meta_path(out: Path) -> Path:
    """Where a CSV output's settings and checks go: ``<out>.json`` beside it."""
    return out.parent / (out.name + ".json")


def _write(table: pd.DataFrame, out: Path, meta: dict) -> None:
    if out.suffix == ".parquet":
        arrow = pa.Table.from_pandas(table, preserve_index=False)
        extra = {METADATA_KEY.encode(): json.dumps(meta).encode()}
        with atomic_path(out) as tmp:
            pq.write_table(arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), **extra}), tmp)
    else:
        with atomic_path(out) as tmp:
            table.to_csv(tmp, index=False)
        with atomic_path(meta_path(out)) as tmp:
            tmp.write_text(json.dumps(meta, indent=2) + "\n")


def read_predict_metadata(path: Path | str) -> dict:
    """The settings and distribution check recorded with a :func:`predict` output (Parquet or CSV)."""
    path = Path(path)
    if path.suffix == ".parquet":
        raw = (pq.read_metadata(path).metadata or {}).get(METADATA_KEY.encode())  # the footer's key-value pairs
        if raw is None:
            raise PredictError(f"{path} has no {METADATA_KEY} metadata")
        return json.loads(raw)
    side = meta_path(path)
    if not side.is_file():
        raise PredictError(f"no {side.name} beside {path}")
    return json.loads(side.read_text())


def predict(
    run: Path | str, *, source: Path | str, out: Path | str, opts: PredictOptions = PredictOptions()
) -> pd.DataFrame:
    """Classify every image of ``source`` with the model in run folder ``run``; write ``out`` (.parquet/.csv).

    Returns the written table (its ``attrs["predict"]``: the recorded settings and distribution check).
    Unreadable images are skipped with a warning; inputs unlike the training images get one warning line.
    A ``source`` holding raw IFCB bins is classified by :func:`plankton_train.protocol.predict_ifcb.predict_bins`
    instead, which streams the table to ``out`` and returns the per-bin count table.
    """
    out = Path(out)
    check_output(out, opts)
    if is_remote(source):  # a shard folder's URL (s3://...): its cached, sha256-checked copy
        source = localize(source)
    if not Path(source).exists():
        raise PredictError(f"input {source} does not exist")
    if not (Path(source) / INDEX_NAME).is_file():
        from plankton_train.protocol.predict_ifcb import bin_input, find_bins, predict_bins  # builds on this module

        root, only = bin_input(Path(source))  # one bin may be given by any of its three files
        with RawTree(root) as tree:
            found = find_bins(tree, only=only)
            if found.bins or found.skipped:
                return predict_bins(run, tree=tree, found=found, source=source, out=out, opts=opts)
    model = PredictModel(run, opts)
    frames = []
    with ThreadPoolExecutor(max(1, opts.threads)) as pool:
        for batch in batched(iter_items(source), opts.batch_size):
            imgs = list(pool.map(lambda it: _prepare(it, model), batch))
            keep = [(it.source, im) for it, im in zip(batch, imgs, strict=True) if im is not None]
            if not keep:
                continue
            probs, embs = model.classify([im for _, im in keep])
            frames.append(model.rows([s for s, _ in keep], probs, embs))
    if not frames:
        raise PredictError(f"no readable images in {source}")
    table = pd.concat(frames, ignore_index=True)
    meta = run_meta(run, source, model, table["top1"].value_counts(), int((table["label"] == UNASSIGNED).sum()))
    _write(table, out, meta)
    table.attrs["predict"] = meta
    log.info("classified %d images -> %s", len(table), out)
    return table
