"""Labelled images by random access: manifest rows -> (uint8 image, class index) through tar byte offsets.

Fine-tuning reads small, arbitrary subsets (1 % of a class can be one image), so instead of streaming shards
this dataset seeks straight to each image member's bytes (manifest ``shard``/``offset``/``length``). The
class map comes from the manifest labels, never from folder names. Loaders built here never come out
empty: a training set smaller than one batch becomes one (smaller) batch, so the optimiser always steps.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from plankton_data.format.manifest import read_manifest
from plankton_train.data.augment import eval_transform, train_transform
from plankton_train.data.decode import decode_gray
from plankton_train.errors import CorruptSample, LabelledDataError

#: ``(img HxW uint8, rng) -> img SxS uint8``: the per-sample transform (augmentation or centre crop).
Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]

ROW_COLUMNS = ("key", "label", "shard", "offset", "length", "image_format")


@dataclass(frozen=True)
class ClassMap:
    """Class names in index order (sorted, so the same labels always give the same indices)."""

    names: tuple[str, ...]

    @classmethod
    def from_labels(cls, labels: Sequence[str]) -> ClassMap:
        """Sorted distinct non-empty labels."""
        names = tuple(sorted({str(x) for x in labels if str(x)}))
        if not names:
            raise LabelledDataError("no labels: a class map needs labelled samples")
        return cls(names)

    def __len__(self) -> int:
        return len(self.names)

    def indices(self, labels: Sequence[str]) -> np.ndarray:
        """Class index per label; raises on a label outside the map. ``(N,) int64``."""
        lookup = {n: i for i, n in enumerate(self.names)}
        unknown = sorted({x for x in labels if x not in lookup})
        if unknown:
            raise LabelledDataError(f"labels not in the class map: {unknown[:5]}")
        return np.array([lookup[x] for x in labels], dtype=np.int64)


def manifest_rows(manifest: Path | str, keys: dict[str, Sequence[str]]) -> dict[str, pd.DataFrame]:
    """Manifest rows (``ROW_COLUMNS``) for each named key list, in key order; the manifest is read once.

    ``{"train": [...], "test": [...]} -> {"train": DataFrame, "test": DataFrame}``. Raises on unknown keys.
    """
    frame = read_manifest(manifest).select(list(ROW_COLUMNS)).to_pandas().set_index("key", drop=False)
    out = {}
    for name, wanted in keys.items():
        missing = [k for k in wanted if k not in frame.index]
        if missing:
            raise LabelledDataError(f"{len(missing)} keys are not in {manifest} (first: {missing[0]})")
        out[name] = frame.loc[list(wanted)].reset_index(drop=True)
    return out


class _TarFiles:
    """Open tar handles keyed by shard path, reopened after a fork (each DataLoader worker gets its own)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._pid = -1
        self._open: dict[str, BinaryIO] = {}

    def read(self, shard: str, offset: int, length: int) -> bytes:
        if self._pid != os.getpid():
            self._open, self._pid = {}, os.getpid()
        fh = self._open.get(shard)
        if fh is None:
            path = self.root / shard
            if not path.is_file():
                raise LabelledDataError(f"shard {path} is missing (is --shards, the shards root, right?)")
            fh = self._open[shard] = open(path, "rb")  # noqa: SIM115 - kept open for the dataset's lifetime
        fh.seek(offset)
        data = fh.read(length)
        if len(data) != length:
            raise LabelledDataError(f"{shard}: short read at offset {offset} ({len(data)} of {length} bytes)")
        return data

    def __getstate__(self) -> dict:
        return {"root": self.root, "_pid": -1, "_open": {}}  # file handles never cross process boundaries


class TrainAugment:
    """The pretraining augmentations (resize, random resized crop, flips) as a picklable transform."""

    def __init__(self, out_size: int, scale: tuple[float, float], resize: int) -> None:
        self.out_size, self.resize = out_size, resize
        self.scale = (float(scale[0]), float(scale[1]))

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return train_transform(img, rng, out_size=self.out_size, scale=self.scale, resize=self.resize)


class EvalAugment:
    """Validation/test/predict view: resize to ``resize``, centre crop ``out_size``, no flips."""

    def __init__(self, out_size: int, resize: int) -> None:
        self.out_size, self.resize = out_size, resize

    def __call__(self, img: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return eval_transform(img, out_size=self.out_size, resize=self.resize)


class LabelledImages(Dataset):
    """``rows[i]`` -> ``(uint8 tensor (1, S, S), class index)``; class index -1 for labels outside the map.

    The transform's randomness is seeded from ``(seed, epoch, i)``, so augmentations are reproducible and
    independent of worker count; call :meth:`set_epoch` before each epoch.
    """

    def __init__(
        self,
        rows: pd.DataFrame,
        shards_root: Path | str,
        transform: Transform,
        class_map: ClassMap | None = None,
        seed: int = 0,
    ) -> None:
        self.rows = rows.reset_index(drop=True)
        self.keys = self.rows["key"].tolist()
        labels = self.rows["label"].astype(str).tolist()
        if class_map is None:
            self.targets = np.full(len(labels), -1, dtype=np.int64)
        else:
            lookup = {n: i for i, n in enumerate(class_map.names)}
            self.targets = np.array([lookup.get(x, -1) for x in labels], dtype=np.int64)
        self._loc = list(
            zip(
                self.rows["shard"],
                self.rows["offset"],
                self.rows["length"],
                self.rows["image_format"],
                strict=True,
            )
        )
        self._files = _TarFiles(Path(shards_root))
        self.transform = transform
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (the main process sets it before iterating)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self._loc)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        shard, offset, length, fmt = self._loc[i]
        try:
            img = decode_gray(self._files.read(shard, int(offset), int(length)))
        except CorruptSample as exc:
            raise LabelledDataError(f"cannot decode the {fmt} image at byte {offset} of {shard}: {exc}") from exc
        img = self.transform(img, np.random.default_rng([self.seed, self.epoch, i]))
        return torch.from_numpy(np.ascontiguousarray(img))[None], int(self.targets[i])


def make_loader(
    dataset: LabelledImages, batch_size: int, shuffle: bool, num_workers: int = 0, seed: int = 0
) -> DataLoader:
    """A DataLoader that yields at least one batch for any non-empty dataset.

    ``drop_last`` is off and the batch is capped at the dataset size, so a 3-image 1 % training set gives one
    batch of 3 (a ``drop_last=True`` loader would give none and the optimiser would never step).
    """
    n = len(dataset)
    if n == 0:
        raise LabelledDataError("empty dataset: nothing to load")
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=max(1, min(batch_size, n)),
        shuffle=shuffle,
        drop_last=False,
        generator=gen,
        num_workers=num_workers,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )
