"""Loader throughput: our shard stream vs. torchvision ImageFolder + PIL on the same images, in one run.

Both produce augmented 224 x 224 training batches with the paper's recipe (resize 256, random resized crop
scale (0.4, 1.0), horizontal and vertical flips, normalisation with the shard set's mean/std) from the
same JPEG bytes: the anchor reads the images of the shard set unpacked to a folder (``<class>/<key>.jpg``),
the way a user without this toolkit would. Same batch size, same number of workers. Ours hands uint8
batches over and normalises in the consumer (on the GPU in training; here on the CPU, counted in its time).

Timing: each loader is started, warmed up for a few batches, then timed in windows of batches; rounds
alternate ours/anchor so that load from other processes hits both alike. Reports the median images/s of
each and the ratio (issue 4 bar: >= 3x the anchor per worker, i.e. at the same worker count).

    python benchmarks/bench_loader.py --shard-set shards/kaggle --workers 2
    python benchmarks/bench_loader.py --raw ../shared/realdata/kaggle/train.zip   # ingests first
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

DEFAULT_RAW = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "kaggle" / "train.zip"


def build_shards(raw: Path, work: Path, workers: int) -> Path:
    """``plankton-data ingest kaggle`` into ``work`` (reused when already there)."""
    from plankton_data.format.index import INDEX_NAME
    from plankton_data.ingest import ingest

    folder = work / "shards" / "kaggle"
    if not (folder / INDEX_NAME).is_file():
        print(f"ingesting {raw} into {folder} ...", flush=True)
        ingest("kaggle", raw, shards_root=work / "shards", manifests_root=work / "manifests", workers=workers)
    return folder


def unpack(folder: Path, dest: Path) -> int:
    """Write every image of the shard folder as ``dest/<label>/<key>.jpg`` (same bytes); returns count."""
    import tarfile

    import torch

    from plankton_data.format.index import read_index

    # The consumer only normalises (a GPU's job in training); one thread avoids OpenMP thrashing against
    # the loader workers on a small machine. Workers of both loaders run one torch thread each anyway.
    torch.set_num_threads(1)
    index = read_index(folder)
    count = 0
    for shard in index.shards:
        with tarfile.open(folder / shard.name) as tar:
            members = {m.name: m for m in tar.getmembers()}
            for name, member in members.items():
                key, _, ext = name.partition(".")
                if ext != index.image_format:
                    continue
                meta = json.loads(tar.extractfile(members[f"{key}.json"]).read())
                label = meta.get("label") or "unlabelled"
                (dest / label).mkdir(parents=True, exist_ok=True)
                (dest / label / f"{key}.{ext}").write_bytes(tar.extractfile(member).read())
                count += 1
    return count


def time_windows(batches: Iterable, consume: Callable, warmup: int, windows: int, size: int) -> list[float]:
    """Images/s of ``windows`` consecutive windows of ``size`` batches, after ``warmup`` batches."""
    it = iter(batches)
    for _ in range(warmup):
        consume(next(it))
    rates = []
    for _ in range(windows):
        t0, images = time.perf_counter(), 0
        for _ in range(size):
            images += consume(next(it))
        rates.append(images / (time.perf_counter() - t0))
    return rates


def ours(folder: Path, batch: int, workers: int, seed: int):
    """Our stream + loader; the consumer normalises the uint8 batch (what the GPU does in training)."""
    from plankton_train.data.augment import normalize
    from plankton_train.data.stream import ShardStream, StreamLoader

    stream = ShardStream(folder, batch, out_size=224, seed=seed)
    mean, std = stream.index.mean, stream.index.std

    def consume(b: dict) -> int:
        return len(normalize(b["images"], mean, std))

    return StreamLoader(stream, num_workers=workers), consume


def anchor(images: Path, mean: float, std: float, batch: int, workers: int):
    """torchvision ImageFolder + PIL transforms with the same augmentation, shuffled, same workers."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    BICUBIC = transforms.InterpolationMode.BICUBIC

    tf = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.Grayscale(num_output_channels=1),
            transforms.RandomResizedCrop(224, scale=(0.4, 1.0), interpolation=BICUBIC),  # as ours (MAE)
            transforms.RandomHorizontalFlip(),
            transforms.RandomVerticalFlip(),
            transforms.ToTensor(),
            transforms.Normalize([mean], [std]),
        ]
    )
    loader = DataLoader(
        datasets.ImageFolder(str(images), transform=tf),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
    )

    def forever():
        while True:
            yield from loader

    return forever(), lambda b: len(b[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--shard-set", dest="shards", type=Path, help="existing shard folder (default: ingest --raw into --work)"
    )
    ap.add_argument("--raw", type=Path, default=DEFAULT_RAW, help="Kaggle NDSB train.zip")
    ap.add_argument("--work", type=Path, default=Path("runs/bench_loader"), help="where to ingest --raw")
    ap.add_argument("--workers", type=int, default=2, help="loader workers for both")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2, help="alternating ours/anchor rounds")
    ap.add_argument("--windows", type=int, default=4, help="timed windows per round")
    ap.add_argument("--window", type=int, default=10, help="batches per window")
    args = ap.parse_args()

    folder = args.shards
    if folder is None:
        if not args.raw.is_file():
            print(f"skipped: no --shard-set given and no Kaggle train.zip at {args.raw}")
            return 0
        folder = build_shards(args.raw, args.work, max(1, args.workers))
    if not (folder / "index.json").is_file():
        print(f"skipped: {folder} is not a shard folder (no index.json)")
        return 0

    import torch

    from plankton_data.format.index import read_index

    # The consumer only normalises (a GPU's job in training); one thread avoids OpenMP thrashing against
    # the loader workers on a small machine. Workers of both loaders run one torch thread each anyway.
    torch.set_num_threads(1)
    index = read_index(folder)
    results: dict[str, list[float]] = {"ours": [], "anchor": []}
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        n = unpack(folder, Path(tmp))
        print(f"{n} images from {folder} ({len(index.shards)} shards); unpacked for the anchor", flush=True)
        for r in range(args.rounds):
            for name in ("ours", "anchor"):
                if name == "ours":
                    batches, consume = ours(folder, args.batch, args.workers, seed=r)
                else:
                    batches, consume = anchor(Path(tmp), index.mean, index.std, args.batch, args.workers)
                rates = time_windows(batches, consume, 2 * max(1, args.workers), args.windows, args.window)
                del batches  # shuts the workers down
                results[name] += rates
                print(f"round {r} {name:6s} " + " ".join(f"{x:7.0f}" for x in rates) + " img/s", flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    summary = {
        "shards": str(folder),
        "images": n,
        "workers": args.workers,
        "batch": args.batch,
        "ours_img_s": round(med["ours"], 1),
        "anchor_img_s": round(med["anchor"], 1),
        "ratio": round(med["ours"] / med["anchor"], 2),
        "ours_per_worker": round(med["ours"] / max(1, args.workers), 1),
        "anchor_per_worker": round(med["anchor"] / max(1, args.workers), 1),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
