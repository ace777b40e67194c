"""How much does grayscale-before-padding (this toolkit) differ from the paper's padding-then-grayscale?

The paper pads each RGB image on matched-background noise and converts to gray in the augmentations; ingest
converts to gray first and pads the gray image (one channel: a third of the work, and one pad rule for gray and
RGB sources). Inside the original image the two orders give the same pixels (luma is per pixel), so only the
pad region can differ. This script pads real RGB plankton images (ZooLake and diatom cutouts from
../shared/realdata) both ways, with the same edge statistics rule, and reports medians over images of:

* the pad region's mean (the background colour) in both orders, and the absolute difference;
* the pad region's noise std in both orders and their ratio (per-channel noise averaged by luma is smoother);
* the mean absolute pixel difference over the whole padded image.

    python benchmarks/gray_order.py [--images 300]
"""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

import cv2
import numpy as np

from plankton_data.ingest.ops import edge_background, pad_to_square, to_gray

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
ZOOLAKE = REALDATA / "lake_zooplankton" / "data.zip"
DIATOMS = REALDATA / "diatoms"


def _decode(data: bytes) -> np.ndarray | None:
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return None if bgr is None or bgr.shape[0] == bgr.shape[1] else np.ascontiguousarray(bgr[:, :, ::-1])


def zoolake_images(limit: int):
    """Up to ``limit`` non-square RGB ZooLake images (``H x W x 3``), spread over all classes of the zip."""
    with zipfile.ZipFile(ZOOLAKE) as outer:
        names = sorted(n for n in outer.namelist() if n.lower().endswith((".jpeg", ".jpg")))
        for name in names[:: max(1, len(names) // (4 * limit))]:
            if (rgb := _decode(outer.read(name))) is not None:
                yield rgb
                limit -= 1
                if limit == 0:
                    return


def diatom_images(limit: int):
    """The real RGB diatom cutouts (PNG, light background) under ../shared/realdata/diatoms."""
    for path in sorted(DIATOMS.rglob("*.png"))[:limit]:
        if (rgb := _decode(path.read_bytes())) is not None:
            yield rgb


def _pad_region(shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask of the pad region of an ``H x W`` image padded to a centred square."""
    h, w = shape
    side = max(h, w)
    mask = np.ones((side, side), bool)
    y0, x0 = (side - h) // 2, (side - w) // 2
    mask[y0 : y0 + h, x0 : x0 + w] = False
    return mask


def compare(rgb: np.ndarray, seed: int) -> dict[str, float]:
    gray_first = pad_to_square(to_gray(rgb), np.random.default_rng(seed))
    rng = np.random.default_rng(seed)
    channels = [pad_to_square(np.ascontiguousarray(rgb[:, :, c]), rng, edge_background(rgb[:, :, c])) for c in range(3)]
    pad_first = to_gray(np.stack(channels, axis=2))
    pad = _pad_region(rgb.shape[:2])
    a, b = gray_first[pad].astype(np.float64), pad_first[pad].astype(np.float64)
    return {
        "mean_gray_first": a.mean(),
        "mean_pad_first": b.mean(),
        "mean_abs_diff": abs(a.mean() - b.mean()),
        "std_gray_first": a.std(),
        "std_pad_first": b.std(),
        "std_ratio": b.std() / a.std() if a.std() > 0 else 1.0,
        "pixel_mad": float(np.abs(gray_first.astype(np.int16) - pad_first.astype(np.int16)).mean()),
        "pad_share": float(pad.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    args = parser.parse_args()
    if not ZOOLAKE.is_file():
        raise SystemExit(f"real ZooLake zip not found at {ZOOLAKE}")
    for title, images in (("ZooLake (dark field)", zoolake_images), ("UDE-style diatoms (light)", diatom_images)):
        rows = [compare(rgb, seed) for seed, rgb in enumerate(images(args.images))]
        print(f"{title}: {len(rows)} real non-square RGB images, median and 95th percentile over images")
        for key in rows[0]:
            values = np.array([r[key] for r in rows])
            print(f"  {key:16s} median {np.median(values):8.3f}   p95 {np.percentile(values, 95):8.3f}")


if __name__ == "__main__":
    main()
