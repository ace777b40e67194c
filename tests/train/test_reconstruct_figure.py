"""The reconstruction grid: columns in order under their titles, PNG at 200 dpi and a PDF beside it."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from plankton_train.protocol.reconstruct import plot_grid


def _dpi(path: Path) -> float:
    data = path.read_bytes()
    x, _, unit = struct.unpack(">IIB", data[data.find(b"pHYs") + 4 :][:9])
    return round(x * 0.0254, 1) if unit == 1 else 0.0


def test_grid_columns_titles_dpi_and_pdf(tmp_path: Path) -> None:
    rows, side = 4, 32
    columns = [np.full((rows, side, side), v, np.uint8) for v in (0, 128, 255)]  # black | gray | white
    png = plot_grid(columns, ["original", "masked (75%)", "reconstruction"], tmp_path / "f" / "grid.png", tile=128)
    assert png == tmp_path / "f" / "grid.png" and png.with_suffix(".pdf").read_bytes().startswith(b"%PDF")
    assert _dpi(png) >= 200
    img = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
    h, w = img.shape
    assert rows * 128 <= h < rows * 128 * 1.3 and 3 * 128 <= w < 3 * 128 * 1.3  # ~128 px tiles
    title_band = img[: int(0.04 * h)]
    assert (title_band < 100).any()  # the column titles are drawn above the first row
    middle = h * 0.6
    for c, value in enumerate((0, 128, 255)):
        x = int(w * (c + 0.5) / 3)
        assert abs(int(img[int(middle), x]) - value) < 20, (c, img[int(middle), x])  # order kept
    bigger = plot_grid(columns, ["a", "b", "c"], tmp_path / "big.png", tile=256)
    assert cv2.imread(str(bigger)).shape[0] > 1.8 * h
