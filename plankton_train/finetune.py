"""Fine-tuning one cell of the protocol: (initialisation, group, labelled fraction, fold) -> run folder.

Recipe of Kareinen et al. (2025): AdamW (lr 2e-3, weight decay 0.01) with layer-wise lr decay 0.75, cosine
schedule with 5 warm-up epochs applied per optimiser step, label smoothing 0.1, drop path 0.2, batch 128,
50 epochs; training images get the pretraining augmentations (random resized crop, flips), validation and
test images a resize + centre crop. The epoch kept is the one with the best **validation** accuracy (ties:
lower validation loss); the test set is scored once, with that epoch's weights. Forward passes in
``Recipe.precision`` (``auto``: bf16 autocast on GPU, fp32 on CPU), optionally ``torch.compile``-d
(``Recipe.compile``); ``classifier.json`` stores the recipe with the resolved precision.

The run folder holds ``model.safetensors`` (encoder + head), ``classifier.json`` (everything needed to
rebuild and use the model: encoder spec, class names, normalisation, input size), ``history.csv``
(per-epoch train/val figures), ``test_predictions.parquet`` and ``metrics.json`` (written last: its
presence marks a finished run).

This module is the wiring (data, model, optimiser, outputs); the loops are in
:mod:`plankton_train.engine.finetune_loop`, the classifier and its files in :mod:`plankton_train.models.classifier`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from plankton_data.format.index import read_index
from plankton_data.format.manifest import read_manifest
from plankton_train.data.labelled import (
    ClassMap,
    EvalAugment,
    LabelledImages,
    TrainAugment,
    make_loader,
    manifest_rows,
)
from plankton_train.engine.device import check_compile, compile_errors, compile_model, resolve_device
from plankton_train.engine.finetune_loop import EpochSchedule, fit, predict_probs
from plankton_train.engine.optim import clamp_warmup, layer_decay_groups
from plankton_train.engine.precision import precision_problem, resolve_precision
from plankton_train.errors import FinetuneError
from plankton_train.models.classifier import EncoderSpec, build_classifier, save_classifier
from plankton_train.models.registry import is_large
from plankton_train.protocol.predict import RAW_STEPS
from plankton_train.protocol.report import PREDICTIONS_NAME, classification_metrics
from plankton_train.protocol.splits import read_splits, select

log = logging.getLogger(__name__)

METRICS_NAME = "metrics.json"


@dataclass(frozen=True)
class Recipe:
    """Optimisation and input settings; defaults are the paper's."""

    epochs: int = 50
    warmup_epochs: int = 5
    batch_size: int = 128
    lr: float = 2e-3  # peak lr of the last layer group (earlier layers get lr * lr_scale)
    min_lr: float = 1e-6  # end of the cosine
    weight_decay: float = 0.01
    layer_decay: float = 0.75
    label_smoothing: float = 0.1
    img_size: int = 224  # network input side (px)
    resize: int = 256  # eval: resize to this side, then centre crop img_size
    crop_scale: tuple[float, float] = (0.4, 1.0)  # random resized crop area range (pretraining's)
    normalization: str = "dataset"  # "dataset" (target shard set's mean/std) or "encoder" (pretraining's)
    num_workers: int = 4
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # bf16 | fp32 | auto (bf16 on CUDA); the run's classifier.json stores the resolved one
    compile: bool = False  # torch.compile the classifier's training forward
    compile_backend: str = "inductor"  # see plankton_train.engine.precision.COMPILE_BACKENDS

    def validate(self) -> None:
        """Raise :class:`FinetuneError` on values that cannot work, before any data is read."""
        positive = ("epochs", "batch_size", "lr", "img_size", "resize")
        bad = [f"{n}={getattr(self, n)}" for n in positive if not 0 < getattr(self, n) < math.inf]
        bad += [f"{n}={getattr(self, n)}" for n in ("min_lr", "weight_decay") if not 0 <= getattr(self, n) < math.inf]
        bad += [f"{n}={getattr(self, n)}" for n in ("warmup_epochs", "num_workers", "seed") if getattr(self, n) < 0]
        if not 0 < self.layer_decay <= 1 or not 0 <= self.label_smoothing < 1:
            bad.append(f"layer_decay={self.layer_decay} (0, 1], label_smoothing={self.label_smoothing} [0, 1)")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            bad.append(f"crop_scale={self.crop_scale}")
        if self.normalization not in ("dataset", "encoder"):
            bad.append(f"normalization={self.normalization!r} (dataset or encoder)")
        problem = precision_problem(self.precision, self.compile_backend)
        if problem:
            bad.append(problem)
        if bad:
            raise FinetuneError(f"invalid fine-tuning settings: {', '.join(bad)}")


@dataclass(frozen=True)
class Cell:
    """Which data: a group, fold and labelled fraction of a splits file over a manifest."""

    manifest: Path
    shards_root: Path
    splits: Path
    group: str
    fold: int = 0
    fraction: float = 1.0


@dataclass
class RunResult:
    """What a finished run reports (also ``metrics.json``)."""

    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    ece: float
    val_accuracy: float
    best_epoch: int
    n_train: int
    n_val: int
    n_test: int
    seconds: float
    classes: int


def _dataset_stats(shards_root: Path, rows: pd.DataFrame) -> tuple[float, float]:
    """Pixel mean/std (in [0, 1]) of the shard folder the rows live in, from its ``index.json``."""
    folder = rows["shard"].iloc[0].split("/")[0]
    index = read_index(shards_root / folder)
    return float(index.mean), float(index.std)


def ingest_steps(manifest: Path | str, keys: list[str]) -> list[str]:
    """The ingest steps every one of ``keys`` had (manifest ``preprocess`` JSON ``steps``), in their order.

    Stored in ``classifier.json`` as ``ingest_steps`` so that predict redoes the dataset-specific ones on raw
    images (a model fine-tuned on ZooScan vignettes whose legend ingest erased must not meet legends at predict
    time). A step predict would redo (:data:`~plankton_train.protocol.predict.RAW_STEPS`) that only some
    training images had (a group mixing datasets) is left out with a warning: predict cannot tell which inputs
    would need it.
    """
    frame = read_manifest(manifest).select(["key", "preprocess"]).to_pandas()
    lists = [json.loads(p or "{}").get("steps", []) for p in frame["preprocess"][frame["key"].isin(set(keys))]]
    if not lists:
        return []
    common = [step for step in lists[0] if all(step in steps for steps in lists)]
    partial = sorted({step for steps in lists for step in steps if step in RAW_STEPS} - set(common))
    for step in partial:
        had = sum(step in steps for steps in lists)
        log.warning("ingest step %s was applied to %d of %d training images: predict will not apply it", step, had,
                    len(lists))  # fmt: skip
    return common


def _loaders(cell: Cell, recipe: Recipe) -> tuple[dict, ClassMap, tuple[float, float]]:
    splits, _ = read_splits(cell.splits)
    keys = select(splits, cell.group, cell.fold, cell.fraction)
    if not keys["train"] or not keys["test"]:
        raise FinetuneError(f"{cell.group} fold {cell.fold}: empty train or test set")
    rows = manifest_rows(cell.manifest, {role: k for role, k in keys.items() if k})
    # Classes come from the whole group (train + val + test labels), so a model trained on 1 % still has an
    # output for every class the test set can contain.
    classes = ClassMap.from_labels(pd.concat(rows.values())["label"].tolist())
    stats = _dataset_stats(cell.shards_root, rows["train"])
    train_tf = TrainAugment(recipe.img_size, recipe.crop_scale, recipe.resize)
    eval_tf = EvalAugment(recipe.img_size, recipe.resize)
    loaders = {}
    for role, frame in rows.items():
        is_train = role == "train"
        ds = LabelledImages(frame, cell.shards_root, train_tf if is_train else eval_tf, classes, seed=recipe.seed)
        loaders[role] = make_loader(
            ds, recipe.batch_size, shuffle=is_train, num_workers=recipe.num_workers, seed=recipe.seed
        )
    return loaders, classes, stats


def _fit(
    model: nn.Module, loaders: dict, recipe: Recipe, mean: float, std: float, device: torch.device
) -> tuple[int, float, list[dict]]:
    """The recipe's optimiser (AdamW, layer-wise lr decay) and loss, run by the engine's epoch loop."""
    groups = layer_decay_groups(model, recipe.weight_decay, recipe.layer_decay)
    optimizer = torch.optim.AdamW(groups, lr=recipe.lr, fused=device.type == "cuda")
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    warmup = clamp_warmup(recipe.warmup_epochs, recipe.epochs, unit="epochs")
    schedule = EpochSchedule(recipe.epochs, warmup, recipe.lr, recipe.min_lr)
    return fit(model, loaders, optimizer, loss_fn, schedule, mean, std, device, recipe.precision)


def finetune(cell: Cell, *, encoder: EncoderSpec, recipe: Recipe, out: Path | str) -> RunResult:
    """Fine-tune one cell and write its run folder (see the module docstring). Returns the test metrics."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / METRICS_NAME).unlink(missing_ok=True)
    t0 = time.perf_counter()
    recipe.validate()
    torch.manual_seed(recipe.seed)
    device = resolve_device(recipe.device)
    recipe = replace(recipe, precision=resolve_precision(recipe.precision, device.type))  # recorded resolved
    if recipe.compile:  # before any data is read: a machine where inductor cannot work fails at once
        check_compile(device, recipe.compile_backend, FinetuneError)
    loaders, classes, dataset_stats = _loaders(cell, recipe)
    if "img_size" not in encoder.model_kwargs:  # the network's input side follows the recipe, for every init
        encoder = replace(encoder, model_kwargs={**encoder.model_kwargs, "img_size": recipe.img_size})
    model = build_classifier(encoder, len(classes)).to(device)
    if recipe.compile:
        compile_model(model, device=device, backend=recipe.compile_backend, error=FinetuneError)
    if device.type == "cpu" and is_large(model.spec.arch):
        log.warning(
            "fine-tuning %s (ViT-L or larger) on a CPU: expect hours per epoch; a GPU is advised", model.spec.arch
        )
    # "encoder" falls back to the dataset's statistics when the weights carry none (random init).
    norm = model.pretrained_norm if recipe.normalization == "encoder" else None
    mean, std = norm if norm is not None else dataset_stats
    source = "encoder" if norm is not None else "dataset"
    log.info("normalising with mean %.4f std %.4f (%s)", mean, std, source)
    with compile_errors(FinetuneError) if recipe.compile else nullcontext():
        best_epoch, val_accuracy, history = _fit(model, loaders, recipe, mean, std, device)
    probs, _ = predict_probs(model, loaders["test"], mean, std, device, precision=recipe.precision)
    test = loaders["test"].dataset
    preds = [classes.names[i] for i in probs.argmax(1)]
    labels = [classes.names[i] for i in test.targets]
    pd.DataFrame({"key": test.keys, "label": labels, "pred": preds, "confidence": probs.max(1)}).to_parquet(
        out / PREDICTIONS_NAME, index=False
    )
    pd.DataFrame(history).to_csv(out / "history.csv", index=False)
    save_classifier(
        out,
        model,
        classes=classes,
        mean=mean,
        std=std,
        recipe=recipe,
        initialised_from=encoder.init,
        extra={
            "cell": {k: str(v) for k, v in asdict(cell).items()},
            "best_epoch": best_epoch,
            "normalisation": source,
            # the target's pixel statistics, whatever the normalisation: predict compares its inputs with them
            "train_pixels": {"mean": float(dataset_stats[0]), "std": float(dataset_stats[1])},
            # what ingest did to every training image; predict redoes the dataset steps (ZooProcess legend)
            "ingest_steps": ingest_steps(cell.manifest, list(loaders["train"].dataset.keys)),
        },
    )
    result = RunResult(
        **classification_metrics(labels, preds, probs.max(1)),
        val_accuracy=val_accuracy,
        best_epoch=best_epoch,
        n_train=len(loaders["train"].dataset),
        n_val=len(loaders["val"].dataset) if "val" in loaders else 0,
        n_test=len(test),
        seconds=time.perf_counter() - t0,
        classes=len(classes),
    )
    (out / METRICS_NAME).write_text(json.dumps(asdict(result), indent=2) + "\n")
    return result
