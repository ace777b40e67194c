"""Streaming loader over a shard folder: exact epochs, equal batches per rank, deterministic, resumable.

Design (why it looks like this):

* **Sample table.** At start, where each image member's bytes lie comes from the manifest's
  ``shard``/``offset``/``length`` columns (:func:`plankton_data.format.samples.sample_table`; a folder
  without a manifest falls back to reading its tar headers). Samples are then read with ``os.pread`` at
  those offsets: shards stay plain WebDataset tars, but ordering no longer depends on how the tars were
  written (ingest writes datasets class-sorted).
* **Epoch plan.** Epoch ``e`` is a permutation of all samples drawn from ``(seed, e)``, identical on every
  rank; rank ``r`` takes ``perm[r::world_size]``. Every rank gets the same number of batches,
  ``ceil(ceil(N / world_size) / batch_size)``; a rank whose share does not fill them has smaller last
  batches. So every sample is seen exactly once per epoch and no rank waits for another in DDP.
* **Position.** Batch ``j`` of epoch ``e`` on rank ``r`` is a pure function of ``(seed, e, r, j)``
  (samples and augmentation randomness alike), whichever worker builds it. The stream is one endless
  sequence of global batch numbers ``g = e * batches_per_epoch + j``; worker ``w`` of ``K`` builds
  ``g = start + w, start + w + K, ...`` and the DataLoader hands them out round-robin, i.e. in order. The
  loader state is just ``g`` of the next batch, so resuming is exact, and even the number of workers may
  change between runs.
* **Workers** read, decode (libjpeg-turbo via simplejpeg; OpenCV for PNG), augment (cv2) and stack whole
  batches, so the main process receives one ``(B, 1, S, S)`` uint8 tensor per batch. Normalisation
  happens on the device (:func:`plankton_train.data.augment.normalize`).
* **Corrupt samples** (unreadable bytes, undecodable image) are replaced in their batch by a copy of a good
  sample of the same batch, so shapes stay fixed; their keys travel with the batch and
  :class:`StreamLoader` counts and logs them.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.forkserver
import os
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from plankton_data.errors import SchemaError
from plankton_data.format.index import read_index
from plankton_data.format.samples import SampleTable, sample_table
from plankton_train.data.augment import eval_transform, train_transform
from plankton_train.data.decode import decode_gray
from plankton_train.errors import CorruptSample, StreamError

log = logging.getLogger(__name__)


def _max_open() -> int:
    """Open shard files each worker keeps (an LRU): a quarter of the descriptor limit, 64 to 1024.

    Batches draw samples from all over the set and read them in shard order, so an LRU smaller than the
    number of tars reopens almost every tar for every batch: at 443 tars, 64 cost a third of an epoch's time
    (``benchmarks/bench_scale.py``). The rest of the limit is left to the DataLoader (tensors it passes between
    processes travel as file descriptors).
    """
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 64
    return 1024 if soft == resource.RLIM_INFINITY else max(64, min(1024, soft // 4))


_MAX_OPEN = _max_open()  # open shard file descriptors per worker (LRU)
_AUG_TAG = 0x61756721  # separates the augmentation seed stream from the permutation stream


def batches_per_epoch(num_samples: int, batch_size: int, world_size: int) -> int:
    """Batches every rank yields per epoch: ``ceil(ceil(N / world) / batch)``.

    Raises :class:`StreamError` when some rank would get fewer samples than batches (tiny sets only).
    """
    per_rank_max = -(-num_samples // world_size)
    count = -(-per_rank_max // batch_size)
    if num_samples // world_size < count:
        raise StreamError(
            f"{num_samples} samples cannot fill {count} batches on each of {world_size} ranks; "
            "use fewer ranks or a larger batch"
        )
    return count


def rank_batches(
    num_samples: int, batch_size: int, world_size: int, rank: int, seed: int, epoch: int, shuffle: bool = True
) -> list[np.ndarray]:
    """The sample ids of every batch of ``rank`` in ``epoch``: a list of sorted int64 arrays.

    All batches hold ``batch_size`` samples except possibly the last ones of the epoch (each >= 1).
    Ids within a batch are sorted so that reads go through each shard in file order.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(num_samples) if shuffle else np.arange(num_samples)
    mine = order[rank::world_size]
    count = batches_per_epoch(num_samples, batch_size, world_size)
    sizes = np.full(count, batch_size, dtype=np.int64)
    excess = count * batch_size - len(mine)
    for j in range(count - 1, -1, -1):  # shrink the last batches, never below one sample
        cut = min(excess, int(sizes[j]) - 1)
        sizes[j] -= cut
        excess -= cut
        if excess == 0:
            break
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [np.sort(mine[bounds[j] : bounds[j + 1]]) for j in range(count)]


class _Reader:
    """``pread`` access to sample bytes with a small LRU of open shard files (one per worker)."""

    def __init__(self, folder: Path, table: SampleTable) -> None:
        self.folder, self.table = folder, table
        self._fds: OrderedDict[int, int] = OrderedDict()

    def read(self, sample: int) -> bytes:
        shard = int(self.table.shard[sample])
        fd = self._fds.pop(shard, None)
        if fd is None:
            fd = os.open(self.folder / self.table.shard_names[shard], os.O_RDONLY)
            if len(self._fds) >= _MAX_OPEN:
                os.close(self._fds.popitem(last=False)[1])
        self._fds[shard] = fd
        n = int(self.table.length[sample])
        data = os.pread(fd, n, int(self.table.offset[sample]))
        if len(data) != n:
            raise CorruptSample(f"short read ({len(data)} of {n} bytes)")
        return data

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class ShardStream(IterableDataset):
    """Batches of augmented uint8 images from a shard folder (see the module docstring).

    Each item is a dict: ``images`` uint8 ``(B, 1, S, S)``, ``index`` int64 ``(B,)`` sample ids (positions
    in the sample table), ``position`` (global batch number on this rank), ``epoch``, and ``corrupt``
    (keys of samples that were replaced). Use with ``DataLoader(batch_size=None)``, e.g. via
    :class:`StreamLoader`.
    """

    def __init__(
        self,
        folder: Path | str,
        batch_size: int,
        *,
        out_size: int = 224,
        train: bool = True,
        scale: tuple[float, float] = (0.4, 1.0),
        resize: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        epochs: int | None = None,
        shuffle: bool = True,
    ) -> None:
        """
        Args:
            folder: a shard folder with ``index.json``.
            batch_size: samples per batch on this rank (the last batches of an epoch may be smaller).
            out_size: side of the output images in pixels.
            train: paper augmentation (random resized crop + flips) if True, else resize + centre crop.
            scale: crop area range of the random resized crop.
            resize: the shorter side is resized to this first (skipped when already that size); default
                ``out_size * 256 / 224``, i.e. the paper's 256 for 224 crops.
            seed: with the epoch, fixes the sample order and the augmentation randomness.
            rank, world_size: this process's place among the data-parallel ranks.
            epochs: stop after this many epochs; ``None`` streams forever (training counts steps).
            shuffle: ``False`` keeps the index order (evaluation, figures).
        """
        super().__init__()
        self.folder = Path(folder)
        self.index = read_index(self.folder)
        if batch_size < 1 or not 0 <= rank < world_size:
            raise StreamError(f"bad loader geometry: batch {batch_size}, rank {rank} of {world_size}")
        try:
            self.table = sample_table(self.folder, self.index)
        except SchemaError as exc:
            raise StreamError(str(exc)) from exc
        self.batch_size, self.out_size, self.train = batch_size, out_size, train
        self.scale, self.seed = scale, seed
        self.resize = resize if resize is not None else round(out_size * 256 / 224)
        self.rank, self.world_size, self.epochs, self.shuffle = rank, world_size, epochs, shuffle
        self.batches_per_epoch = batches_per_epoch(len(self.table), batch_size, world_size)
        self.start = 0  # global batch number the next iteration begins with

    @property
    def num_samples(self) -> int:
        """Samples per epoch over all ranks."""
        return len(self.table)

    def fingerprint(self) -> dict:
        """What must not change for a saved position to mean the same batches."""
        return {
            "num_samples": self.num_samples,
            "shards": list(self.table.shard_names),
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
        }

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        end = None if self.epochs is None else self.epochs * self.batches_per_epoch
        reader, plan, plan_epoch = _Reader(self.folder, self.table), [], -1
        try:
            g = self.start + worker
            while end is None or g < end:
                epoch, j = divmod(g, self.batches_per_epoch)
                if epoch != plan_epoch:
                    plan, plan_epoch = self._plan(epoch), epoch
                yield self._batch(reader, plan[j], epoch, j, g)
                g += workers
        finally:
            reader.close()

    def _plan(self, epoch: int) -> list[np.ndarray]:
        return rank_batches(
            self.num_samples, self.batch_size, self.world_size, self.rank, self.seed, epoch, self.shuffle
        )

    def _batch(self, reader: _Reader, ids: np.ndarray, epoch: int, j: int, g: int) -> dict:
        rng = np.random.default_rng([self.seed, epoch, self.rank, j, _AUG_TAG])
        images = np.empty((len(ids), self.out_size, self.out_size), np.uint8)
        good, corrupt = [], []
        for i, sample in enumerate(ids):
            try:
                img = decode_gray(reader.read(int(sample)))
            except (CorruptSample, OSError) as exc:
                corrupt.append(f"{self.table.keys[sample].decode()} ({exc})")
                continue
            if self.train:
                images[i] = train_transform(img, rng, self.out_size, self.scale, self.resize)
            else:
                images[i] = eval_transform(img, self.out_size, self.resize)
            good.append(i)
        if corrupt:
            bad = np.setdiff1d(np.arange(len(ids)), good)
            images[bad] = images[good[0]] if good else 0
        return {
            "images": torch.from_numpy(images).unsqueeze(1),
            "index": torch.from_numpy(ids.astype(np.int64)),
            "position": g,
            "epoch": epoch,
            "corrupt": corrupt,
        }


def _worker_init(_: int) -> None:
    # One OpenCV thread per worker: the parallelism is the workers themselves (torch's DataLoader already
    # sets one torch thread). Safe only in a clean child: see _worker_context.
    cv2.setNumThreads(1)


def _worker_context() -> multiprocessing.context.BaseContext:
    """Workers start from a forkserver that has imported this module but never run OpenCV or CUDA.

    Plain fork copies the parent's OpenCV thread pool and locks mid-state: ``cv2.setNumThreads`` in such a
    child deadlocks (seen in practice), and a parent holding CUDA, NCCL or TensorBoard threads is no
    safer. Forking from the preloaded server keeps worker start-up fast (no torch re-import).
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


class StreamLoader:
    """A multi-worker ``DataLoader`` over a :class:`ShardStream` that knows its position.

    Iterating yields the stream's batches in order and counts them; :meth:`state_dict` taken between
    batches restores, via :meth:`load_state_dict`, to exactly the next batch. Corrupt samples are counted
    (``corrupt_count``) and logged.
    """

    def __init__(
        self, stream: ShardStream, num_workers: int = 8, pin_memory: bool = False, prefetch_factor: int = 4
    ) -> None:
        self.stream, self.num_workers = stream, num_workers
        self.pin_memory, self.prefetch_factor = pin_memory, prefetch_factor
        self.position = 0  # global batch number of the next batch
        self.corrupt_count = 0
        if num_workers:  # start the workers' forkserver now: its imports (torch: seconds) overlap the caller's
            _worker_context()  # set-up, e.g. building the model, instead of delaying the first batch
            multiprocessing.forkserver.ensure_running()

    @property
    def epoch(self) -> int:
        """Epoch of the next batch."""
        return self.position // self.stream.batches_per_epoch

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return self.stream.batches_per_epoch

    def __iter__(self) -> Iterator[dict]:
        self.stream.start = self.position
        loader = DataLoader(
            self.stream,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            worker_init_fn=_worker_init if self.num_workers else None,
            multiprocessing_context=_worker_context() if self.num_workers else None,
            prefetch_factor=self.prefetch_factor if self.num_workers else None,
        )
        for batch in loader:
            if batch["position"] != self.position:  # the round-robin contract, checked not assumed
                raise StreamError(f"loader out of order: got batch {batch['position']}, want {self.position}")
            self.position += 1
            if batch["corrupt"]:
                self._report(batch["corrupt"])
            yield batch

    def _report(self, corrupt: list[str]) -> None:
        for item in corrupt:
            self.corrupt_count += 1
            if self.corrupt_count <= 20 or self.corrupt_count % 1000 == 0:
                log.warning("corrupt sample #%d skipped: %s", self.corrupt_count, item)

    def state_dict(self) -> dict:
        """Position plus the stream fingerprint it is valid for."""
        return {"position": self.position, "corrupt_count": self.corrupt_count, **self.stream.fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position; refuses a state saved for a different stream geometry."""
        mine = self.stream.fingerprint()
        diff = [k for k in mine if state.get(k) != mine[k]]
        if diff:
            raise StreamError(
                f"saved loader state does not match this shard set / geometry ({', '.join(diff)} differ); "
                "exact resume needs the same shards, seed, per-rank batch and world size"
            )
        self.position, self.corrupt_count = int(state["position"]), int(state["corrupt_count"])
