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
label          top-1 class, or ``unassigned`` when its probability is below ``min_confidence``
confidence     top-1 probability
top1..topK     the K most probable classes; ``top1_prob..topK_prob`` their probabilities
prob_<class>   probability of every class (sums to 1 per row)
emb_0000...    pooled encoder embedding (only with ``embeddings=True``), float32
============== =====================================================================================
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
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


@dataclass(frozen=True)
class PredictOptions:
    """How to classify and what to write (top-k width, threshold, embeddings) and with what resources."""

    top_k: int = 3
    min_confidence: float = 0.0  # below this top-1 probability the label is "unassigned"
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


def _rows(
    sources: list[str], probs: np.ndarray, embs: np.ndarray | None, classes: list[str], opts: PredictOptions
) -> pd.DataFrame:
    k = min(opts.top_k, len(classes))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # (N, k) class indices, most probable first
    conf = probs[np.arange(len(probs)), order[:, 0]]
    names = np.asarray(classes, dtype=object)
    cols: dict[str, object] = {
        "source": sources,
        "label": np.where(conf >= opts.min_confidence, names[order[:, 0]], UNASSIGNED),
        "confidence": conf,
    }
    for j in range(k):
        cols[f"top{j + 1}"] = names[order[:, j]]
        cols[f"top{j + 1}_prob"] = probs[np.arange(len(probs)), order[:, j]]
    cols.update({f"prob_{c}": probs[:, i] for i, c in enumerate(classes)})
    if embs is not None:
        cols.update({f"emb_{i:04d}": embs[:, i] for i in range(embs.shape[1])})
    return pd.DataFrame(cols)


def predict(
    run: Path | str, *, source: Path | str, out: Path | str, opts: PredictOptions = PredictOptions()
) -> pd.DataFrame:
    """Classify every image of ``source`` with the model in run folder ``run``; write ``out`` (.parquet/.csv).

    Returns the written table. Unreadable images are skipped with a warning.
    """
    out = Path(out)
    if out.suffix not in (".parquet", ".csv"):
        raise PredictError(f"output must end in .parquet or .csv, got {out.name}")
    if not 0 <= opts.min_confidence <= 1:
        raise PredictError(f"min confidence must be in [0, 1], got {opts.min_confidence}")
    device = resolve_device(opts.device)
    model, info = load_classifier(run, device)
    classes, mean, std = info["classes"], info["mean"], info["std"]
    view = EvalAugment(info["img_size"], info["resize"])
    frames = []
    with ThreadPoolExecutor(max(1, opts.threads)) as pool, torch.no_grad():
        for batch in batched(iter_items(source), opts.batch_size):
            imgs = list(pool.map(lambda it: _prepare(it, view), batch))
            keep = [(it.source, im) for it, im in zip(batch, imgs, strict=True) if im is not None]
            if not keep:
                continue
            x = torch.from_numpy(np.stack([im for _, im in keep]))[:, None].to(device)
            with autocast(device):
                feats = model.embed(normalize(x, mean, std))
                logits = model.head(feats)
            probs = torch.softmax(logits.float(), 1).cpu().numpy()
            embs = feats.float().cpu().numpy() if opts.embeddings else None
            frames.append(_rows([s for s, _ in keep], probs, embs, classes, opts))
    if not frames:
        raise PredictError(f"no readable images in {source}")
    table = pd.concat(frames, ignore_index=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        table.to_parquet(out, index=False)
    else:
        table.to_csv(out, index=False)
    log.info("classified %d images -> %s", len(table), out)
    return table
