"""The GPU check (issue 14): MAE pretraining and fine-tuning speed on one GPU, as one table.

Rows (GPU): MAE ViT-L/16 and ViT-B/16 pretraining in bf16, eager and ``torch.compile``-d (inductor), with the real
streaming loader; ViT-L/16 fine-tuning in bf16, eager and compiled, with the real labelled loader. Columns:
images/s, GFLOP per image, achieved TFLOP/s, MFU, data-wait share, peak GPU memory, wall seconds of the row.

* Pretraining: :func:`plankton_train.pretrain.run_pretrain` for ``windows`` metric windows of ``window_steps``
  optimiser steps (batch 256 per micro-step, accumulated to ``--eff-batch``); the first window (worker start,
  kernel selection, compilation) is discarded and the medians of the others reported. Data wait = time the loop
  blocked on the loader / window time (the loop's own ``data_wait`` metric).
* Fine-tuning: :func:`plankton_train.finetune.finetune` (random init, the paper's recipe otherwise) for
  ``--ft-epochs`` epochs; images/s is the median over epochs after the first of the history's
  ``train_images_per_s`` (training images / training time; validation not counted).
* FLOPs per image: ``torch.utils.flop_counter.FlopCounterMode`` on one forward + backward of the same model
  under the same autocast (matmuls, convolutions, attention; elementwise work is not counted, as in the usual
  MFU definition). The MAE at 75 % masking: the encoder sees 49 of 196 patches, the 8-block decoder all 197
  tokens. Counted with this script: MAE ViT-L/16 120.8 GFLOP, MAE ViT-B/16 55.6 GFLOP, ViT-L/16 classifier
  (fine-tuning, 224 px) 357.2 GFLOP per image (fp32 and bf16 alike). MFU = FLOPs per image x images/s / the
  GPU's dense bf16 peak (:data:`PEAKS`, vendor datasheets; ``--peak-tflops`` for another GPU).

Goal (issue 14), on one H100/H200: MAE ViT-L/16 >= 2,000 images/s (>= 25 % MFU), data wait < 5 % with <= 14
loader workers.

``--smoke`` (what CI runs on a CPU, well under a minute warm): the same code paths at toy size: ``mae_test``
pretraining in fp32 and bf16 (``torch.autocast("cpu", dtype=torch.bfloat16)``), eager and compiled, and a
tiny-ViT fine-tune pass in fp32 eager and bf16 compiled. Compiled smoke rows use the ``aot_eager`` backend
(dynamo capture, graph breaks, AOT autograd; inductor's cold C++ compilation alone takes a minute on 2 cores,
``tests/train/test_precision.py`` runs inductor itself). CPU rows have no MFU or GPU memory (``-``).

The data is generated (in ``--work``, reused when there): the Kaggle and ZooLake sample fixtures
(``plankton_data.fixtures``; about 3,000 images, 76 in smoke mode) ingested at 256 px (40 px in smoke mode), one
shard set of both for pretraining, the Kaggle manifest with 5-fold splits for fine-tuning. ``--shard-set``
pretrains on a real shard set instead (fine-tuning keeps the generated Kaggle cell).

    bash benchmarks/gpu_check.sh              # on a GPU: the table, under 8 minutes on one H100/H200
    bash benchmarks/gpu_check.sh --smoke      # on a CPU: the same code paths
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

#: Dense bf16 peak FLOP/s by device-name substring (vendor datasheets, no sparsity), most specific first.
PEAKS = (("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12))

#: The fine-tune row's tiny ViT in smoke mode (timm kwargs) and its input side.
SMOKE_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)

COLUMNS = ("row", "images/s", "GFLOP/img", "TFLOP/s", "MFU", "data wait", "peak mem GB", "seconds")


@dataclass
class Row:
    """One line of the table."""

    name: str
    images_per_s: float
    gflop_per_image: float
    data_wait: float | None = None  # share of loop time blocked on the loader (pretraining rows)
    mem_gb: float | None = None  # peak GPU memory allocated (GPU rows)
    seconds: float = 0.0  # wall time of the row, compilation included
    peak: float | None = None  # dense bf16 peak FLOP/s of the device
    extra: dict = field(default_factory=dict)

    @property
    def tflops(self) -> float:
        return self.gflop_per_image * self.images_per_s / 1e3

    @property
    def mfu(self) -> float | None:
        return self.tflops * 1e12 / self.peak if self.peak else None

    def cells(self) -> list[str]:
        def fmt(value: float | None, spec: str) -> str:
            return "-" if value is None else format(value, spec)

        return [
            self.name,
            fmt(self.images_per_s, ",.1f"),
            fmt(self.gflop_per_image, ".4g"),
            fmt(self.tflops, ".4g"),
            "-" if self.mfu is None else f"{100 * self.mfu:.1f}%",
            "-" if self.data_wait is None else f"{100 * self.data_wait:.1f}%",
            fmt(self.mem_gb, ".1f"),
            f"{self.seconds:.0f}",
        ]

    def as_dict(self) -> dict:
        return {
            "row": self.name,
            "images_per_s": self.images_per_s,
            "gflop_per_image": self.gflop_per_image,
            "tflops": self.tflops,
            "mfu": self.mfu,
            "data_wait": self.data_wait,
            "peak_mem_gb": self.mem_gb,
            "seconds": self.seconds,
            **self.extra,
        }


def table(rows: list[Row]) -> str:
    """A Markdown table of ``rows`` (the one thing the check prints on stdout besides its header line)."""
    cells = [list(COLUMNS)] + [r.cells() for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |" for line in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def peak_flops(name: str, override: float | None) -> float | None:
    """Dense bf16 peak FLOP/s of the device named ``name`` (``override`` in TFLOP/s wins); ``None`` if unknown."""
    if override:
        return override * 1e12
    return next((peak for key, peak in PEAKS if key in name), None)


def count_flops(model, images, precision: str, loss_of=None) -> float:
    """Forward + backward FLOPs per image of ``model`` on ``images`` under ``precision``'s autocast."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from plankton_train.engine.device import autocast

    counter = FlopCounterMode(display=False)
    with counter:
        with autocast(images.device, precision):
            out = model(images)
        (out if loss_of is None else loss_of(out)).float().sum().backward()
    model.zero_grad(set_to_none=True)
    if images.device.type == "cuda":
        torch.cuda.synchronize()
    return counter.get_total_flops() / images.shape[0]


def mae_flops(model_name: str, device, precision: str, batch: int = 2) -> float:
    """Forward + backward FLOPs of one image through the MAE (75 % masked), counted by torch."""
    import torch

    from plankton_train.models.mae import build_mae

    model = build_mae(model_name).to(device)
    side = model.cfg.img_size
    return count_flops(model, torch.randn(batch, 1, side, side, device=device), precision)


def classifier_flops(spec, num_classes: int, side: int, device, precision: str, batch: int = 2) -> float:
    """Forward + backward FLOPs of one image through the fine-tuning classifier."""
    import torch

    from plankton_train.models.classifier import build_classifier

    model = build_classifier(spec, num_classes).to(device)
    return count_flops(model, torch.randn(batch, 1, side, side, device=device), precision)


@dataclass(frozen=True)
class Data:
    """Where the check's data is: a pretraining shard folder and a fine-tuning cell."""

    shard_set: Path
    manifest: Path
    shards_root: Path
    splits: Path
    group: str


def make_data(work: Path, *, smoke: bool, workers: int) -> Data:
    """Generated sample data: Kaggle + ZooLake fixtures, ingested, one shard set, Kaggle splits (see the module)."""
    from plankton_data.fixtures import write_fixture
    from plankton_data.format.index import INDEX_NAME
    from plankton_data.ingest import ingest
    from plankton_data.ingest.preprocess import PreprocessConfig
    from plankton_data.shardset import build_shard_set
    from plankton_train.protocol.splits import SplitConfig, splits_from_manifest, write_splits

    shards, manifests = work / "shards", work / "manifests"
    # smoke: 56 + 20 images at 40 px; GPU: 2,800 + 200 at 256 px (fine-tuning: about 1,900 training images)
    scales, size, per_shard = (
        ({"kaggle": 2, "zoolake": 2}, 40, 16) if smoke else ({"kaggle": 100, "zoolake": 20}, 256, 250)
    )
    for dataset, scale in scales.items():
        if not (shards / dataset / INDEX_NAME).is_file():
            raw = write_fixture(dataset, work / "raw", scale=scale).raw
            ingest(
                dataset,
                raw,
                shards_root=shards,
                manifests_root=manifests,
                config=PreprocessConfig(size=size),
                workers=workers,
            )
    if not (shards / "check" / INDEX_NAME).is_file():
        build_shard_set(
            "check", shards_root=shards, manifests_root=manifests, samples_per_shard=per_shard, all_splits=True
        )
    splits = work / "splits" / "kaggle.parquet"
    if not splits.is_file():
        cfg = SplitConfig(seed=0)
        manifest = manifests / "kaggle.parquet"
        write_splits(splits_from_manifest(manifest, cfg=cfg, group_by=("dataset",)), splits, cfg=cfg)
    return Data(shards / "check", manifests / "kaggle.parquet", shards, splits, "kaggle")


def pretrain_row(
    name: str,
    *,
    shard_set: Path,
    model: str,
    precision: str,
    compile_backend: str | None,
    batch: int,
    eff_batch: int,
    windows: int,
    window_steps: int,
    workers: int,
    flops: float,
    peak: float | None,
) -> Row:
    """Pretrain ``windows`` x ``window_steps`` optimiser steps; medians of all windows but the first."""
    from plankton_train.pretrain import PretrainConfig, run_pretrain

    records: list[dict] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        cfg = PretrainConfig(
            shards=str(shard_set),
            out=tmp,
            model=model,
            batch_size=batch,
            eff_batch=eff_batch,
            steps=windows * window_steps,
            warmup_steps=window_steps,
            workers=workers,
            log_every=window_steps,
            ckpt_every=0,
            precision=precision,
            compile=compile_backend is not None,
            compile_backend=compile_backend or "inductor",
        )
        result = run_pretrain(cfg, on_event=lambda r: records.append(r) if r["event"] == "log" else None)
        loss = result.last_loss
    timed = records[1:] or records
    gpu = records[0]["gpu_mem_gb"] > 0 if records else False
    return Row(
        name,
        images_per_s=statistics.median(r["images_per_s"] for r in timed),
        gflop_per_image=flops / 1e9,
        data_wait=statistics.median(r["data_wait"] for r in timed),
        mem_gb=max(r["gpu_mem_gb"] for r in records) if gpu else None,
        seconds=time.perf_counter() - start,
        peak=peak,
        extra={"loss": loss, "windows_timed": len(timed)},
    )


def finetune_row(
    name: str,
    *,
    data: Data,
    spec,
    side: int,
    precision: str,
    compile_backend: str | None,
    batch: int,
    epochs: int,
    workers: int,
    device,
    flops: float,
    peak: float | None,
) -> Row:
    """Fine-tune ``epochs`` epochs; median ``train_images_per_s`` of the epochs after the first."""
    import pandas as pd
    import torch

    from plankton_train.finetune import Cell, Recipe, finetune

    recipe = Recipe(
        epochs=epochs,
        warmup_epochs=1,
        batch_size=batch,
        img_size=side,
        resize=round(side * 256 / 224),
        num_workers=workers,
        device=str(device),
        precision=precision,
        compile=compile_backend is not None,
        compile_backend=compile_backend or "inductor",
    )
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_ft_") as tmp:
        cell = Cell(data.manifest, data.shards_root, data.splits, data.group)
        result = finetune(cell, encoder=spec, recipe=recipe, out=tmp)
        speeds = pd.read_csv(Path(tmp) / "history.csv")["train_images_per_s"].tolist()
    timed = speeds[1:] or speeds
    return Row(
        name,
        images_per_s=statistics.median(timed),
        gflop_per_image=flops / 1e9,
        mem_gb=torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        seconds=time.perf_counter() - start,
        peak=peak,
        extra={"n_train": result.n_train, "accuracy": result.accuracy},
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="toy sizes on whatever device there is (CI, CPU)")
    ap.add_argument("--work", type=Path, help="folder for generated data (default: a temporary folder)")
    ap.add_argument("--shard-set", type=Path, help="pretraining shard folder (default: generated fixtures)")
    ap.add_argument("--workers", type=int, default=14, help="loader processes (pretraining and fine-tuning)")
    ap.add_argument("--batch", type=int, default=256, help="pretraining images per micro-step")
    ap.add_argument("--eff-batch", type=int, default=1024, help="pretraining images per optimiser step")
    ap.add_argument("--windows", type=int, default=5, help="metric windows per pretraining row (first discarded)")
    ap.add_argument("--window-steps", type=int, default=3, help="optimiser steps per window")
    ap.add_argument("--ft-batch", type=int, default=128, help="fine-tuning batch")
    ap.add_argument("--ft-epochs", type=int, default=3, help="fine-tuning epochs (the first is discarded)")
    ap.add_argument("--no-compile", action="store_true", help="eager rows only (no torch.compile)")
    ap.add_argument("--peak-tflops", type=float, help="dense bf16 peak of a GPU not in the table")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("no GPU visible: running --smoke instead (CPU figures, not GPU figures)", flush=True)
        args.smoke = True
    device = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    peak = peak_flops(name, args.peak_tflops) if cuda else None
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        torch.set_num_threads(min(2, os.cpu_count() or 1))

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_data_") as tmp:
        work = args.work or Path(tmp)
        data = make_data(work, smoke=args.smoke, workers=max(1, min(args.workers, os.cpu_count() or 1)))
        shard_set = args.shard_set or data.shard_set
        print(
            f"device: {name}; shard set {shard_set}; data ready in {time.perf_counter() - t0:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        rows = run_rows(args, data, shard_set, device, peak)
    print(f"gpu_check on {name}{' (smoke)' if args.smoke else ''}, torch {torch.__version__}")
    print(table(rows))
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "smoke": args.smoke, "rows": [r.as_dict() for r in rows]}))
    bad = [r.name for r in rows if not math.isfinite(r.images_per_s) or r.images_per_s <= 0]
    if bad:
        print(f"error: no throughput measured for {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


def run_rows(args: argparse.Namespace, data: Data, shard_set: Path, device, peak: float | None) -> list[Row]:
    """Every row of the table, in order (see the module docstring)."""
    from plankton_train.models.classifier import EncoderSpec

    rows: list[Row] = []
    if args.smoke:
        backend = "aot_eager"
        pre = [("mae_test", p, c) for c in (None, backend) for p in ("fp32", "bf16")]
        geometry = dict(batch=8, eff_batch=16, windows=3, window_steps=1, workers=1)
        spec = EncoderSpec(arch="vit_tiny_patch16_224", init="random", model_kwargs=SMOKE_VIT)
        side, ft = SMOKE_VIT["img_size"], [("fp32", None), ("bf16", backend)]
        ft_geometry = dict(batch=8, epochs=2, workers=0)
    else:
        backend = "inductor"
        compiles = (None,) if args.no_compile else (None, backend)
        pre = [(m, "bf16", c) for m in ("vit_large_patch16_224", "vit_base_patch16_224") for c in compiles]
        geometry = dict(
            batch=args.batch,
            eff_batch=args.eff_batch,
            windows=args.windows,
            window_steps=args.window_steps,
            workers=args.workers,
        )
        spec = EncoderSpec(arch="vit_large_patch16_224", init="random")
        side, ft = 224, [("bf16", c) for c in compiles]
        ft_geometry = dict(batch=args.ft_batch, epochs=args.ft_epochs, workers=args.workers)
    flops: dict[tuple[str, str], float] = {}
    for model, precision, compiled in pre:
        if (model, precision) not in flops:
            flops[model, precision] = mae_flops(model, device, precision)
        label = f"pretrain {model} {precision} {'compiled' if compiled else 'eager'}"
        print(f"{label} ...", file=sys.stderr, flush=True)
        rows.append(
            pretrain_row(
                label,
                shard_set=shard_set,
                model=model,
                precision=precision,
                compile_backend=compiled,
                flops=flops[model, precision],
                peak=peak,
                **geometry,
            )
        )
        _release(device)
    classes = _classes(data)
    for precision, compiled in ft:
        label = f"finetune {spec.arch} {precision} {'compiled' if compiled else 'eager'}"
        print(f"{label} ...", file=sys.stderr, flush=True)
        rows.append(
            finetune_row(
                label,
                data=data,
                spec=spec,
                side=side,
                precision=precision,
                compile_backend=compiled,
                device=device,
                flops=classifier_flops(spec, classes, side, device, precision),
                peak=peak,
                **ft_geometry,
            )
        )
        _release(device)
    return rows


def _classes(data: Data) -> int:
    """Number of classes of the fine-tuning group (the classifier's output width for the FLOP count)."""
    from plankton_data.format.manifest import read_manifest

    labels = read_manifest(data.manifest).column("label").to_pylist()
    return len({x for x in labels if x})


def _release(device) -> None:
    """Free the previous row's GPU memory so that each row's peak is its own."""
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


if __name__ == "__main__":
    sys.exit(main())
