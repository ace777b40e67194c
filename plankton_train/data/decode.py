"""Stored image bytes -> gray pixels: the one decoder of every training-side reader (stream, labelled, predict).

Shards hold baseline JPEG (written by ingest through OpenCV) or PNG. JPEG goes through libjpeg-turbo
(simplejpeg), decoding straight to gray, and strictly: a truncated or damaged stream raises instead of
returning a partly grey image. Anything else goes through OpenCV.
"""

from __future__ import annotations

import cv2
import numpy as np
import simplejpeg

from plankton_train.errors import CorruptSample


def decode_gray(data: bytes) -> np.ndarray:
    """Image bytes -> ``H x W`` uint8; raises :class:`CorruptSample` when they do not decode cleanly."""
    if data[:2] == b"\xff\xd8":
        try:
            return simplejpeg.decode_jpeg(data, colorspace="GRAY")[:, :, 0]
        except ValueError as exc:
            raise CorruptSample(f"bad JPEG ({exc})") from exc
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise CorruptSample(f"undecodable image ({len(data)} bytes)")
    return img
