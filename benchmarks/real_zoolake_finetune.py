"""Evidence on real data, on CPU in minutes: plankton MAE pretraining beats random init at 10 % labels.

Pipeline (every step is skipped when its output already exists, so a rerun only redoes what is missing):

1. ``plankton-data ingest --size 80`` the real ZooLake images (``../shared/realdata/lake_zooplankton/data.zip``,
   18 classes, 10,358 images) and the Kaggle NDSB training images (``kaggle/train.zip``, 30,336 images):
   small stored images, so that decoding costs little beside a CPU model at 64 px.
2. ``plankton-data shard``: one shuffled pretraining shard set over both - unlabelled target data in
   pretraining, the paper's "with target data" setting.
3. ``run_pretrain`` a small MAE (``--model``: the registry's ``mae_cpu64``, a ViT with 64 px input, 8 px patches,
   width 96, depth 4; or ``mae_test``) with the paper's mask ratio, norm-pix loss and AdamW betas, for
   ``--pretrain-steps`` optimiser steps of 256 images.
4. The paper's splits on ZooLake, then the paper's fine-tuning recipe (50 epochs, 5 warm-up; only the input
   size is scaled: resize 73, centre crop 64) from the pretrained encoder and from random initialisation
   (same architecture) at ``--fraction`` on ``--folds``, and the report.

Run from the repository root::

    .venv/bin/python benchmarks/real_zoolake_finetune.py --work runs/bench_zoolake   # about 37 min on 2 cores

Prints the accuracy table and writes ``<work>/summary.md`` plus the report folder ``<work>/report``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from plankton_data.errors import PlanktonDataError
from plankton_data.format.index import read_index
from plankton_data.format.manifest import read_manifest
from plankton_train.finetune import Recipe
from plankton_train.models.classifier import EncoderSpec
from plankton_train.models.mae import MODELS
from plankton_train.pretrain import PretrainConfig, run_pretrain
from plankton_train.protocol.experiment import Experiment, run_experiment
from plankton_train.protocol.report import write_report
from plankton_train.protocol.splits import SplitConfig, splits_from_manifest, write_splits

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
RAW = {"zoolake": REALDATA / "lake_zooplankton" / "data.zip", "kaggle": REALDATA / "kaggle" / "train.zip"}
log = logging.getLogger("bench")


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "plankton_data", *args], check=True, stdout=subprocess.DEVNULL)


def _fresh(work: Path, name: str) -> bool:
    """True if ``name`` was written by this plankton_data version (its manifest still validates)."""
    try:
        read_index(work / "shards" / name)
        read_manifest(work / "manifests" / f"{name}.parquet")
        return True
    except PlanktonDataError:
        shutil.rmtree(work / "shards" / name, ignore_errors=True)
        (work / "manifests" / f"{name}.parquet").unlink(missing_ok=True)
        return False


def ingest(work: Path, dataset: str, size: int, workers: int) -> None:
    if not _fresh(work, dataset) or read_index(work / "shards" / dataset).size != size:
        log.info("ingest %s at %d px", dataset, size)
        _cli(
            "ingest",
            dataset,
            "--raw",
            str(RAW[dataset]),
            "--size",
            str(size),
            "--workers",
            str(workers),
            "--shards",
            str(work / "shards"),
            "--manifests",
            str(work / "manifests"),
        )


def shard_set(work: Path, name: str, datasets: list[str]) -> Path:
    """The pretraining shard set: ``plankton-data shard`` over the ingested datasets (globally shuffled)."""
    sources = {d: read_index(work / "shards" / d).to_json() for d in datasets}
    stamp = work / "shards" / f".{name}.sources.json"  # rebuild when an ingest was redone
    if not _fresh(work, name) or not stamp.is_file() or json.loads(stamp.read_text()) != sources:
        log.info("shard set %s from %s", name, datasets)
        _cli(
            "shard",
            "--name",
            name,
            *[a for d in datasets for a in ("--include", d)],
            "--all-splits",  # the real data has Kaggle's labelled train.zip in full, only part of test.zip
            "--shards",
            str(work / "shards"),
            "--manifests",
            str(work / "manifests"),
        )
        stamp.write_text(json.dumps(sources))
    return work / "shards" / name


def pretrain(work: Path, shards: Path, model: str, steps: int, normalization: str, workers: int) -> tuple[Path, float]:
    encoder = work / "pretrain" / "encoder"
    timing = work / "pretrain" / "bench_timing.json"
    stamp = {"shards": read_index(shards).to_json(), "steps": steps, "model": model, "normalization": normalization}
    if (encoder / "config.json").is_file() and timing.is_file():
        done = json.loads(timing.read_text())
        if all(done.get(k) == v for k, v in stamp.items()):
            return encoder, done["seconds"]
    shutil.rmtree(work / "pretrain", ignore_errors=True)  # stale: other shards, steps or model
    cfg = PretrainConfig(
        shards=str(shards),
        out=str(work / "pretrain"),
        model=model,
        batch_size=256,
        eff_batch=256,
        blr=1.5e-3,
        steps=steps,
        warmup_steps=max(1, steps // 20),
        workers=workers,
        normalization=normalization,
        log_every=50,
        ckpt_every=0,
    )
    log.info("pretrain %s for %d steps of 256 images on %s", model, steps, shards.name)
    t0 = time.perf_counter()
    result = run_pretrain(cfg)
    seconds = time.perf_counter() - t0
    timing.write_text(json.dumps({**stamp, "seconds": seconds, "last_loss": result.last_loss}))
    log.info("pretrain done in %.0f s, last loss %.4f", seconds, result.last_loss)
    return result.encoder, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("runs/bench_zoolake"))
    ap.add_argument(
        "--model", default="mae_cpu64", help="MAE variant: a registry name (mae_cpu64: 64 px, 8 px patches)"
    )
    ap.add_argument("--size", type=int, default=80, help="stored image side of the ingest, in pixels")
    ap.add_argument("--pretrain-steps", type=int, default=1200)
    ap.add_argument("--normalization", default="set", help="pretraining input normalisation: set or dataset")
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--folds", default="0,1,2")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    # Decoding 80 px images takes a loader worker a few % of a core: the model gets every core.
    torch.set_num_threads(os.cpu_count() or 1)
    if not all(p.is_file() for p in RAW.values()):
        sys.exit(f"needs the real data in {REALDATA}")
    work = args.work.resolve()
    t0 = time.perf_counter()
    for dataset in ("zoolake", "kaggle"):
        ingest(work, dataset, args.size, os.cpu_count() or 1)
    shards = shard_set(work, "kaggle_zoolake", ["kaggle", "zoolake"])
    mae_cfg = MODELS[args.model]
    encoder, pretrain_s = pretrain(work, shards, args.model, args.pretrain_steps, args.normalization, args.workers)
    splits = work / "splits" / "zoolake.parquet"
    if not splits.is_file():
        cfg = SplitConfig(seed=0)
        write_splits(splits_from_manifest(work / "manifests" / "zoolake.parquet", cfg=cfg), splits, cfg=cfg)
    arch_args = {k: v for k, v in mae_cfg.timm_args().items() if k != "in_chans"}
    recipe = Recipe(
        epochs=args.epochs,
        warmup_epochs=max(1, args.epochs // 10),  # 5 of 50, as the paper
        batch_size=128,
        img_size=mae_cfg.img_size,
        resize=round(mae_cfg.img_size * 256 / 224),  # the paper's 256 -> 224 centre crop, scaled
        num_workers=args.workers,
    )
    exp = Experiment(
        manifest=work / "manifests" / "zoolake.parquet",
        shards_root=work / "shards",
        splits=splits,
        models={
            "mae_kaggle+zoolake": EncoderSpec(init=str(encoder)),
            "random_init": EncoderSpec(arch=mae_cfg.arch, init="random", model_kwargs=arch_args),
        },
        recipe=recipe,
        fractions=(args.fraction,),
        folds=tuple(int(k) for k in args.folds.split(",")),
    )
    # one results folder per pretraining setting: a new encoder at the same path never mixes with old rows
    finetune_dir = work / "finetune" / f"{args.model}-{args.pretrain_steps}steps-{args.normalization}"
    results = run_experiment(exp, out=finetune_dir)
    write_report(finetune_dir / "results.csv", out=work / "report")
    wide = results.pivot_table(index="fold", columns="model", values="accuracy")
    mae, rnd = wide["mae_kaggle+zoolake"], wide["random_init"]
    per_fold = ", ".join(f"fold {k}: MAE {mae[k]:.3f} vs random {rnd[k]:.3f}" for k in wide.index)
    summary = "\n".join(
        [
            f"Fine-tuning on real ZooLake ({args.fraction * 100:g} % of the training pool), "
            f"{len(wide)} folds, CPU ({os.cpu_count()} cores):",
            "",
            (work / "report" / "accuracy.md").read_text(),
            f"Per fold (test accuracy): {per_fold}",
            f"Mean gain {(mae - rnd).mean() * 100:+.1f} points; MAE ahead on {(mae > rnd).sum()} of {len(wide)} folds.",
            f"Pretraining: {args.pretrain_steps} steps x 256 images in {pretrain_s:.0f} s; fine-tuning runs: "
            f"{results['seconds'].sum():.0f} s in total; wall {time.perf_counter() - t0:.0f} s.",
            f"Recipe: {json.dumps(asdict(recipe))}",
            "",
        ]
    )
    (work / "summary.md").write_text(summary)
    print(summary)


if __name__ == "__main__":
    main()
