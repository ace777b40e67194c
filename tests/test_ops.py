"""Pure image operations on synthetic arrays, and legend removal on real ZooProcess vignettes."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from plankton_data.ingest import ops
from tests.conftest import REALDATA


def _blob(h: int, w: int, bg: int = 255, ink: int = 40) -> np.ndarray:
    img = np.full((h, w), bg, np.uint8)
    cv2.ellipse(img, (w // 2, h // 2), (max(1, w // 4), max(1, h // 4)), 0, 0, 360, ink, -1)
    return img


def test_to_gray_handles_bgr_bgra_gray_and_16bit():
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., 2] = 255  # pure red
    assert ops.to_gray(bgr).shape == (4, 5) and ops.to_gray(bgr)[0, 0] == 76
    assert ops.to_gray(np.dstack([bgr, np.full((4, 5), 255, np.uint8)])).shape == (4, 5)
    assert ops.to_gray(np.full((3, 3), 0xABCD, np.uint16))[0, 0] == 0xAB
    g = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(ops.to_gray(g), g)


def test_clip_box_clips_and_rejects_degenerate():
    assert ops.clip_box((-5, -5, 50, 50), 40, 30) == (0, 0, 40, 30)
    assert ops.clip_box((10, 10, 11, 20), 40, 30) is None  # 1 px wide
    assert ops.clip_box((50, 50, 60, 60), 40, 30) is None  # outside


@pytest.mark.parametrize("shape", [(30, 90), (90, 30), (41, 40)])
def test_pad_to_square_centres_image_on_matched_noise(shape):
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(200, 3, shape), 0, 255).astype(np.uint8)
    img[shape[0] // 2, shape[1] // 2] = 0
    out = ops.pad_to_square(img, np.random.default_rng(1))
    side = max(shape)
    assert out.shape == (side, side) and out.dtype == np.uint8
    y0, x0 = (side - shape[0]) // 2, (side - shape[1]) // 2
    assert np.array_equal(out[y0 : y0 + shape[0], x0 : x0 + shape[1]], img)
    pad = np.ones_like(out, bool)
    pad[y0 : y0 + shape[0], x0 : x0 + shape[1]] = False
    if pad.sum() > 100:  # the padding's noise is centred on the edge mode with the edge's spread
        mode, std = ops.edge_background(img)
        assert abs(out[pad].mean() - mode) < 0.5
        assert abs(out[pad].std() - std) < 0.3


def test_pad_to_square_is_deterministic_per_rng_seed():
    img = np.clip(np.random.default_rng(0).normal(230, 4, (20, 60)), 0, 255).astype(np.uint8)
    a = ops.pad_to_square(img, np.random.default_rng(7))
    b = ops.pad_to_square(img, np.random.default_rng(7))
    c = ops.pad_to_square(img, np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_edge_background_ignores_object_pixels_on_the_border():
    img = np.full((50, 50), 240, np.uint8)
    img[:, :3] = 10  # a dark object touching the left border
    mode, std = ops.edge_background(img)
    assert mode == 240 and std == 0.0


def test_resize_square():
    img = _blob(300, 300)
    assert ops.resize_square(img, 256).shape == (256, 256)
    assert ops.resize_square(_blob(20, 20), 256).shape == (256, 256)
    assert ops.resize_square(img, 0) is img


def _synthetic_vignette(h_obj: int = 60, w_obj: int = 40) -> tuple[np.ndarray, int]:
    """A ZooProcess-style vignette: object above a 31-px footer holding a bar and '1 mm' text."""
    length = 94
    h, w = round(1.4 * h_obj + 31), round(max(1.4 * w_obj, length + 20))
    img = np.full((h, w), 255, np.uint8)
    cv2.ellipse(img, (w // 2, (h - 31) // 2), (w_obj // 2, h_obj // 2), 0, 0, 360, 90, -1)
    img[h - 6 : h - 4, 9 : 10 + length] = 85
    cv2.putText(img, "1 mm", (10, h - 10), cv2.FONT_HERSHEY_PLAIN, 0.6, 84, 1)
    return img, h


def test_remove_legend_erases_legend_and_keeps_object():
    img, h = _synthetic_vignette()
    out = ops.remove_zooprocess_legend(img)
    assert out[h - 31 :, :].min() >= 250  # no legend pixel left in the footer
    assert np.array_equal(out[: h - 31], img[: h - 31])  # the organism is untouched


def test_remove_legend_keeps_object_reaching_into_the_footer():
    img, h = _synthetic_vignette(w_obj=100)
    img[h - 40 : h - 2, 120:124] = 50  # an appendage running down into the footer, right of the legend
    out = ops.remove_zooprocess_legend(img)
    assert np.array_equal(out[h - 40 :, 115:], img[h - 40 :, 115:])
    assert out[h - 31 :, :110].min() >= 250  # legend text and bar erased


def test_remove_legend_never_touches_an_object_that_touches_the_legend():
    img, h = _synthetic_vignette()
    img[h - 40 : h - 2, 60:64] = 50  # crosses the scale bar: bar and organism are one component
    out = ops.remove_zooprocess_legend(img)
    assert np.array_equal(out[:, 50:], img[:, 50:])  # organism and the bar touching it stay
    assert out[h - 17 : h - 9, 10:34].min() >= 250  # the separate "1 mm" text still goes


def test_remove_legend_leaves_images_without_legend_unchanged():
    img = _blob(80, 60)
    assert np.array_equal(ops.remove_zooprocess_legend(img), img)


ZOOSCAN = REALDATA / "zooscan"


def _vignettes() -> list[Path]:
    return sorted(ZOOSCAN.glob("jiho__zooprocess_ai_demo/images/*.jpg")) + sorted(
        ZOOSCAN.glob("maxwagn__ZooScan-Local-Image-Processing/**/*.jpg")
    )


@pytest.mark.skipif(not ZOOSCAN.is_dir(), reason="../shared/realdata/zooscan not present")
@pytest.mark.parametrize("path", _vignettes(), ids=lambda p: p.name)
def test_real_vignettes_lose_their_legend_and_keep_the_organism(path):
    gray = ops.to_gray(cv2.imread(str(path), cv2.IMREAD_UNCHANGED))
    h, w = gray.shape
    assert gray[h - 31 :, : min(w, 140)].min() < 100, "fixture sanity: the real vignette shows a legend"
    out = ops.remove_zooprocess_legend(gray)
    # The bottom-left legend area (as the dataset notes specify: ~25 x 120 px) has no dark pixel left.
    assert out[h - 25 :, : min(w, 120)].min() >= 250
    # Nothing above the footer changed, and the organism's dark pixels are all still there.
    assert np.array_equal(out[: h - 31], gray[: h - 31])
    assert (gray[: h - 31] < 250).sum() > 20  # there is an organism, and (above) it is unchanged
