"""Fine-tuning one cell of the protocol: (initialisation, group, labelled fraction, fold) -> run folder.

Recipe of Kareinen et al. (2025): AdamW (lr 2e-3, weight decay 0.01) with layer-wise lr decay 0.75, cosine
schedule with 5 warm-up epochs applied per optimiser step, label smoothing 0.1, drop path 0.2, batch 128,
50 epochs; training images get the pretraining augmentations (random resized crop, flips), validation and
test images a resize + centre crop. The epoch kept is the one with the best **validation** accuracy (ties:
lower validation loss); the test set is scored once, with that epoch's weights. bf16 autocast on GPU.

The run folder holds ``model.safetensors`` (encoder + head), ``classifier.json`` (everything needed to
rebuild and use the model: encoder spec, class names, normalisation, input size), ``history.csv``
(per-epoch train/val figures), ``test_predictions.parquet`` and ``metrics.json`` (written last: its
presence marks a finished run).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from plankton_data.errors import PlanktonDataError
from plankton_data.format.index import read_index
from plankton_train.data.augment import normalize
from plankton_train.data.labelled import (
    ClassMap,
    EvalAugment,
    LabelledImages,
    TrainAugment,
    make_loader,
    manifest_rows,
)
from plankton_train.models.classifier import (
    EncoderSpec,
    PlanktonClassifier,
    build_classifier,
    layer_decay_groups,
)
from plankton_train.optim import cosine_lr, set_lr
from plankton_train.report import PREDICTIONS_NAME, classification_metrics
from plankton_train.splits import read_splits, select

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "model.safetensors"
INFO_NAME = "classifier.json"
METRICS_NAME = "metrics.json"


class FinetuneError(PlanktonDataError):
    """A fine-tuning request that cannot run (bad cell, missing data, unknown device...)."""


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


def resolve_device(name: str) -> torch.device:
    """``auto`` -> the first GPU if there is one, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise FinetuneError(f"unknown device {name!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FinetuneError(f"device {name!r} asked for, but no GPU is visible")
    return device


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on GPU, a no-op on CPU."""
    # bf16 needs no loss scaling (fp16 ViT-L attention overflows, see training.md); CPU stays fp32.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _dataset_stats(shards_root: Path, rows: pd.DataFrame) -> tuple[float, float]:
    """Pixel mean/std (in [0, 1]) of the shard folder the rows live in, from its ``index.json``."""
    folder = rows["shard"].iloc[0].split("/")[0]
    index = read_index(shards_root / folder)
    return float(index.mean), float(index.std)


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    mean: float,
    std: float,
    device: torch.device,
    embeddings: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Softmax probabilities ``(N, classes)`` float32 in loader order, optionally embeddings ``(N, D)``."""
    model.eval()
    probs, embs = [], []
    for x, _ in loader:
        x = normalize(x.to(device, non_blocking=True), mean, std)
        with autocast(device):
            feats = model.embed(x)
            logits = model.head(feats)
        probs.append(torch.softmax(logits.float(), dim=1).cpu())
        if embeddings:
            embs.append(feats.float().cpu())
    return torch.cat(probs).numpy(), (torch.cat(embs).numpy() if embeddings else None)


def _train_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    recipe: Recipe,
    epoch: int,
    mean: float,
    std: float,
    device: torch.device,
) -> tuple[float, float]:
    """One epoch; the lr is set before every optimiser step. Returns (mean loss, lr at the last step)."""
    model.train()
    steps = len(loader)
    total, warmup = recipe.epochs * steps, recipe.warmup_epochs * steps
    loss_sum, n, lr = torch.zeros((), device=device), 0, 0.0
    for it, (x, y) in enumerate(loader):
        lr = cosine_lr(epoch * steps + it, total, warmup, recipe.lr, recipe.min_lr)
        set_lr(optimizer, lr)
        x = normalize(x.to(device, non_blocking=True), mean, std)
        y = y.to(device, non_blocking=True)
        with autocast(device):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(y)  # stays on device: no host sync per step
        n += len(y)
    loss_mean = float(loss_sum) / n
    if not math.isfinite(loss_mean):
        raise FinetuneError(f"training loss is {loss_mean} at epoch {epoch}: lower the lr")
    return loss_mean, lr


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
        ds = LabelledImages(
            frame, cell.shards_root, train_tf if is_train else eval_tf, classes, seed=recipe.seed
        )
        loaders[role] = make_loader(
            ds, recipe.batch_size, shuffle=is_train, num_workers=recipe.num_workers, seed=recipe.seed
        )
    return loaders, classes, stats


def _evaluate(model, loader, loss_fn, mean, std, device) -> tuple[float, float, np.ndarray]:
    probs, _ = predict_probs(model, loader, mean, std, device)
    targets = torch.as_tensor(loader.dataset.targets)
    loss = float(loss_fn(torch.log(torch.as_tensor(probs).clamp_min(1e-12)), targets))  # NLL of the probs
    return float((probs.argmax(1) == targets.numpy()).mean()), loss, probs


def _fit(
    model: PlanktonClassifier, loaders: dict, recipe: Recipe, mean: float, std: float, device: torch.device
) -> tuple[int, float, list[dict]]:
    """Train for ``recipe.epochs``; leave the best-validation weights in ``model``.

    Returns ``(best epoch, its validation accuracy, per-epoch history rows)``. The best epoch has the highest
    validation accuracy (ties: lower validation loss). Without validation images the last epoch is kept.
    """
    groups = layer_decay_groups(model, recipe.weight_decay, recipe.layer_decay)
    optimizer = torch.optim.AdamW(groups, lr=recipe.lr, fused=device.type == "cuda")
    train_loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    nll = nn.NLLLoss()
    best = (-1.0, math.inf, recipe.epochs - 1, None)  # (val acc, val loss, epoch, CPU state dict)
    history, t0 = [], time.perf_counter()
    for epoch in range(recipe.epochs):
        loaders["train"].dataset.set_epoch(epoch)
        train_loss, lr = _train_epoch(
            model, loaders["train"], optimizer, train_loss_fn, recipe, epoch, mean, std, device
        )
        row = {"epoch": epoch, "train_loss": train_loss, "lr": lr}
        if "val" in loaders:
            acc, loss, _ = _evaluate(model, loaders["val"], nll, mean, std, device)
            row.update(val_accuracy=acc, val_loss=loss)
            if (acc, -loss) > (best[0], -best[1]):
                state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                best = (acc, loss, epoch, state)
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        val = f"{row['val_accuracy']:.4f}" if "val_accuracy" in row else "-"
        log.info("epoch %d/%d loss %.4f val acc %s", epoch + 1, recipe.epochs, train_loss, val)
    if best[3] is None:
        return recipe.epochs - 1, float("nan"), history
    model.load_state_dict(best[3])
    return best[2], best[0], history


def finetune(cell: Cell, encoder: EncoderSpec, recipe: Recipe, out: Path | str) -> RunResult:
    """Fine-tune one cell and write its run folder (see the module docstring). Returns the test metrics."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / METRICS_NAME).unlink(missing_ok=True)
    t0 = time.perf_counter()
    torch.manual_seed(recipe.seed)
    device = resolve_device(recipe.device)
    loaders, classes, dataset_stats = _loaders(cell, recipe)
    model = build_classifier(encoder, len(classes)).to(device)
    if recipe.normalization not in ("dataset", "encoder"):
        raise FinetuneError(f"normalization must be dataset or encoder, got {recipe.normalization!r}")
    # "encoder" falls back to the dataset's statistics when the weights carry none (random init).
    use_encoder = recipe.normalization == "encoder" and model.pretrained_norm is not None
    mean, std = model.pretrained_norm if use_encoder else dataset_stats
    source = "encoder" if use_encoder else "dataset"
    log.info("normalising with mean %.4f std %.4f (%s)", mean, std, source)
    best_epoch, val_accuracy, history = _fit(model, loaders, recipe, mean, std, device)
    probs, _ = predict_probs(model, loaders["test"], mean, std, device)
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
        classes,
        mean,
        std,
        recipe,
        encoder.init,
        extra={
            "cell": {k: str(v) for k, v in asdict(cell).items()},
            "best_epoch": best_epoch,
            "normalisation": source,
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


def save_classifier(
    out: Path,
    model: PlanktonClassifier,
    classes: ClassMap,
    mean: float,
    std: float,
    recipe: Recipe,
    initialised_from: str,
    extra: dict | None = None,
) -> None:
    """Write ``model.safetensors`` + ``classifier.json``; :func:`load_classifier` rebuilds the model offline.

    The stored encoder spec is the resolved architecture (timm name + model args) with ``init="random"``:
    rebuilding needs no hub access, and the weights come from the checkpoint.
    """
    out.mkdir(parents=True, exist_ok=True)
    info = {
        "format": "plankton-classifier/1",
        "encoder": asdict(model.spec),
        "initialised_from": initialised_from,
        "classes": list(classes.names),
        "mean": mean,
        "std": std,
        "img_size": recipe.img_size,
        "resize": recipe.resize,
        "recipe": asdict(recipe),
        **(extra or {}),
    }
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / CHECKPOINT_NAME))
    (out / INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")


def load_classifier(run: Path | str, device: str | torch.device = "cpu") -> tuple[PlanktonClassifier, dict]:
    """Rebuild a fine-tuned classifier from its run folder: ``(model in eval mode, classifier.json dict)``."""
    run = Path(run)
    info_path, weights = run / INFO_NAME, run / CHECKPOINT_NAME
    if not info_path.is_file() or not weights.is_file():
        raise FinetuneError(
            f"{run} is not a fine-tuned model folder (needs {INFO_NAME} and {CHECKPOINT_NAME})"
        )
    info = json.loads(info_path.read_text())
    spec = EncoderSpec(**info["encoder"])
    model = build_classifier(spec, len(info["classes"]), pretrained=False)
    model.load_state_dict(load_file(str(weights)))
    return model.to(device).eval(), info
