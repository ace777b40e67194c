"""Figure-3-style reconstructions: masked input | reconstruction | original, one row per image.

The model predicts norm-pix targets (each patch normalised by its own mean and variance), which are not
images. As in the MAE visualisations of norm-pix models, predicted patches are mapped back to pixels with
the true mean/variance of each masked patch, so the figure shows the structure the model predicted, while
patch brightness and contrast come from the original. Visible patches are pasted from the input.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from lightly.models import utils as lutils

from plankton_train.data.augment import normalize
from plankton_train.data.stream import ShardStream
from plankton_train.models.checkpoint import load_mae

_GAP = 4  # pixels of white between tiles
_MASK_GRAY = 0.5  # masked patches in the first column, in [0, 1] pixel units


def reconstruct(
    checkpoint: Path | str,
    *,
    out: Path | str,
    shards: Path | str | None = None,
    n: int = 8,
    seed: int = 0,
    tile: int = 224,
) -> Path:
    """Write a PNG grid of ``n`` images from the shard set (centre crops, random picks from ``seed``).

    Args:
        checkpoint: a training checkpoint file or run folder.
        out: the PNG to write (parent folders are created).
        shards: shard folder to draw images from; defaults to the one the model was trained on.
        n: number of images (rows).
        seed: picks the images and the masks.
        tile: side of each tile in the figure (tiles are upscaled with nearest-neighbour if smaller).

    Returns:
        The path written.
    """
    model, state = load_mae(checkpoint)
    cfg = model.cfg
    stream = ShardStream(
        shards or state["config"]["shards"], n, out_size=cfg.img_size, train=False, seed=seed, epochs=1
    )
    images_u8 = next(iter(stream))["images"]
    mean, std = stream.index.mean, stream.index.std
    images = normalize(images_u8, mean, std)
    with torch.no_grad():
        pred, _, idx_mask = model.predict(images, torch.Generator().manual_seed(seed))
    patches = lutils.patchify(images, cfg.patch_size)  # (B, N, p*p*C) normalised pixels
    pos = idx_mask - model.num_prefix  # patch indices of the masked patches
    if cfg.norm_pix_loss:
        truth = lutils.get_at_index(patches, pos)
        pred = pred * (truth.var(dim=-1, keepdim=True) + 1e-6).sqrt() + truth.mean(dim=-1, keepdim=True)
    gray = (_MASK_GRAY - mean) / std
    masked = lutils.set_at_index(patches, pos, torch.full_like(pred, gray))
    recon = lutils.set_at_index(patches, pos, pred)
    columns = [lutils.unpatchify(p, cfg.patch_size, cfg.in_chans) for p in (masked, recon, patches)]
    grid = _grid([_to_uint8(c, mean, std) for c in columns], tile)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), grid):
        raise OSError(f"could not write {out}")
    return out


def _to_uint8(x: torch.Tensor, mean: float, std: float) -> np.ndarray:
    """Normalised ``(B, 1, H, W)`` -> ``(B, H, W)`` uint8."""
    return ((x[:, 0] * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def _grid(columns: list[np.ndarray], tile: int) -> np.ndarray:
    """Rows of tiles: ``columns[c][r]`` goes to row r, column c, separated by white gaps."""
    rows, cols = len(columns[0]), len(columns)
    side = max(tile, columns[0].shape[-1])
    grid = np.full((rows * (side + _GAP) + _GAP, cols * (side + _GAP) + _GAP), 255, np.uint8)
    for c, images in enumerate(columns):
        for r, img in enumerate(images):
            y, x = _GAP + r * (side + _GAP), _GAP + c * (side + _GAP)
            grid[y : y + side, x : x + side] = cv2.resize(img, (side, side), interpolation=cv2.INTER_NEAREST)
    return grid
