"""The paper's image transforms on ``H x W`` uint8 grayscale arrays (cv2, run in loader workers).

Train: resize the shorter side to 256 (skipped when the image already is 256 px, as shard sets are),
random resized crop to 224 with area scale (0.4, 1.0) and aspect ratio (3/4, 4/3), random horizontal and
vertical flips. Eval: resize the shorter side, centre crop. Randomness comes only from the ``rng`` passed
in, so a seeded generator reproduces the exact crops. Normalisation is deliberately not done here: batches
travel to the device as uint8 (4x less host memory and PCIe traffic than float) and :func:`normalize`
runs there with the shard set's own mean/std.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

RATIO = (3 / 4, 4 / 3)  # torchvision RandomResizedCrop default aspect-ratio range


def resize_short(img: np.ndarray, size: int) -> np.ndarray:
    """Resize so the shorter side is ``size`` (aspect kept); a no-op when it already is.

    ``H x W uint8 -> H' x W' uint8``. Area interpolation when shrinking (anti-aliased), bilinear when
    enlarging, matching torchvision's antialiased ``Resize``.
    """
    h, w = img.shape[:2]
    if min(h, w) == size:
        return img
    f = size / min(h, w)
    new_w, new_h = max(size, round(w * f)), max(size, round(h * f))
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
    return cv2.resize(img, (new_w, new_h), interpolation=interp)


def _crop_box(h: int, w: int, rng: np.random.Generator, scale: tuple[float, float]) -> tuple[int, int, int, int]:
    """torchvision ``RandomResizedCrop.get_params``: (top, left, height, width) of the crop."""
    area = h * w
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    # Fallback: the largest centred crop with an in-range aspect ratio.
    in_ratio = w / h
    if in_ratio < RATIO[0]:
        cw, ch = w, round(w / RATIO[0])
    elif in_ratio > RATIO[1]:
        ch, cw = h, round(h * RATIO[1])
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def train_transform(
    img: np.ndarray,
    rng: np.random.Generator,
    out_size: int = 224,
    scale: tuple[float, float] = (0.4, 1.0),
    resize: int = 256,
) -> np.ndarray:
    """The paper's pretraining/fine-tuning augmentation.

    Args:
        img: ``H x W`` uint8 grayscale image (any size; shard images are usually 256 x 256).
        rng: the only source of randomness (crop box, flips).
        out_size: side of the output crop in pixels.
        scale: range of the crop area as a fraction of the resized image area.
        resize: the shorter side is first resized to this many pixels.

    Returns:
        ``out_size x out_size`` uint8, C-contiguous.
    """
    img = resize_short(img, resize)
    top, left, ch, cw = _crop_box(img.shape[0], img.shape[1], rng, scale)
    crop = img[top : top + ch, left : left + cw]
    out = cv2.resize(crop, (out_size, out_size), interpolation=cv2.INTER_CUBIC)  # bicubic, as MAE
    hflip, vflip = rng.random(2) < 0.5
    if hflip or vflip:
        # cv2.flip codes: 1 = around the vertical axis (horizontal flip), 0 = vertical flip, -1 = both.
        out = cv2.flip(out, -1 if hflip and vflip else (1 if hflip else 0))
    return out


def eval_transform(img: np.ndarray, out_size: int = 224, resize: int = 256) -> np.ndarray:
    """Deterministic evaluation view: shorter side to ``resize``, then a centred ``out_size`` crop.

    ``H x W uint8 -> out_size x out_size uint8`` (C-contiguous).
    """
    img = resize_short(img, max(resize, out_size))
    h, w = img.shape[:2]
    top, left = (h - out_size) // 2, (w - out_size) // 2
    return np.ascontiguousarray(img[top : top + out_size, left : left + out_size])


def normalize(batch: torch.Tensor, mean: float | torch.Tensor, std: float | torch.Tensor) -> torch.Tensor:
    """uint8 images ``(B, 1, H, W)`` -> float32 ``(x / 255 - mean) / std`` on the batch's device.

    ``mean`` and ``std`` are in [0, 1] units, as ``index.json`` stores them: floats, or ``(B, 1, 1, 1)``
    tensors for one value per image.
    """
    return batch.float().mul_(1.0 / (255.0 * std)).sub_(mean / std)  # two passes over the batch
