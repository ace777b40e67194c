"""MAE pretraining: shard stream -> MAE -> AdamW, per-step cosine schedule; one CPU/GPU or torchrun DDP.

Recipe (MAE paper / official code): AdamW betas (0.9, 0.95), weight decay 0.05 (not on norms, biases,
position and special tokens), ``lr = blr * effective_batch / 256``, linear warmup then cosine per optimiser
step, effective batch reached by gradient accumulation with no DDP all-reduce on the non-final micro-steps,
forward passes in ``precision`` (``auto``: bf16 autocast on CUDA, fp32 on CPU; bf16 needs no GradScaler),
optionally through ``torch.compile`` (``compile``). The run folder holds ``run_config.json`` (resolved), metrics
(``metrics.jsonl``, ``metrics.csv``, ``tb/``), ``checkpoints/step-*.pt`` and the exported ``encoder/``.

This module is the wiring: it checks the configuration, builds the stream, model and optimiser, and runs
:class:`plankton_train.engine.pretrain_loop.Trainer` (the step loop, exact resume, DDP).
"""

from __future__ import annotations

import json
import logging
import math
from contextlib import ExitStack, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from plankton_data.format.keys import key_dataset
from plankton_data.format.lock import output_lock
from plankton_train import __version__
from plankton_train.data.stream import ShardStream, StreamLoader
from plankton_train.engine.device import Dist, check_compile, compile_errors, compile_model, init_distributed
from plankton_train.engine.optim import clamp_warmup, param_groups
from plankton_train.engine.precision import precision_problem, resolve_precision
from plankton_train.engine.pretrain_loop import BatchFn, Cadence, EventFn, Schedule, Trainer
from plankton_train.errors import PretrainError
from plankton_train.models.checkpoint import load_checkpoint
from plankton_train.models.export import export_encoder
from plankton_train.models.mae import MAE, MODELS, MAEConfig, build_mae
from plankton_train.models.registry import is_large

log = logging.getLogger(__name__)

#: The resolved configuration in the run folder (not ``config.json``: that name means a timm model folder).
RUN_CONFIG = "run_config.json"

#: Input normalisation of pretraining (``PretrainConfig.normalization``).
NORMALIZATIONS = ("dataset", "set")


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that defines a pretraining run (saved resolved in ``run_config.json`` and checkpoints)."""

    shards: str  # shard folder with index.json
    out: str = "runs/pretrain"  # run folder
    model: str = "vit_large_patch16_224"  # a key of plankton_train.models.MODELS
    batch_size: int = 256  # images per device per micro-step
    eff_batch: int = 4096  # images per optimiser step over all devices (gradient accumulation)
    blr: float = 1.5e-4  # base learning rate; lr = blr * eff_batch / 256
    min_lr: float = 0.0  # end of the cosine
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.95
    epochs: float = 800  # schedule length in epochs of the shard set ...
    warmup_epochs: float = 40
    steps: int = 0  # ... or in optimiser steps when > 0 (overrides epochs)
    warmup_steps: int = -1  # overrides warmup_epochs when >= 0
    seed: int = 0
    workers: int = 8  # loader worker processes per rank
    normalization: str = "set"  # "set": the set's mean/std (the paper); "dataset": each image its dataset's
    log_every: int = 20  # optimiser steps between metric records
    ckpt_every: int = 1000  # optimiser steps between checkpoints (0: only at the end)
    keep_checkpoints: int = 2  # periodic checkpoints kept (the newest)
    img_size: int = 0  # network input side in px; 0: the model's own (MODELS[model].img_size)
    precision: str = "auto"  # bf16 | fp32 | auto (bf16 on CUDA); a run stores the resolved one
    compile: bool = False  # torch.compile the MAE's forward (and so its backward)
    compile_backend: str = "inductor"  # see plankton_train.engine.precision.COMPILE_BACKENDS

    def model_config(self) -> MAEConfig:
        """The MAE architecture of this run: the registry entry, at ``img_size`` when that is set."""
        base = MODELS[self.model]
        return replace(base, img_size=self.img_size) if self.img_size else base

    def validate(self) -> None:
        """Raise :class:`PretrainError` on values that cannot work."""
        if self.model not in MODELS:
            raise PretrainError(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        for name in ("batch_size", "eff_batch", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise PretrainError(f"{name} must be >= 1")
        if self.normalization not in NORMALIZATIONS:
            raise PretrainError(f"normalization must be one of {', '.join(NORMALIZATIONS)}: {self.normalization!r}")
        if not (0 < self.blr < math.inf and 0 < self.epochs < math.inf) or self.workers < 0 or self.ckpt_every < 0:
            raise PretrainError(
                f"blr and epochs must be finite and > 0 (got {self.blr}, {self.epochs}); workers and ckpt_every >= 0"
            )
        problem = precision_problem(self.precision, self.compile_backend)
        if problem:
            raise PretrainError(f"invalid setting: {problem}")
        patch = MODELS[self.model].patch_size
        if self.img_size < 0 or self.img_size % patch:
            raise PretrainError(
                f"img_size must be a positive multiple of the patch size {patch} (or 0), not {self.img_size}"
            )


@dataclass
class PretrainResult:
    """What a finished (or stopped) run leaves behind."""

    run_dir: Path
    step: int  # optimiser steps done in total
    total_steps: int
    last_loss: float  # loss of the last logged window (nan if none)
    checkpoint: Path | None  # the last checkpoint written
    encoder: Path | None  # exported encoder folder (only when the schedule is complete)
    model: MAE  # the trained model (unwrapped, on the training device)


def _sample_stats(stream: ShardStream, cfg: PretrainConfig) -> tuple[dict, np.ndarray, np.ndarray]:
    """Per-sample pixel mean/std ``(N,)`` for ``cfg.normalization``, and the per-dataset stats used.

    A sample's dataset comes from its key (:func:`plankton_data.format.keys.key_dataset`); its statistics
    come from ``index.json``'s ``dataset_stats``. With ``"set"`` every sample gets the set's own mean/std
    (the paper's setting).
    """
    index, n = stream.index, stream.num_samples
    if cfg.normalization == "set":
        stats = {"*": [index.mean, index.std]}
        code = np.zeros(n, np.int64)
    else:
        if not index.dataset_stats:
            raise PretrainError(
                f"{cfg.shards}/index.json has no per-dataset statistics (written by an older plankton-data):"
                " rebuild the shard set, or pass --normalization set"
            )
        datasets, code = np.unique([key_dataset(k.decode()) for k in stream.table.keys], return_inverse=True)
        missing = sorted(set(datasets) - set(index.dataset_stats))
        if missing:
            raise PretrainError(f"{cfg.shards}/index.json has no statistics for dataset(s) {', '.join(missing)}")
        stats = {d: index.dataset_stats[d] for d in datasets}
    mean, std = np.array([s[0] for s in stats.values()]), np.array([s[1] for s in stats.values()])
    if not (std > 0).all():
        raise PretrainError(f"{cfg.shards}/index.json has a pixel std of 0 in {stats}; cannot normalise")
    return stats, mean[code], std[code]


def run_dir_of(resume: Path | str) -> Path:
    """The run folder a ``--resume`` target belongs to: the folder itself, or for a checkpoint file the run
    that holds it (``<run>/checkpoints/step-N.pt``; a loose file: the folder it is in)."""
    path = Path(resume)
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def _check_run_dir(run_dir: Path, resuming: bool) -> None:
    """A fresh run must not mix its checkpoints with an earlier run's (checked on every rank: no hang)."""
    ckpts = run_dir / "checkpoints"
    if not resuming and ckpts.is_dir() and any(ckpts.glob("step-*.pt")):
        raise PretrainError(f"{run_dir} already holds checkpoints; pass --resume {run_dir} or choose another --out")


@dataclass
class _Built:
    """What :func:`_build` makes for one run: the trainer and what ``run_config.json`` reports."""

    trainer: Trainer
    stream: ShardStream
    dataset_stats: dict


def _build(cfg: PretrainConfig, dd: Dist, on_event: EventFn | None, on_batch: BatchFn | None) -> _Built:
    """Stream, loader, schedule, model and optimiser of a run, in that order: bad input fails before a large
    model is built."""
    mae_cfg = cfg.model_config()
    stream = ShardStream(
        cfg.shards,
        cfg.batch_size,
        out_size=mae_cfg.img_size,
        seed=cfg.seed,
        rank=dd.rank,
        world_size=dd.world,
    )
    cuda = dd.device.type == "cuda"
    loader = StreamLoader(stream, cfg.workers, pin_memory=cuda)
    mean, std = stream.index.mean, stream.index.std
    dataset_stats, sample_mean, sample_std = _sample_stats(stream, cfg)
    per_step = cfg.batch_size * dd.world
    if cfg.eff_batch % per_step:
        raise PretrainError(f"eff_batch {cfg.eff_batch} is not a multiple of batch_size x world size = {per_step}")
    accum = cfg.eff_batch // per_step
    micro = stream.batches_per_epoch
    total_steps = cfg.steps if cfg.steps > 0 else math.ceil(cfg.epochs * micro / accum)
    warmup_steps = cfg.warmup_steps if cfg.warmup_steps >= 0 else round(cfg.warmup_epochs * micro / accum)
    schedule = Schedule(
        total_steps=total_steps,
        warmup_steps=clamp_warmup(warmup_steps, total_steps, unit="steps"),
        accum=accum,
        base_lr=cfg.blr * cfg.eff_batch / 256,
        min_lr=cfg.min_lr,
    )
    if cuda:
        torch.set_float32_matmul_precision("high")  # TF32 for what runs outside bf16 autocast
    if cfg.compile:  # before the model is built: a machine where inductor cannot work fails at once
        check_compile(dd.device, cfg.compile_backend, PretrainError)
    if dd.device.type == "cpu" and is_large(mae_cfg.arch) and dd.rank == 0:
        log.warning(
            "%s (%s) is a GPU-sized model: on a CPU one step takes minutes; for a CPU try --model mae_cpu64",
            cfg.model,
            mae_cfg.arch,
        )
    model = build_mae(mae_cfg).to(dd.device)
    if cfg.compile:
        compile_model(model, device=dd.device, backend=cfg.compile_backend, error=PretrainError)
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=schedule.base_lr, betas=(cfg.beta1, cfg.beta2), fused=cuda
    )
    trainer = Trainer(
        model=model,
        optimizer=optimizer,
        loader=loader,
        dd=dd,
        schedule=schedule,
        cadence=Cadence(cfg.log_every, cfg.ckpt_every, cfg.keep_checkpoints),
        sample_mean=torch.tensor(sample_mean, dtype=torch.float32, device=dd.device),
        sample_std=torch.tensor(sample_std, dtype=torch.float32, device=dd.device),
        seed=cfg.seed,
        run_dir=Path(cfg.out),
        extra_state={"config": asdict(cfg), "mean": mean, "std": std, "version": __version__},
        precision=cfg.precision,
        on_event=on_event,
        on_batch=on_batch,
    )
    return _Built(trainer, stream, dataset_stats)


def _resolved(cfg: PretrainConfig, built: _Built) -> dict:
    """The configuration plus every derived number, as saved in ``run_config.json``."""
    trainer, stream = built.trainer, built.stream
    return {
        "config": asdict(cfg),
        "model": trainer.model.cfg.to_dict(),
        "world_size": trainer.dd.world,
        "accum_steps": trainer.schedule.accum,
        "lr": trainer.schedule.base_lr,
        "total_steps": trainer.schedule.total_steps,
        "warmup_steps": trainer.schedule.warmup_steps,
        "micro_batches_per_epoch": stream.batches_per_epoch,
        "num_samples": stream.num_samples,
        "mean": stream.index.mean,
        "std": stream.index.std,
        "dataset_stats": built.dataset_stats,
        "device": str(trainer.dd.device),
        "precision": cfg.precision,  # resolved: bf16 or fp32
        "compile": cfg.compile_backend if cfg.compile else None,
        "torch": torch.__version__,
        "plankton_train": __version__,
    }


def run_pretrain(
    cfg: PretrainConfig,
    *,
    resume: Path | str | None = None,
    stop_after: int | None = None,
    on_event: EventFn | None = None,
    on_batch: BatchFn | None = None,
) -> PretrainResult:
    """Pretrain an MAE as configured; under torchrun every rank calls this.

    Args:
        cfg: the run (see :class:`PretrainConfig`). When resuming, pass the checkpoint's config
            (:func:`resume_config`); the loader refuses a position saved for another geometry.
        resume: a checkpoint file or a run folder (its latest checkpoint) to continue exactly from.
        stop_after: stop (with a checkpoint) after this many optimiser steps of this invocation, e.g. to
            fit a job time limit; the schedule is unchanged and ``--resume`` continues it.
        on_event: progress hook on rank 0 (start, step, log, checkpoint, done records).
        on_batch: called with every micro-batch dict (uint8 images, sample ``index``) before its step.

    Returns:
        A :class:`PretrainResult`. The encoder is exported to ``run_dir/encoder`` when the schedule completes.
    """
    cfg.validate()
    dd = init_distributed()
    cfg = replace(cfg, precision=resolve_precision(cfg.precision, dd.device.type))  # stored resolved: resume keeps it
    lock = ExitStack()
    try:
        torch.manual_seed(cfg.seed + dd.rank)
        run_dir = Path(cfg.out)
        if dd.rank == 0:  # one run per folder: a second pretrain into the same --out stops at once
            lock.enter_context(output_lock(run_dir, tool="plankton-train pretrain"))
        _check_run_dir(run_dir, resume is not None)
        if dd.rank == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
        if dd.world > 1:
            dist.barrier()
        built = _build(cfg, dd, on_event, on_batch)
        trainer = built.trainer
        if resume is not None:
            trainer.restore(load_checkpoint(resume))
        resolved = _resolved(cfg, built)
        if dd.rank == 0:
            (run_dir / RUN_CONFIG).write_text(json.dumps(resolved, indent=2) + "\n")
        with compile_errors(PretrainError) if cfg.compile else nullcontext():
            last_loss, ckpt = trainer.fit(stop_after, start=resolved)
        total, encoder = trainer.schedule.total_steps, None
        if trainer.step >= total and dd.rank == 0:
            encoder = export_encoder(
                trainer.model,
                run_dir / "encoder",
                mean=built.stream.index.mean,
                std=built.stream.index.std,
                normalization=cfg.normalization,
                dataset_stats=built.dataset_stats,
            )
        trainer.emit(
            event="done",
            step=trainer.step,
            total_steps=total,
            checkpoint=str(ckpt),
            encoder=str(encoder) if encoder else None,
        )
        return PretrainResult(run_dir, trainer.step, total, last_loss, ckpt, encoder, trainer.model)
    finally:
        lock.close()
        if dd.owns_group:
            dist.destroy_process_group()


def resume_config(checkpoint: Path | str, *, shards: str | None = None, workers: int | None = None) -> PretrainConfig:
    """The configuration stored in a checkpoint, optionally with the shard folder moved or workers changed.

    Neither changes the batches: the loader's position does not depend on the number of workers, and a
    moved shard folder is checked against the saved shard list. The run folder is the one resumed from
    (:func:`run_dir_of`), never the saved ``out``: a copied or moved run continues where it now is, and the
    original is left alone.
    """
    saved = dict(load_checkpoint(checkpoint)["config"])
    saved["out"] = str(run_dir_of(checkpoint))
    if shards is not None:
        saved["shards"] = shards
    if workers is not None:
        saved["workers"] = workers
    return PretrainConfig(**saved)
