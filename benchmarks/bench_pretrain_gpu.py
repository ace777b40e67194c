"""MAE pretraining throughput of one model on one GPU: images/s, MFU and data-wait share, as one JSON line.

A single row of :mod:`gpu_check` (``benchmarks/gpu_check.sh`` prints the whole table: ViT-L/16 and ViT-B/16,
eager and compiled, fine-tuning): the real training loop (:func:`plankton_train.pretrain.run_pretrain`: stream
loader, bf16 autocast, fused AdamW, gradient accumulation) from a shard folder for a few metric windows, the first
discarded. FLOPs per image and the peak table are :mod:`gpu_check`'s. Goal (issue 14): >= 2,000 images/s on one
H100/H200 for ViT-L/16 (>= 25 % MFU), data wait < 5 %.

    python benchmarks/bench_pretrain_gpu.py --shard-set shards/no_daplankton --workers 14 [--compile]

Without a GPU it says so and runs a tiny CPU smoke test of the same path (exit status 0).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check import mae_flops, peak_flops, pretrain_row  # noqa: E402  (a sibling script, not a package)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shard-set", dest="shards", type=Path, required=True, help="shard folder with index.json")
    ap.add_argument("--model", default="vit_large_patch16_224")
    ap.add_argument("--batch", type=int, default=256, help="images per micro-step")
    ap.add_argument("--eff-batch", type=int, default=4096, help="images per optimiser step")
    ap.add_argument("--workers", type=int, default=14, help="loader processes")
    ap.add_argument("--windows", type=int, default=4, help="metric windows (the first is discarded)")
    ap.add_argument("--window-steps", type=int, default=3, help="optimiser steps per window")
    ap.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    ap.add_argument("--compile", action="store_true", help="torch.compile (inductor)")
    ap.add_argument("--peak-tflops", type=float, help="dense bf16 peak if the GPU is not in the table")
    args = ap.parse_args()
    if not (args.shards / "index.json").is_file():
        print(f"skipped: {args.shards} is not a shard folder (no index.json)")
        return 0

    import torch

    cuda = torch.cuda.is_available()
    if not cuda:
        print("no GPU: running a tiny CPU smoke test of the same path instead (figures are not GPU figures)")
        model, geometry = "mae_test", dict(batch=8, eff_batch=16, windows=4, window_steps=1)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        model = args.model
        geometry = dict(
            batch=args.batch, eff_batch=args.eff_batch, windows=args.windows, window_steps=args.window_steps
        )
    device = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    flops = mae_flops(model, device, args.precision)
    if cuda:
        torch.cuda.empty_cache()
    row = pretrain_row(
        model,
        shard_set=args.shards,
        model=model,
        precision=args.precision,
        compile_backend="inductor" if args.compile else None,
        workers=args.workers if cuda else min(args.workers, 1),
        flops=flops,
        peak=peak_flops(name, args.peak_tflops) if cuda else None,
        **geometry,
    )
    print(json.dumps({"device": name, "precision": args.precision, "compile": args.compile, **row.as_dict()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
