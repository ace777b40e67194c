"""Optimiser parameter groups and the per-step learning-rate schedule shared by pretraining and fine-tuning.

Follows the official MAE code: no weight decay on 1-d parameters (norms, biases) nor on position and
special tokens; linear warmup then half-cycle cosine, evaluated per *optimiser* step; an optional
per-parameter ``lr_scale`` (layer-wise decay) that :func:`set_lr` multiplies in. torch optimisers ignore
``lr_scale`` on their own, so always set the learning rate through :func:`set_lr`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)

NO_DECAY_KEYWORDS = ("pos_embed", "cls_token", "mask_token", "dist_token")


def param_groups(
    model: nn.Module,
    weight_decay: float,
    no_decay_keywords: Sequence[str] = NO_DECAY_KEYWORDS,
    lr_scale_fn: Callable[[str], float] | None = None,
) -> list[dict]:
    """Split the trainable parameters of ``model`` into optimiser groups.

    Args:
        model: the module whose ``requires_grad`` parameters are optimised (frozen ones are left out).
        weight_decay: decoupled weight decay for matrices and convolution kernels.
        no_decay_keywords: a parameter whose name contains one of these gets no weight decay, besides
            every parameter with ``ndim <= 1`` (norm weights, biases) or a name ending in ``.bias``.
        lr_scale_fn: maps a parameter name to a learning-rate multiplier (e.g. layer-wise decay);
            ``None`` means 1.0 everywhere.

    Returns:
        A list of ``{"params", "weight_decay", "lr_scale"}`` dicts, one per distinct (decay, scale)
        pair, in first-seen parameter order, ready for ``torch.optim.AdamW``.
    """
    groups: dict[tuple[bool, float], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or name.endswith(".bias") or any(k in name for k in no_decay_keywords)
        scale = float(lr_scale_fn(name)) if lr_scale_fn is not None else 1.0
        group = groups.setdefault(
            (no_decay, scale),
            {"params": [], "weight_decay": 0.0 if no_decay else weight_decay, "lr_scale": scale},
        )
        group["params"].append(param)
    return list(groups.values())


def cosine_lr(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float = 0.0) -> float:
    """Learning rate at optimiser step ``step`` (0-based): linear warmup, then half-cycle cosine.

    Warmup rises linearly from ``base_lr / warmup_steps`` at step 0 to ``base_lr`` at step
    ``warmup_steps - 1`` (so the first step already learns); the cosine then falls from ``base_lr`` at
    ``warmup_steps`` towards ``min_lr`` at ``total_steps``. Steps past the end stay at ``min_lr``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to ``lr * group["lr_scale"]`` (scale 1.0 when absent)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def layer_id(name: str, depth: int) -> int:
    """Layer index of a classifier parameter for layer-wise lr decay (MAE ``param_groups_lrd`` semantics).

    Stem (``cls_token``, ``reg_token``, ``pos_embed``, ``patch_embed.*``) -> 0; ``blocks.k.*`` -> ``k + 1``;
    everything after the blocks (``norm``, ``fc_norm``, the head) -> ``depth + 1``.
    """
    if name.startswith("encoder."):
        rest = name[len("encoder.") :]
        if rest.startswith(("cls_token", "reg_token", "pos_embed", "patch_embed")):
            return 0
        if rest.startswith("blocks."):
            return int(rest.split(".")[1]) + 1
    return depth + 1


def layer_decay_groups(model: nn.Module, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW parameter groups with ``lr_scale = layer_decay ** (depth + 1 - layer_id)``.

    ``model`` is a :class:`~plankton_train.models.classifier.PlanktonClassifier` (``encoder.blocks``). Weight decay
    as in pretraining (:func:`param_groups`: none on norms, biases and position/class tokens). The scale is only a
    key in the group: the schedule must multiply it in (:func:`set_lr` does), because torch optimisers ignore
    unknown keys - the timm pitfall where layer decay silently does nothing.
    """
    depth = len(model.encoder.blocks)  # type: ignore[union-attr,arg-type]  # timm ViT: blocks is a Sequential
    return param_groups(
        model, weight_decay, lr_scale_fn=lambda name: layer_decay ** (depth + 1 - layer_id(name, depth))
    )


def clamp_warmup(warmup: int, total: int, *, unit: str) -> int:
    """``warmup`` cut to half the schedule when it is as long as the schedule or longer, with a warning.

    A warmup of ``total`` or more never reaches the peak learning rate (a short smoke run would stay in warmup).
    """
    if total > 0 and warmup >= total:
        clamped = total // 2
        log.warning(
            "warmup of %d %s is not shorter than the schedule (%d %s): clamped to %d",
            warmup,
            unit,
            total,
            unit,
            clamped,
        )
        return clamped
    return warmup
