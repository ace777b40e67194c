"""The main job end to end on the built-in sample data, on a CPU in minutes: ``plankton-train demo``.

Stages (library calls, no subprocesses): write the seven raw sample archives (``plankton_data.fixtures``, with
``scale`` x the images per class of the Kaggle, ZooLake and DAPlankton samples), ingest them, build the
no-DAPlankton pretraining shard set and verify it, pretrain the CPU-sized ``mae_cpu64`` MAE, write the
reconstruction figure, draw the splits of the DAPlankton sample, fine-tune from the MAE encoder and from
random initialisation at a few-label fraction, write the report, and classify a folder of images.

Shard size and batch geometry follow the data (a few hundred samples, not the 2000-sample default). This is
the one plankton_train module that drives plankton_data's ingest and shard-set builders (by their library
API): ``tests/test_import_boundary.py`` allows it here only.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from plankton_data.audit.verify import verify
from plankton_data.fixtures import write_all
from plankton_data.format.manifest import read_manifest
from plankton_data.ingest.preprocess import PreprocessConfig
from plankton_data.ingest.run import ingest
from plankton_data.shardset.build import build_shard_set
from plankton_train.engine.pretrain_loop import EventFn
from plankton_train.errors import PlanktonTrainError
from plankton_train.finetune import Recipe
from plankton_train.models.classifier import EncoderSpec
from plankton_train.models.mae import MODELS
from plankton_train.pretrain import PretrainConfig, run_pretrain
from plankton_train.protocol.experiment import Experiment, run_experiment
from plankton_train.protocol.predict import PredictOptions, predict
from plankton_train.protocol.reconstruct import reconstruct
from plankton_train.protocol.report import write_report
from plankton_train.protocol.splits import SplitConfig, splits_from_manifest, write_splits

log = logging.getLogger(__name__)

MODEL = "mae_cpu64"
SET_NAME = "no_daplankton"
TARGET = "daplankton"


class DemoError(PlanktonTrainError):
    """A demo stage produced something other than what it must (e.g. the shard set does not verify)."""


@dataclass(frozen=True)
class DemoConfig:
    """How big the demo is. The defaults take about 3 minutes on 2 CPU cores; :meth:`quick` about 20 seconds."""

    scale: int = 20  # x images per class of the kaggle / zoolake / daplankton samples
    image_size: int = 80  # stored side at ingest (the model crops 64 px)
    pretrain_epochs: float = 30
    pretrain_batch: int = 64
    blr: float = 1.5e-3
    finetune_epochs: int = 20
    finetune_batch: int = 32
    fractions: tuple[float, ...] = (0.1,)  # labelled fractions fine-tuned: the few-label setting
    predict_images: int = 24
    workers: int = 1  # pretraining loader processes
    seed: int = 0

    @classmethod
    def quick(cls) -> DemoConfig:
        """A CI-sized demo: every stage, a fraction of the data and of the epochs."""
        return cls(scale=4, pretrain_epochs=3, pretrain_batch=32, finetune_epochs=2, workers=0)


@dataclass
class Stage:
    """One finished stage: what it did, how long it took and what it wrote."""

    name: str
    seconds: float
    detail: str
    artefacts: dict[str, Path] = field(default_factory=dict)  # what a user should open: label -> path


@dataclass
class DemoResult:
    out: Path
    stages: list[Stage]

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    @property
    def artefacts(self) -> dict[str, Path]:
        return {k: v for s in self.stages for k, v in s.artefacts.items()}


def _per_shard(rows: int) -> int:
    """Samples per tar for a set of ``rows``: about 8 shards, at least 16 samples each (the rest is dropped)."""
    return max(16, rows // 8)


def _batch(samples: int, batch: int) -> int:
    """The batch size, cut so that an epoch has at least 4 batches."""
    return max(8, min(batch, samples // 4))


def _sample_images(raw_zip: Path, folder: Path, n: int) -> Path:
    """Copy ``n`` images out of the raw DAPlankton package (a zip in a zip) into ``folder``: new images to classify."""
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(raw_zip) as outer:
        inner_name = next(m for m in outer.namelist() if m.endswith(".zip"))
        with zipfile.ZipFile(io.BytesIO(outer.read(inner_name))) as inner:
            images = sorted(m for m in inner.namelist() if m.lower().endswith((".png", ".jpg")))
            step = max(1, len(images) // n)
            for member in images[::step][:n]:
                (folder / Path(member).name).write_bytes(inner.read(member))
    return folder


#: What a demo folder holds; an existing folder with anything else is refused, never removed.
OUTPUTS = ("raw", "shards", "manifests", "pretrain", "figures", "splits", "finetune", "report", "new_images",
           "predictions.csv")  # fmt: skip


def _fresh(out: Path) -> None:
    """Empty ``out`` if it is an earlier demo's folder (or the ``plankton-data demo`` one); refuse anything else."""
    if not out.exists():
        return
    if not out.is_dir():
        raise DemoError(f"{out} is a file: choose another --out")
    others = sorted(p.name for p in out.iterdir() if p.name not in OUTPUTS and not p.name.startswith("."))
    if others:
        raise DemoError(f"{out} holds {others[:3]}, not only an earlier demo's outputs: choose another --out")
    for name in OUTPUTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def run_demo(
    out: Path | str,
    *,
    cfg: DemoConfig = DemoConfig(),
    on_stage: Callable[[Stage], None] | None = None,
    on_event: EventFn | None = None,
) -> DemoResult:
    """Run every stage into ``out`` (see the module docstring); ``on_stage`` gets each finished stage,
    ``on_event`` the pretraining progress records. An earlier demo's ``out`` is emptied first; a folder that holds
    anything else is refused (:class:`DemoError`)."""
    out = Path(out)
    _fresh(out)
    shards, manifests = out / "shards", out / "manifests"
    stages: list[Stage] = []
    clock = [time.perf_counter()]

    def done(name: str, detail: str, **artefacts: Path) -> None:
        now = time.perf_counter()
        stage = Stage(name, now - clock[0], detail, dict(artefacts))
        clock[0] = now
        stages.append(stage)
        log.info("%s: %s (%.1f s)", name, detail, stage.seconds)
        if on_stage is not None:
            on_stage(stage)

    # 1. raw archives
    raws = write_all(out / "raw", seed=cfg.seed, scale=cfg.scale)
    done("raw archives", f"{len(raws)} datasets, {sum(f.samples for f in raws.values())} images", raw=out / "raw")

    # 2. ingest
    config = PreprocessConfig(size=cfg.image_size)
    workers = os.cpu_count() or 1
    reports = {
        d: ingest(d, f.raw, shards_root=shards, manifests_root=manifests, config=config, workers=workers)
        for d, f in raws.items()
    }
    for d, rep in reports.items():
        if (rep.samples, rep.rejects) != (raws[d].samples, raws[d].rejects):
            raise DemoError(f"{d}: ingest gave {rep.samples} samples / {rep.rejects} rejects, expected "
                            f"{raws[d].samples} / {raws[d].rejects}")  # fmt: skip
    total = sum(r.samples for r in reports.values())
    rejects = sum(r.rejects for r in reports.values())
    done("ingest", f"{total} samples, {rejects} rejects, {cfg.image_size} px", shards=shards, manifests=manifests)

    # 3. the pretraining set without the target dataset, and its verification
    rows = sum(r.samples for d, r in reports.items() if d != TARGET)
    per_shard = _per_shard(rows)
    report = build_shard_set(
        SET_NAME,
        exclude=(TARGET,),
        shards_root=shards,
        manifests_root=manifests,
        samples_per_shard=per_shard,
        seed=cfg.seed,
        all_splits=True,  # the sample's Kaggle test split is tiny: its labelled images pretrain too (labels unused)
    )
    problems = verify(report.shard_dir)
    if problems:
        raise DemoError(f"{report.shard_dir} does not verify: {problems[0]}")
    done(
        "shard set",
        f"{report.total} samples in {report.shards} shards of {per_shard} (without {TARGET}); verified",
        shard_set=report.shard_dir,
    )

    # 4. pretraining
    batch = _batch(report.total, cfg.pretrain_batch)
    pcfg = PretrainConfig(
        shards=str(report.shard_dir),
        out=str(out / "pretrain"),
        model=MODEL,
        batch_size=batch,
        eff_batch=batch,
        blr=cfg.blr,
        epochs=cfg.pretrain_epochs,
        warmup_epochs=max(1.0, cfg.pretrain_epochs / 10),
        workers=cfg.workers,
        seed=cfg.seed,
        log_every=10,
        ckpt_every=0,
    )
    pre = run_pretrain(pcfg, on_event=on_event)
    if pre.encoder is None:
        raise DemoError("pretraining stopped before the end of its schedule")
    done(
        "pretrain",
        f"{MODEL}, {pre.step} steps of {batch} images, last loss {pre.last_loss:.3f}",
        pretrain_run=pre.run_dir,
        encoder=pre.encoder,
    )

    # 5. reconstruction figure
    figure = reconstruct(pre.run_dir, out=out / "figures" / "reconstruction.png", n=8, seed=cfg.seed, tile=128)
    done("reconstruction", "original | masked | reconstruction, 8 images", reconstruction=figure)

    # 6. splits of the target
    target_manifest = reports[TARGET].manifest
    split_cfg = SplitConfig(fractions=tuple(sorted(set(cfg.fractions) | {1.0})), seed=cfg.seed)
    splits_path = write_splits(
        splits_from_manifest(target_manifest, cfg=split_cfg, group_by=("dataset",)),
        out / "splits" / f"{TARGET}.parquet",
        cfg=split_cfg,
    )
    n_target = len(read_manifest(target_manifest))
    done("splits", f"{TARGET}: {n_target} images, {split_cfg.folds} folds", splits=splits_path)

    # 7. fine-tuning: MAE encoder vs random init, same architecture
    mae = MODELS[MODEL]
    recipe = Recipe(
        epochs=cfg.finetune_epochs,
        warmup_epochs=max(1, cfg.finetune_epochs // 10),
        batch_size=cfg.finetune_batch,
        img_size=mae.img_size,
        resize=round(mae.img_size * 256 / 224),
        num_workers=0,
        seed=cfg.seed,
    )
    arch_args = {k: v for k, v in mae.timm_args().items() if k != "in_chans"}
    exp = Experiment(
        manifest=target_manifest,
        shards_root=shards,
        splits=splits_path,
        models={
            "mae_no_daplankton": EncoderSpec(init=str(pre.encoder)),
            "random_init": EncoderSpec(arch=mae.arch, init="random", model_kwargs=arch_args),
        },
        recipe=recipe,
        fractions=tuple(cfg.fractions),
        folds=(0,),
    )
    results = run_experiment(exp, out=out / "finetune")
    acc = results.pivot_table(index="fraction", columns="model", values="accuracy")
    few = min(cfg.fractions)
    detail = ", ".join(f"{m} {acc.loc[few, m]:.3f}" for m in acc.columns)
    done(
        "fine-tune",
        f"{len(results)} runs, {recipe.epochs} epochs; test accuracy at {few * 100:g} %: {detail}",
        results=out / "finetune" / "results.csv",
    )

    # 8. report
    report_dir = out / "report"
    files = write_report(out / "finetune" / "results.csv", out=report_dir)
    figures = {f"figure_{p.parent.name}" if p.parent != report_dir else "figure_accuracy": p
               for p in sorted(files) if p.suffix == ".png" and "random_init" not in p.name}  # fmt: skip
    done("report", f"{len(files)} files (table, figures as PNG + PDF)", report=report_dir / "accuracy.md",
         **figures, report_folder=report_dir)  # fmt: skip

    # 9. predict on a folder of new images, with the MAE model at the few-label fraction
    row = results[(results["model"] == "mae_no_daplankton") & (results["fraction"] == few)].iloc[0]
    model_dir = out / "finetune" / row["run_dir"]
    images = _sample_images(raws[TARGET].raw, out / "new_images", cfg.predict_images)
    predictions = out / "predictions.csv"
    table = predict(model_dir, source=images, out=predictions, opts=PredictOptions(batch_size=64))
    done("predict", f"{len(table)} images classified by {model_dir.relative_to(out)}", predictions=predictions)
    return DemoResult(out, stages)
