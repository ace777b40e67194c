"""Pure image operations on numpy arrays: no I/O, no globals, randomness only through an explicit ``rng``.

All images are ``H x W`` ``uint8`` grayscale unless stated. The ingest pipeline applies them in the order
the paper describes: dataset-specific step (box crop / legend removal) -> grayscale -> pad to square with a
matched background -> resize.
"""

from __future__ import annotations

import cv2
import numpy as np

#: ZooProcess reserves this many rows at the bottom of each vignette for the "1 mm" legend.
ZOOPROCESS_FOOTER_PX = 31


def to_gray(img: np.ndarray) -> np.ndarray:
    """``H x W`` or ``H x W x C`` (BGR/BGRA, as cv2 decodes) -> ``H x W`` uint8 (ITU-R 601 luma)."""
    if img.ndim == 2:
        gray = img
    elif img.shape[2] == 1:
        gray = img[:, :, 0]
    elif img.shape[2] == 4:
        gray = cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY)
    else:
        gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if gray.dtype != np.uint8:  # 16-bit PNGs: keep the top 8 bits
        gray = (gray >> 8).astype(np.uint8) if gray.dtype == np.uint16 else np.clip(gray, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(gray)


def clip_box(box: tuple[int, int, int, int], width: int, height: int) -> tuple[int, int, int, int] | None:
    """Clip ``(x0, y0, x1, y1)`` (0-based, end-exclusive) to the image; ``None`` if nothing is left."""
    x0, y0, x1, y1 = max(0, box[0]), max(0, box[1]), min(width, box[2]), min(height, box[3])
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return x0, y0, x1, y1


def crop(img: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Crop ``(x0, y0, x1, y1)`` (already clipped, end-exclusive) from ``H x W[x C]``."""
    x0, y0, x1, y1 = box
    return img[y0:y1, x0:x1]


def remove_zooprocess_legend(gray: np.ndarray, footer: int = ZOOPROCESS_FOOTER_PX, dark: int = 250) -> np.ndarray:
    """Erase the ZooProcess size legend (scale bar + "1 mm" text, bottom left) from a vignette.

    ZooProcess centres the organism above a ``footer``-row band and draws the legend inside that band.
    Every dark connected component (pixels < ``dark``) lying entirely inside the band is legend, so it is
    painted with the white background, grown by 2 px to take JPEG ringing with it. A component that
    reaches above the band belongs to the organism and is never touched, so the organism stays intact
    even when it dips into the footer. Images without a legend come back unchanged.

    ``H x W`` uint8 -> ``H x W`` uint8 (a copy).
    """
    out = gray.copy()
    h = gray.shape[0]
    if h <= footer + 2:
        return out
    mask = (gray < dark).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    top = h - footer
    legend: np.ndarray = np.zeros_like(mask)
    for i in range(1, n):
        if stats[i, cv2.CC_STAT_TOP] >= top:
            legend[labels == i] = 1
    if legend.any():
        legend = cv2.dilate(legend, np.ones((5, 5), np.uint8))
        legend[:top] = 0  # never paint above the band
        out[legend.astype(bool)] = 255
    return out


#: Row ``m``: the 256 gray values ordered by distance from ``m`` (ties: below before above).
def _by_distance(m: int) -> list[int]:
    return sorted(range(256), key=lambda v: (abs(v - m), v > m))


_BY_DISTANCE = np.array([_by_distance(m) for m in range(256)], dtype=np.int64)


def edge_background(gray: np.ndarray, closest_fraction: float = 0.2) -> tuple[int, float]:
    """Background colour and noise level estimated from the image border.

    Returns ``(mode, std)``: the most common value of all edge pixels, and the standard deviation of the
    ``closest_fraction`` of edge pixels nearest that mode (the paper's recipe: it ignores object pixels that
    touch the border, so the noise matches the background rather than the organism). Works on the 256-bin
    histogram of the edge: pixels are taken in rings of growing distance ``d`` from the mode (value
    ``mode - d`` before ``mode + d``) until the fraction is reached.
    """
    edge = np.concatenate([gray[0, :], gray[-1, :], gray[:, 0], gray[:, -1]])
    hist = np.bincount(edge, minlength=256).astype(np.int64)
    mode = int(hist.argmax())
    need = max(1, int(round(closest_fraction * edge.size)))
    values = _BY_DISTANCE[mode]
    counts = hist[values]
    taken = np.minimum(counts, np.maximum(0, need - (np.cumsum(counts) - counts)))
    n = taken.sum()
    mean = float(taken @ values) / n
    var = max(0.0, float(taken @ (values * values)) / n - mean * mean)
    return mode, float(np.sqrt(var))


def pad_to_square(
    gray: np.ndarray, rng: np.random.Generator, background: tuple[int, float] | None = None
) -> np.ndarray:
    """Pad the shorter side so the image is square, centred, on background-matched noise.

    The canvas is ``N(mode, std)`` noise from :func:`edge_background`, clipped to [0, 255], so the model
    cannot tell padding from real background by its flatness. ``background`` passes a precomputed
    ``(mode, std)``. ``H x W`` -> ``S x S`` with ``S = max(H, W)``.
    """
    h, w = gray.shape
    if h == w:
        return gray
    side = max(h, w)
    mode, std = background if background is not None else edge_background(gray)
    canvas = rng.normal(mode, std, size=(side, side)) if std > 0 else np.full((side, side), float(mode))
    canvas = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    y0, x0 = (side - h) // 2, (side - w) // 2
    canvas[y0 : y0 + h, x0 : x0 + w] = gray
    return canvas


def resize_square(gray: np.ndarray, size: int) -> np.ndarray:
    """Resize a square image to ``size x size``; ``size == 0`` keeps it as is.

    Area averaging when shrinking (no aliasing), bicubic when enlarging (Kaggle images can be 20 px).
    """
    if size == 0 or gray.shape[0] == size:
        return gray
    interp = cv2.INTER_AREA if gray.shape[0] > size else cv2.INTER_CUBIC
    return cv2.resize(gray, (size, size), interpolation=interp)
