"""Figure-3-style reconstructions: original | masked input | reconstruction, one row per image, with column
titles; written as PNG (200 dpi) and as PDF beside it.

The model predicts norm-pix targets (each patch normalised by its own mean and variance), which are not
images. As in the MAE visualisations of norm-pix models, predicted patches are mapped back to pixels with
the true mean/variance of each masked patch, so the figure shows the structure the model predicted, while
patch brightness and contrast come from the original. Visible patches are pasted from the input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lightly.models import utils as lutils

from plankton_train.data.augment import normalize
from plankton_train.data.stream import ShardStream
from plankton_train.models.checkpoint import load_mae
from plankton_train.protocol.report import FIGURE_DPI, save_figure

_MASK_GRAY = 0.5  # masked patches in the "masked" column, in [0, 1] pixel units


def reconstruct(
    checkpoint: Path | str,
    *,
    out: Path | str,
    shards: Path | str | None = None,
    n: int = 8,
    seed: int = 0,
    tile: int = 224,
) -> Path:
    """Write a grid of ``n`` images from the shard set (centre crops, random picks from ``seed``): columns
    original / masked / reconstruction under titles, as a PNG (200 dpi) and a PDF of the same name.

    Args:
        checkpoint: a training checkpoint file or run folder.
        out: the PNG to write (parent folders are created).
        shards: shard folder to draw images from; defaults to the one the model was trained on.
        n: number of images (rows).
        seed: picks the images and the masks.
        tile: side of each tile in PNG pixels (at 200 dpi; images are shown with nearest-neighbour scaling).

    Returns:
        The PNG's path (the PDF lies beside it).
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
    columns = [lutils.unpatchify(p, cfg.patch_size, cfg.in_chans) for p in (patches, masked, recon)]
    titles = ["original", f"masked ({cfg.mask_ratio:.0%})", "reconstruction"]
    return plot_grid([_to_uint8(c, mean, std) for c in columns], titles, Path(out), tile=tile)


def _to_uint8(x: torch.Tensor, mean: float, std: float) -> np.ndarray:
    """Normalised ``(B, 1, H, W)`` -> ``(B, H, W)`` uint8."""
    return ((x[:, 0] * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def plot_grid(columns: list[np.ndarray], titles: list[str], out: Path, *, tile: int = 224) -> Path:
    """Rows of gray tiles, ``columns[c][r]`` at row r, column c, each column under its title; PNG + PDF.

    ``columns``: uint8 arrays ``(rows, H, W)``; ``tile``: side of a tile in PNG pixels. Returns the PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(columns[0]), len(columns)
    side = max(tile, 64) / FIGURE_DPI  # inches per tile
    title_h = 0.25  # inches above the first row
    height = rows * side * 1.04 + title_h
    fig, axes = plt.subplots(rows, cols, figsize=(cols * side * 1.04, height), squeeze=False)
    fig.subplots_adjust(left=0.005, right=0.995, bottom=0.005, top=1 - title_h / height, wspace=0.04, hspace=0.04)
    # a title fits its column: about 0.6 em per character
    font = max(5.0, min(9.0, side * 68 / (0.6 * max(len(t) for t in titles))))
    for c, images in enumerate(columns):
        for r, img in enumerate(images):
            ax = axes[r][c]
            ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0][c].set_title(titles[c], fontsize=font, pad=3)
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, out)[0]
