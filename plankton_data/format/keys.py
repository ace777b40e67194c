"""Sample keys and ``pixel_sha256``: the two identities every manifest row carries.

* A **key** ``<dataset>_<16 hex>`` names a sample in its tar (``<key>.jpg``, ``<key>.json``) and in the
  manifest. It is stable (a hash of the sample's source id), unique within a dataset, and free of dots
  (webdataset splits the extension at the first dot) and slashes.
* **pixel_sha256** identifies image content whatever the encoding: the same published image ingested by two
  datasets gets the same value, which is what duplicate and leak detection compare.
"""

from __future__ import annotations

import hashlib

import numpy as np


def sample_key(dataset: str, source_id: str) -> str:
    """``<dataset>_<16 hex>``: stable, unique, and dot-free (webdataset splits extensions at the first dot)."""
    return f"{dataset}_{hashlib.sha256(source_id.encode()).hexdigest()[:16]}"


def key_dataset(key: str) -> str:
    """The dataset id a :func:`sample_key` was made for (ids may hold ``_``; the hex part never does)."""
    return key.rpartition("_")[0]


def pixel_sha256(gray: np.ndarray) -> str:
    """sha256 of a gray ``(H, W)`` uint8 image: height and width as 4-byte little-endian, then the pixels.

    Taken before padding (whose noise is seeded per sample key) and resizing, so the same published image
    ingested by two datasets gets the same value.
    """
    h, w = gray.shape
    return hashlib.sha256(h.to_bytes(4, "little") + w.to_bytes(4, "little") + gray.tobytes()).hexdigest()
