"""Shared test fixtures.

``synthetic_shards`` builds a small labelled shard folder plus manifest in the exact on-disk contract that
``plankton-data ingest`` writes (tars of ``<key>.jpg`` + ``<key>.json``, ``index.json``, Parquet manifest),
from generated images whose class is visible in the pixels (disc / bar / ring), so training tests can
learn something real.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from plankton_data.format.index import ShardIndex, manifest_ref, write_index
from plankton_data.format.keys import pixel_sha256, sample_key
from plankton_data.format.manifest import pixel_stats, read_manifest, to_table, write_table
from plankton_data.format.tar import TarShardWriter

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
CLASSES = ("disc", "bar", "ring")


@dataclass(frozen=True)
class ShardFolder:
    root: Path  # shards root (manifest `shard` paths are relative to it)
    folder: Path  # shards/<name>
    manifest: Path  # manifests/<name>.parquet
    name: str
    total: int


def draw_sample(cls: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A size x size uint8 gray image: white-ish background, dark object whose shape encodes ``cls``."""
    img = np.clip(rng.normal(235, 6, (size, size)), 0, 255).astype(np.uint8)
    c = (int(size / 2 + rng.integers(-size // 8, size // 8)), int(size / 2 + rng.integers(-size // 8, size // 8)))
    r = int(size * rng.uniform(0.15, 0.3))
    ink = int(rng.integers(20, 90))
    if cls == "disc":
        cv2.circle(img, c, r, ink, -1)
    elif cls == "bar":
        cv2.rectangle(img, (c[0] - r, c[1] - r // 4), (c[0] + r, c[1] + r // 4), ink, -1)
    else:
        cv2.circle(img, c, r, ink, max(2, size // 32))
    return img


def make_shard_folder(
    base: Path, name: str = "synthetic", per_class: int = 12, size: int = 64, per_shard: int = 10, seed: int = 0
) -> ShardFolder:
    """Write ``base/shards/<name>/`` and ``base/manifests/<name>.parquet`` from synthetic images."""
    rng = np.random.default_rng(seed)
    root, folder = base / "shards", base / "shards" / name
    folder.mkdir(parents=True, exist_ok=True)
    samples = [(cls, i) for i in range(per_class) for cls in CLASSES]
    rows, infos, writer = [], [], None
    for n, (cls, i) in enumerate(samples):
        if n % per_shard == 0:
            if writer:
                infos.append(writer.close())
            writer = TarShardWriter(folder / f"{name}-{len(infos):06d}.tar")
        img = draw_sample(cls, rng, size)
        jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
        key = sample_key(name, f"{cls}/{i}")
        meta = {
            "key": key,
            "dataset": name,
            "label": cls,
            "label_raw": cls,
            "split": "",
            "subset": "",
            "instrument": "synthetic",
        }
        loc = writer.add(key, {"jpg": jpg, "json": json.dumps(meta).encode()})["jpg"]
        rows.append(
            dict(
                meta,
                source=f"{cls}/{i}.jpg",
                orig_width=size,
                orig_height=size,
                width=size,
                height=size,
                image_format="jpg",
                image_sha256=hashlib.sha256(jpg).hexdigest(),
                pixel_sha256=pixel_sha256(img),
                pixel_sum=int(img.sum()),
                pixel_sq_sum=int((img.astype(np.int64) ** 2).sum()),
                shard=f"{name}/{writer.path.name}",
                offset=loc.offset,
                length=loc.length,
                preprocess="{}",
                meta="{}",
            )
        )
    infos.append(writer.close())
    manifest = base / "manifests" / f"{name}.parquet"
    write_table(to_table(rows), manifest)
    mean, std = pixel_stats(read_manifest(manifest))
    write_index(
        ShardIndex(
            name=name,
            kind="dataset",
            image_format="jpg",
            size=size,
            total=len(rows),
            mean=mean,
            std=std,
            dataset_stats={name: [mean, std]},
            shards=infos,
            manifest=manifest_ref(folder, manifest),
        ),
        folder,
    )
    return ShardFolder(root=root, folder=folder, manifest=manifest, name=name, total=len(rows))


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory: pytest.TempPathFactory) -> ShardFolder:
    """A 36-sample, 3-class, 64 px labelled shard folder (4 tars of 10, 10, 10, 6 samples)."""
    return make_shard_folder(tmp_path_factory.mktemp("synthetic"))
