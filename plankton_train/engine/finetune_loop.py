"""The fine-tuning loops: one training epoch, evaluation, the epoch loop that keeps the best-validation weights.

:func:`plankton_train.finetune.finetune` builds the loaders, the classifier and the optimiser; these loops run
them. The learning rate is set before every optimiser step (cosine with warmup, per step, layer decay through
each group's ``lr_scale``); forward passes in the run's precision (:func:`~plankton_train.engine.device.autocast`;
``auto``: bf16 on GPU, fp32 on CPU); the loss stays on the device until the epoch ends.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from plankton_train.data.augment import normalize
from plankton_train.engine.device import autocast
from plankton_train.engine.optim import cosine_lr, set_lr
from plankton_train.errors import FinetuneError
from plankton_train.models.classifier import PlanktonClassifier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochSchedule:
    """Cosine learning rate with linear warmup over ``epochs``, evaluated per optimiser step."""

    epochs: int
    warmup_epochs: int
    lr: float  # peak
    min_lr: float

    def at(self, epoch: int, it: int, steps: int) -> float:
        """Learning rate of step ``it`` of ``epoch`` when every epoch has ``steps`` steps."""
        return cosine_lr(epoch * steps + it, self.epochs * steps, self.warmup_epochs * steps, self.lr, self.min_lr)


@torch.no_grad()
def predict_probs(
    model: PlanktonClassifier,
    loader: torch.utils.data.DataLoader,
    mean: float,
    std: float,
    device: torch.device,
    embeddings: bool = False,
    precision: str = "auto",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Softmax probabilities ``(N, classes)`` float32 in loader order, optionally embeddings ``(N, D)``.

    ``precision``: ``bf16`` | ``fp32`` | ``auto`` (:mod:`plankton_train.engine.precision`).
    """
    model.eval()
    probs, embs = [], []
    for x, _ in loader:
        x = normalize(x.to(device, non_blocking=True), mean, std)
        with autocast(device, precision):
            feats = model.embed(x)
            logits = model.head(feats)
        probs.append(torch.softmax(logits.float(), dim=1).cpu())
        if embeddings:
            embs.append(feats.float().cpu())
    return torch.cat(probs).numpy(), (torch.cat(embs).numpy() if embeddings else None)


def train_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    schedule: EpochSchedule,
    epoch: int,
    mean: float,
    std: float,
    device: torch.device,
    precision: str = "auto",
) -> tuple[float, float]:
    """One epoch; the lr is set before every optimiser step. Returns (mean loss, lr at the last step)."""
    model.train()
    steps = len(loader)
    loss_sum, n, lr = torch.zeros((), device=device), 0, 0.0
    for it, (x, y) in enumerate(loader):
        lr = schedule.at(epoch, it, steps)
        set_lr(optimizer, lr)
        x = normalize(x.to(device, non_blocking=True), mean, std)
        y = y.to(device, non_blocking=True)
        with autocast(device, precision):
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


def evaluate(model, loader, loss_fn, mean, std, device, precision: str = "auto") -> tuple[float, float, np.ndarray]:
    """``(accuracy, loss, probabilities)`` of ``model`` on a loader whose dataset has ``targets``."""
    probs, _ = predict_probs(model, loader, mean, std, device, precision=precision)
    targets = torch.as_tensor(loader.dataset.targets)
    loss = float(loss_fn(torch.log(torch.as_tensor(probs).clamp_min(1e-12)), targets))  # NLL of the probs
    return float((probs.argmax(1) == targets.numpy()).mean()), loss, probs


def fit(
    model: nn.Module,
    loaders: dict,
    optimizer: torch.optim.Optimizer,
    train_loss_fn: nn.Module,
    schedule: EpochSchedule,
    mean: float,
    std: float,
    device: torch.device,
    precision: str = "auto",
) -> tuple[int, float, list[dict]]:
    """Train for ``schedule.epochs``; leave the best-validation weights in ``model``.

    Returns ``(best epoch, its validation accuracy, per-epoch history rows)``; a row's
    ``train_images_per_s`` is the epoch's training images over its training time (loading included,
    validation not; the first epoch of a compiled run includes the compilation). The best epoch has the highest
    validation accuracy (ties: lower validation loss). Without validation images the last epoch is kept.
    """
    nll = nn.NLLLoss()
    epochs = schedule.epochs
    best: tuple[float, float, int, dict | None] = (-1.0, math.inf, epochs - 1, None)  # (acc, loss, epoch, state)
    history, t0 = [], time.perf_counter()
    for epoch in range(epochs):
        loaders["train"].dataset.set_epoch(epoch)
        start = time.perf_counter()
        train_loss, lr = train_epoch(
            model, loaders["train"], optimizer, train_loss_fn, schedule, epoch, mean, std, device, precision
        )
        speed = len(loaders["train"].dataset) / (time.perf_counter() - start)  # train_epoch ends in a host sync
        row = {"epoch": epoch, "train_loss": train_loss, "lr": lr, "train_images_per_s": speed}
        if "val" in loaders:
            acc, loss, _ = evaluate(model, loaders["val"], nll, mean, std, device, precision)
            row.update(val_accuracy=acc, val_loss=loss)
            if (acc, -loss) > (best[0], -best[1]):
                state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                best = (acc, loss, epoch, state)
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        val = f"{row['val_accuracy']:.4f}" if "val_accuracy" in row else "-"
        log.info("epoch %d/%d loss %.4f val acc %s", epoch + 1, epochs, train_loss, val)
    if best[3] is None:
        return epochs - 1, float("nan"), history
    model.load_state_dict(best[3])
    return best[2], best[0], history
