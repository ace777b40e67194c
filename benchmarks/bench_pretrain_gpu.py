"""MAE pretraining throughput on one GPU: images/s, model FLOP utilisation (MFU) and data-wait share.

Runs the real training loop (:func:`plankton_train.pretrain.run_pretrain`: stream loader, bf16 autocast,
fused AdamW, gradient accumulation to the paper's effective batch 4096) from a shard folder for a few
metric windows, discards the first (worker start-up, kernel selection) and reports medians of the rest.
FLOPs per image come from ``torch.utils.flop_counter`` on one forward+backward of the same model; MFU is
achieved FLOP/s over the GPU's dense bf16 peak. Issue 4 bar: >= 2,000 images/s on one H100, data-wait < 5 %.

    python benchmarks/bench_pretrain_gpu.py --shard-set runs/bench_loader/shards/kaggle --workers 14

Without a GPU it says so and runs a tiny CPU smoke test of the same path (exit status 0).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

#: Dense bf16 peak FLOP/s by device-name substring (vendor datasheets), most specific first.
PEAKS = (("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12))


def flops_per_image(model_name: str, device, batch: int = 8) -> float:
    """Forward + backward FLOPs of one image through the MAE (75 % masked), counted by torch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from plankton_train.models.mae import build_mae

    model = build_mae(model_name).to(device)
    images = torch.randn(batch, 1, model.cfg.img_size, model.cfg.img_size, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        model(images).backward()
    return counter.get_total_flops() / batch


def peak_flops(name: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    return next((peak for key, peak in PEAKS if key in name), None)


def run(args: argparse.Namespace, model: str, batch: int, eff_batch: int, steps: int, log_every: int) -> dict:
    """Train ``steps`` optimiser steps into a temporary run folder; medians of all but the first window."""
    from plankton_train.pretrain import PretrainConfig, run_pretrain

    records: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_pretrain_") as tmp:
        cfg = PretrainConfig(
            shards=str(args.shards),
            out=tmp,
            model=model,
            batch_size=batch,
            eff_batch=eff_batch,
            steps=steps,
            warmup_steps=steps // 4,
            workers=args.workers,
            log_every=log_every,
            ckpt_every=0,
        )
        run_pretrain(cfg, on_event=lambda r: records.append(r) if r["event"] == "log" else None)
    timed = records[1:] or records
    return {key: statistics.median(r[key] for r in timed) for key in ("images_per_s", "data_wait", "gpu_mem_gb")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shard-set", dest="shards", type=Path, required=True, help="shard folder with index.json")
    ap.add_argument("--model", default="vit_large_patch16_224")
    ap.add_argument("--batch", type=int, default=256, help="images per micro-step")
    ap.add_argument("--eff-batch", type=int, default=4096, help="images per optimiser step")
    ap.add_argument("--workers", type=int, default=14, help="loader processes")
    ap.add_argument("--windows", type=int, default=4, help="metric windows (the first is discarded)")
    ap.add_argument("--window-steps", type=int, default=3, help="optimiser steps per window")
    ap.add_argument("--peak-tflops", type=float, help="dense bf16 peak if the GPU is not in the table")
    args = ap.parse_args()
    if not (args.shards / "index.json").is_file():
        print(f"skipped: {args.shards} is not a shard folder (no index.json)")
        return 0

    import torch

    if not torch.cuda.is_available():
        print("no GPU: running a tiny CPU smoke test of the same path instead (figures are not GPU figures)")
        figures = run(args, "mae_test", 8, 16, 4, 1)
        print(json.dumps({"device": "cpu", "model": "mae_test", **figures}))
        return 0

    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    torch.backends.cuda.matmul.allow_tf32 = True
    per_image = flops_per_image(args.model, device)
    torch.cuda.empty_cache()
    steps = args.windows * args.window_steps
    figures = run(args, args.model, args.batch, args.eff_batch, steps, args.window_steps)
    peak = peak_flops(name, args.peak_tflops)
    achieved = per_image * figures["images_per_s"]
    summary = {
        "device": name,
        "model": args.model,
        "batch": args.batch,
        "eff_batch": args.eff_batch,
        "workers": args.workers,
        "images_per_s": round(figures["images_per_s"], 1),
        "data_wait": round(figures["data_wait"], 4),
        "gflops_per_image": round(per_image / 1e9, 1),
        "achieved_tflops": round(achieved / 1e12, 1),
        "mfu": round(achieved / peak, 4) if peak else None,
        "gpu_mem_gb": round(figures["gpu_mem_gb"], 1),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
