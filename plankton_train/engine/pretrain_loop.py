"""The MAE pretraining loop: accumulated micro-steps, per-step cosine lr, metric records, checkpoints.

:func:`plankton_train.pretrain.run_pretrain` builds the pieces (stream loader, model, optimiser, schedule) and
hands them to :class:`Trainer`, which owns everything that happens per step. Gradients are all-reduced only on
the last micro-step of an optimiser step (``no_sync`` on the others), the forward runs under the run's precision
(:func:`~plankton_train.engine.device.autocast`: bf16 or fp32, on any device), and the loss stays on the device
between metric records (one host sync per record).

Determinism: the batch at loader position ``g`` and its mask depend only on ``(seed, rank, g)``, so a run
resumed from a checkpoint takes exactly the steps the uninterrupted run would have taken.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from plankton_data.format import atomic
from plankton_train.data.augment import normalize
from plankton_train.data.stream import StreamLoader
from plankton_train.engine.device import Dist, autocast
from plankton_train.engine.optim import cosine_lr, set_lr
from plankton_train.engine.rng import rng_state, set_rng_state
from plankton_train.errors import PretrainError
from plankton_train.models.checkpoint import save_checkpoint, step_checkpoint_name
from plankton_train.models.mae import MAE

#: ``on_batch(batch)``: sees every micro-batch dict before its step (monitoring, tests).
BatchFn = Callable[[dict], None]
#: ``on_event(record)``: progress hook (rank 0 only); ``record["event"]`` is start/step/log/checkpoint/done.
EventFn = Callable[[dict], None]


@dataclass(frozen=True)
class Schedule:
    """How many optimiser steps, of how many micro-batches, at which learning rates."""

    total_steps: int
    warmup_steps: int
    accum: int  # micro-batches per optimiser step (gradient accumulation)
    base_lr: float
    min_lr: float

    def lr(self, step: int) -> float:
        """Learning rate of optimiser step ``step``: linear warmup, then half-cycle cosine."""
        return cosine_lr(step, self.total_steps, self.warmup_steps, self.base_lr, self.min_lr)


@dataclass(frozen=True)
class Cadence:
    """When the loop writes: metric records, checkpoints, how many periodic checkpoints it keeps."""

    log_every: int
    ckpt_every: int  # 0: only at the end
    keep_checkpoints: int


def mask_generator(seed: int, rank: int, position: int, device: torch.device) -> torch.Generator:
    """The mask RNG for one micro-batch: a pure function of (seed, rank, loader position)."""
    state = np.random.SeedSequence([seed, rank, position, 0x6D61736B]).generate_state(2, np.uint32)
    return torch.Generator(device=device).manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


class MetricsLog:
    """metrics.jsonl + metrics.csv + TensorBoard, written by rank 0 only.

    ``step``: the optimiser step the run starts from. Records of later steps (logged after the checkpoint a
    resumed run continues from) are dropped from the files first, and TensorBoard purges them, so each step
    is recorded once however often a run is interrupted.
    """

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

    def __init__(self, run_dir: Path, step: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter  # heavy import, rank 0 only

        _drop_records_after(run_dir / "metrics.jsonl", step, lambda line: json.loads(line)["step"])
        _drop_records_after(run_dir / "metrics.csv", step, lambda line: int(line.split(",", 1)[0]), header=True)
        self.jsonl = open(run_dir / "metrics.jsonl", "a")
        new_csv = not (run_dir / "metrics.csv").exists()
        self.csv_fh = open(run_dir / "metrics.csv", "a", newline="")
        self.csv = csv.DictWriter(self.csv_fh, fieldnames=self.FIELDS)
        if new_csv:
            self.csv.writeheader()
        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=step + 1 if step else None)

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


def _drop_records_after(path: Path, step: int, step_of: Callable[[str], int], header: bool = False) -> None:
    """Rewrite a metrics file (atomically) without the records of steps after ``step``; a torn line goes too."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    head, body = (lines[:1], lines[1:]) if header else ([], lines)

    def keep(line: str) -> bool:
        try:
            return line.endswith("\n") and step_of(line) <= step
        except (ValueError, KeyError):
            return False

    kept = [line for line in body if keep(line)]
    if len(kept) != len(body):
        atomic.write_bytes(path, "".join(head + kept).encode())


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


class Trainer:
    """One run's training state and step loop (the model is wrapped in DDP when there are several ranks).

    Args:
        model: the MAE, on ``dd.device``.
        optimizer: over ``model``'s parameters; its learning rate is set before every step.
        loader: the stream loader of this rank (its position is part of the checkpoint).
        dd: this process's rank, world size and device.
        schedule, cadence: steps and learning rates; when to log and checkpoint.
        sample_mean, sample_std: ``(N,)`` float tensors on the device, each sample's normalisation.
        seed: with the rank and loader position, fixes every mask.
        run_dir: where ``metrics.*``, ``tb/`` and ``checkpoints/`` go.
        extra_state: more values for every checkpoint (the run configuration, pixel statistics, version).
        precision: ``bf16`` or ``fp32`` (resolved, see :mod:`plankton_train.engine.precision`).
        on_event, on_batch: see :data:`EventFn` (rank 0 only) and :data:`BatchFn`.
    """

    def __init__(
        self,
        *,
        model: MAE,
        optimizer: torch.optim.Optimizer,
        loader: StreamLoader,
        dd: Dist,
        schedule: Schedule,
        cadence: Cadence,
        sample_mean: torch.Tensor,
        sample_std: torch.Tensor,
        seed: int,
        run_dir: Path,
        extra_state: dict,
        precision: str = "auto",
        on_event: EventFn | None = None,
        on_batch: BatchFn | None = None,
    ) -> None:
        self.model, self.optimizer, self.loader, self.dd = model, optimizer, loader, dd
        self.schedule, self.cadence, self.seed, self.run_dir = schedule, cadence, seed, run_dir
        self.sample_mean = sample_mean.view(-1, 1, 1, 1)
        self.sample_std = sample_std.view(-1, 1, 1, 1)
        self.extra_state, self.on_batch, self.precision = extra_state, on_batch, precision
        self.on_event = on_event if dd.rank == 0 else None
        self.cuda = dd.device.type == "cuda"
        self.ddp = (
            DistributedDataParallel(model, device_ids=[dd.device] if self.cuda else None) if dd.world > 1 else model
        )
        self.step, self.lr = 0, 0.0

    def restore(self, state: dict) -> None:
        """Continue from a checkpoint dict (:func:`~plankton_train.models.checkpoint.load_checkpoint`)."""
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
        states: list[dict | None] = [None] * self.dd.world
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
                    **self.extra_state,
                },
            )
            old = sorted((self.run_dir / "checkpoints").glob("step-*.pt"))[: -self.cadence.keep_checkpoints]
            for stale in old:
                stale.unlink()
            self.emit(event="checkpoint", path=str(path), step=self.step)
        if self.dd.world > 1:
            dist.barrier()
        return path

    def emit(self, **record) -> None:
        """Send a progress record to ``on_event`` (rank 0 only)."""
        if self.on_event is not None:
            self.on_event(record)

    def micro_step(self, batch: dict, last: bool) -> torch.Tensor:
        """Forward + backward of one micro-batch; gradients are all-reduced only on the last one."""
        index = batch["index"].to(self.dd.device, non_blocking=True)
        images = batch["images"].to(self.dd.device, non_blocking=True)
        images = normalize(images, self.sample_mean[index], self.sample_std[index])
        gen = mask_generator(self.seed, self.dd.rank, batch["position"], self.dd.device)
        sync = nullcontext() if not isinstance(self.ddp, DistributedDataParallel) or last else self.ddp.no_sync()
        with sync:
            with autocast(self.dd.device, self.precision):
                loss = self.ddp(images, gen)
            (loss / self.schedule.accum).backward()
        return loss.detach()

    def fit(self, stop_after: int | None, start: dict) -> tuple[float, Path | None]:
        """Run optimiser steps until the schedule ends (or ``stop_after`` steps); returns last loss, ckpt.

        ``start``: the resolved run description, sent with the ``start`` event.
        """
        sched, cadence, batches = self.schedule, self.cadence, iter(self.loader)
        metrics = MetricsLog(self.run_dir, self.step) if self.dd.rank == 0 else None
        self.emit(event="start", step=self.step, **start)
        last_loss, ckpt, ckpt_step, done_here = math.nan, None, -1, 0
        window = _Window(self.dd.device)
        try:
            while self.step < sched.total_steps and (stop_after is None or done_here < stop_after):
                self.lr = sched.lr(self.step)
                set_lr(self.optimizer, self.lr)
                for k in range(sched.accum):
                    t0 = time.perf_counter()
                    batch = next(batches)
                    window.wait += time.perf_counter() - t0
                    if self.on_batch is not None:
                        self.on_batch(batch)
                    window.add(self.micro_step(batch, last=k == sched.accum - 1), len(batch["index"]))
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                done_here += 1
                self.emit(event="step", step=self.step, total_steps=sched.total_steps)
                if self.step % cadence.log_every == 0 or self.step == sched.total_steps:
                    last_loss = self._log(window, metrics)
                    window = _Window(self.dd.device)
                if cadence.ckpt_every and self.step % cadence.ckpt_every == 0:
                    ckpt, ckpt_step = self.checkpoint(), self.step
            if ckpt_step != self.step:
                ckpt = self.checkpoint()
        finally:
            if metrics is not None:
                metrics.close()
        return last_loss, ckpt

    def _log(self, window: _Window, metrics: MetricsLog | None) -> float:
        loss = window.loss_sum / max(1, window.micro)
        if self.dd.world > 1:
            dist.all_reduce(loss, op=dist.ReduceOp.AVG)
        loss_value = float(loss)  # the only host sync of the loop, once per log window
        if not math.isfinite(loss_value):
            raise PretrainError(f"loss became {loss_value} at step {self.step}; lower --blr or check the data")
        elapsed = time.perf_counter() - window.start
        record = {
            "step": self.step,
            "epoch": round(self.loader.position / len(self.loader), 4),
            "loss": loss_value,
            "lr": self.lr,
            "images_per_s": window.images * self.dd.world / elapsed,
            "data_wait": window.wait / elapsed,
            "step_time_s": elapsed / max(1, window.steps(self.schedule.accum)),
            "gpu_mem_gb": torch.cuda.max_memory_allocated(self.dd.device) / 2**30 if self.cuda else 0.0,
            "corrupt": self.loader.corrupt_count,
        }
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.dd.device)
        if metrics is not None:
            metrics.write(record)
        self.emit(event="log", **record)
        return loss_value
