"""MAE pretraining: shard stream -> MAE -> AdamW, per-step cosine schedule; one CPU/GPU or torchrun DDP.

Recipe (MAE paper / official code): AdamW betas (0.9, 0.95), weight decay 0.05 (not on norms, biases,
position and special tokens), ``lr = blr * effective_batch / 256``, linear warmup then cosine per optimiser
step, effective batch reached by gradient accumulation with no DDP all-reduce on the non-final micro-steps,
bf16 autocast on CUDA (no GradScaler needed). The run folder holds ``run_config.json`` (resolved), metrics
(``metrics.jsonl``, ``metrics.csv``, ``tb/``), ``checkpoints/step-*.pt`` and the exported ``encoder/``.

Determinism: the batch at loader position ``g`` and its mask depend only on ``(seed, rank, g)``, so a run
resumed from a checkpoint takes exactly the steps the uninterrupted run would have taken.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from plankton_data.errors import PlanktonDataError
from plankton_data.format.keys import key_dataset
from plankton_train import __version__
from plankton_train.checkpoint import (
    export_encoder,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    step_checkpoint_name,
)
from plankton_train.data.augment import normalize
from plankton_train.data.stream import ShardStream, StreamLoader
from plankton_train.models.mae import MAE, MODELS, build_mae
from plankton_train.optim import cosine_lr, param_groups, set_lr

#: The resolved configuration in the run folder (not ``config.json``: that name means a timm model folder).
RUN_CONFIG = "run_config.json"
#: ``on_batch(batch)``: sees every micro-batch dict before its step (monitoring, tests).
BatchFn = Callable[[dict], None]
#: ``on_event(record)``: progress hook (rank 0 only); ``record["event"]`` is start/step/log/checkpoint/done.
EventFn = Callable[[dict], None]


class PretrainError(PlanktonDataError):
    """A configuration or run folder that cannot be trained as asked (explained in one line)."""


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

    def validate(self) -> None:
        """Raise :class:`PretrainError` on values that cannot work."""
        if self.model not in MODELS:
            raise PretrainError(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        for name in ("batch_size", "eff_batch", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise PretrainError(f"{name} must be >= 1")
        if self.normalization not in NORMALIZATIONS:
            raise PretrainError(f"normalization must be one of {', '.join(NORMALIZATIONS)}: {self.normalization!r}")
        if self.blr <= 0 or self.epochs <= 0 or self.workers < 0 or self.ckpt_every < 0:
            raise PretrainError("blr and epochs must be > 0; workers and ckpt_every >= 0")


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


@dataclass(frozen=True)
class _Dist:
    rank: int
    world: int
    device: torch.device
    owns_group: bool  # we initialised the process group, so we destroy it


def _init_distributed() -> _Dist:
    """Single process, or DDP from torchrun's RANK/WORLD_SIZE/LOCAL_RANK (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world == 1:
        return _Dist(0, 1, torch.device("cuda" if cuda else "cpu"), False)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    return _Dist(rank, world, device, owns)


def _mask_generator(seed: int, rank: int, position: int, device: torch.device) -> torch.Generator:
    """The mask RNG for one micro-batch: a pure function of (seed, rank, loader position)."""
    state = np.random.SeedSequence([seed, rank, position, 0x6D61736B]).generate_state(2, np.uint32)
    return torch.Generator(device=device).manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


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


class _MetricsLog:
    """metrics.jsonl + metrics.csv + TensorBoard, written by rank 0 only."""

    FIELDS = (
        "step",
        "epoch",
        "loss",
        "lr",
        "images_per_s",
        "data_wait",
        "step_time_s",
        "gpu_mem_gb",
        "corrupt",
    )

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # heavy import, rank 0 only

        self.jsonl = open(run_dir / "metrics.jsonl", "a")
        new_csv = not (run_dir / "metrics.csv").exists()
        self.csv_fh = open(run_dir / "metrics.csv", "a", newline="")
        self.csv = csv.DictWriter(self.csv_fh, fieldnames=self.FIELDS)
        if new_csv:
            self.csv.writeheader()
        self.tb = SummaryWriter(str(run_dir / "tb"))

    def write(self, record: dict) -> None:
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        self.csv.writerow(record)
        self.csv_fh.flush()
        for key in self.FIELDS[2:]:
            self.tb.add_scalar(f"pretrain/{key}", record[key], record["step"])

    def close(self) -> None:
        self.jsonl.close()
        self.csv_fh.close()
        self.tb.close()


class _Trainer:
    """One run's state and loop; :func:`run_pretrain` is the public entry."""

    def __init__(self, cfg: PretrainConfig, dd: _Dist, on_event: EventFn | None, on_batch: BatchFn | None) -> None:
        self.cfg, self.dd, self.on_batch = cfg, dd, on_batch
        self.on_event = on_event if dd.rank == 0 else None
        self.cuda = dd.device.type == "cuda"
        # Data and geometry first: bad input fails before a large model is built.
        self.stream = ShardStream(
            cfg.shards,
            cfg.batch_size,
            out_size=MODELS[cfg.model].img_size,
            seed=cfg.seed,
            rank=dd.rank,
            world_size=dd.world,
        )
        self.loader = StreamLoader(self.stream, cfg.workers, pin_memory=self.cuda)
        self.mean, self.std = self.stream.index.mean, self.stream.index.std
        self.dataset_stats, sample_mean, sample_std = _sample_stats(self.stream, cfg)
        self.sample_mean = torch.tensor(sample_mean, dtype=torch.float32, device=dd.device).view(-1, 1, 1, 1)
        self.sample_std = torch.tensor(sample_std, dtype=torch.float32, device=dd.device).view(-1, 1, 1, 1)
        per_step = cfg.batch_size * dd.world
        if cfg.eff_batch % per_step:
            raise PretrainError(f"eff_batch {cfg.eff_batch} is not a multiple of batch_size x world size = {per_step}")
        self.accum = cfg.eff_batch // per_step
        micro = self.stream.batches_per_epoch
        self.total_steps = cfg.steps if cfg.steps > 0 else math.ceil(cfg.epochs * micro / self.accum)
        self.warmup = cfg.warmup_steps if cfg.warmup_steps >= 0 else round(cfg.warmup_epochs * micro / self.accum)
        if self.cuda:
            torch.set_float32_matmul_precision("high")  # TF32 for what runs outside bf16 autocast
        self.model = build_mae(cfg.model).to(dd.device)
        self.base_lr = cfg.blr * cfg.eff_batch / 256
        self.ddp = (
            DistributedDataParallel(self.model, device_ids=[dd.device] if self.cuda else None)
            if dd.world > 1
            else self.model
        )
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, cfg.weight_decay),
            lr=self.base_lr,
            betas=(cfg.beta1, cfg.beta2),
            fused=self.cuda,
        )
        self.step, self.lr = 0, 0.0
        self.run_dir = Path(cfg.out)

    def resolved(self) -> dict:
        """The configuration plus every derived number, as saved in ``run_config.json``."""
        return {
            "config": asdict(self.cfg),
            "model": self.model.cfg.to_dict(),
            "world_size": self.dd.world,
            "accum_steps": self.accum,
            "lr": self.base_lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup,
            "micro_batches_per_epoch": self.stream.batches_per_epoch,
            "num_samples": self.stream.num_samples,
            "mean": self.mean,
            "std": self.std,
            "dataset_stats": self.dataset_stats,
            "device": str(self.dd.device),
            "torch": torch.__version__,
            "plankton_train": __version__,
        }

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.loader.load_state_dict(state["loader"])
        rngs = state["rng"]
        if len(rngs) != self.dd.world:
            raise PretrainError(f"checkpoint was written by {len(rngs)} ranks, this run has {self.dd.world}")
        set_rng_state(rngs[self.dd.rank])

    def checkpoint(self) -> Path:
        """All ranks call this; rank 0 writes ``checkpoints/step-N.pt`` and prunes old ones."""
        states = [None] * self.dd.world
        if self.dd.world > 1:
            dist.all_gather_object(states, rng_state())
        else:
            states = [rng_state()]
        path = self.run_dir / "checkpoints" / step_checkpoint_name(self.step)
        if self.dd.rank == 0:
            save_checkpoint(
                path,
                {
                    "model": self.model.state_dict(),
                    "model_cfg": self.model.cfg.to_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "step": self.step,
                    "loader": self.loader.state_dict(),
                    "rng": states,
                    "config": asdict(self.cfg),
                    "mean": self.mean,
                    "std": self.std,
                    "version": __version__,
                },
            )
            old = sorted((self.run_dir / "checkpoints").glob("step-*.pt"))[: -self.cfg.keep_checkpoints]
            for stale in old:
                stale.unlink()
            self._emit(event="checkpoint", path=str(path), step=self.step)
        if self.dd.world > 1:
            dist.barrier()
        return path

    def _emit(self, **record) -> None:
        if self.on_event is not None:
            self.on_event(record)

    def micro_step(self, batch: dict, last: bool) -> torch.Tensor:
        """Forward + backward of one micro-batch; gradients are all-reduced only on the last one."""
        index = batch["index"].to(self.dd.device, non_blocking=True)
        images = batch["images"].to(self.dd.device, non_blocking=True)
        images = normalize(images, self.sample_mean[index], self.sample_std[index])
        gen = _mask_generator(self.cfg.seed, self.dd.rank, batch["position"], self.dd.device)
        sync = nullcontext() if last or self.dd.world == 1 else self.ddp.no_sync()
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else nullcontext()
        with sync:
            with amp:
                loss = self.ddp(images, gen)
            (loss / self.accum).backward()
        return loss.detach()

    def fit(self, stop_after: int | None) -> tuple[float, Path | None]:
        """Run optimiser steps until the schedule ends (or ``stop_after`` steps); returns last loss, ckpt."""
        cfg, batches = self.cfg, iter(self.loader)
        metrics = _MetricsLog(self.run_dir) if self.dd.rank == 0 else None
        self._emit(event="start", step=self.step, **self.resolved())
        last_loss, ckpt, ckpt_step, done_here = math.nan, None, -1, 0
        window = _Window(self.dd.device)
        try:
            while self.step < self.total_steps and (stop_after is None or done_here < stop_after):
                self.lr = cosine_lr(self.step, self.total_steps, self.warmup, self.base_lr, cfg.min_lr)
                set_lr(self.optimizer, self.lr)
                for k in range(self.accum):
                    t0 = time.perf_counter()
                    batch = next(batches)
                    window.wait += time.perf_counter() - t0
                    if self.on_batch is not None:
                        self.on_batch(batch)
                    window.add(self.micro_step(batch, last=k == self.accum - 1), len(batch["index"]))
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                done_here += 1
                self._emit(event="step", step=self.step, total_steps=self.total_steps)
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    last_loss = self._log(window, metrics)
                    window = _Window(self.dd.device)
                if cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                    ckpt, ckpt_step = self.checkpoint(), self.step
            if ckpt_step != self.step:
                ckpt = self.checkpoint()
        finally:
            if metrics is not None:
                metrics.close()
        return last_loss, ckpt

    def _log(self, window: _Window, metrics: _MetricsLog | None) -> float:
        loss = window.loss_sum / max(1, window.micro)
        if self.dd.world > 1:
            dist.all_reduce(loss, op=dist.ReduceOp.AVG)
        loss_value = float(loss)  # the only host sync of the loop, once per log window
        if not math.isfinite(loss_value):
            raise PretrainError(f"loss became {loss_value} at step {self.step}; lower --blr or check the data")
        elapsed = time.perf_counter() - window.start
        record = {
            "step": self.step,
            "epoch": round(self.loader.position / self.stream.batches_per_epoch, 4),
            "loss": loss_value,
            "lr": self.lr,
            "images_per_s": window.images * self.dd.world / elapsed,
            "data_wait": window.wait / elapsed,
            "step_time_s": elapsed / max(1, window.steps(self.accum)),
            "gpu_mem_gb": torch.cuda.max_memory_allocated(self.dd.device) / 2**30 if self.cuda else 0.0,
            "corrupt": self.loader.corrupt_count,
        }
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.dd.device)
        if metrics is not None:
            metrics.write(record)
        self._emit(event="log", **record)
        return loss_value


class _Window:
    """Accumulators between two metric records (the loss stays on the device until logged)."""

    def __init__(self, device: torch.device) -> None:
        self.start = time.perf_counter()
        self.loss_sum = torch.zeros((), device=device)
        self.micro = self.images = 0
        self.wait = 0.0

    def add(self, loss: torch.Tensor, images: int) -> None:
        self.loss_sum += loss
        self.micro += 1
        self.images += images

    def steps(self, accum: int) -> int:
        return self.micro // accum


def _check_run_dir(run_dir: Path, resuming: bool) -> None:
    """A fresh run must not mix its checkpoints with an earlier run's (checked on every rank: no hang)."""
    ckpts = run_dir / "checkpoints"
    if not resuming and ckpts.is_dir() and any(ckpts.glob("step-*.pt")):
        raise PretrainError(f"{run_dir} already holds checkpoints; pass --resume {run_dir} or choose another --out")


def run_pretrain(
    cfg: PretrainConfig,
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
    dd = _init_distributed()
    try:
        torch.manual_seed(cfg.seed + dd.rank)
        run_dir = Path(cfg.out)
        _check_run_dir(run_dir, resume is not None)
        if dd.rank == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
        if dd.world > 1:
            dist.barrier()
        trainer = _Trainer(cfg, dd, on_event, on_batch)
        if resume is not None:
            trainer.restore(load_checkpoint(resume))
        if dd.rank == 0:
            (run_dir / RUN_CONFIG).write_text(json.dumps(trainer.resolved(), indent=2) + "\n")
        last_loss, ckpt = trainer.fit(stop_after)
        encoder = None
        if trainer.step >= trainer.total_steps and dd.rank == 0:
            encoder = export_encoder(
                trainer.model, run_dir / "encoder", trainer.mean, trainer.std, cfg.normalization, trainer.dataset_stats
            )
        trainer._emit(
            event="done",
            step=trainer.step,
            total_steps=trainer.total_steps,
            checkpoint=str(ckpt),
            encoder=str(encoder) if encoder else None,
        )
        return PretrainResult(run_dir, trainer.step, trainer.total_steps, last_loss, ckpt, encoder, trainer.model)
    finally:
        if dd.owns_group:
            dist.destroy_process_group()


def resume_config(checkpoint: Path | str, shards: str | None = None, workers: int | None = None) -> PretrainConfig:
    """The configuration stored in a checkpoint, optionally with the shard folder moved or workers changed.

    Neither changes the batches: the loader's position does not depend on the number of workers, and a
    moved shard folder is checked against the saved shard list.
    """
    saved = dict(load_checkpoint(checkpoint)["config"])
    if shards is not None:
        saved["shards"] = shards
    if workers is not None:
        saved["workers"] = workers
    return PretrainConfig(**saved)
