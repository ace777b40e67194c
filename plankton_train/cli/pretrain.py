"""``plankton-train pretrain`` and ``plankton-train reconstruct``: options -> config -> library call.

Errors are handled once for all commands (:mod:`plankton_train.cli.main`). Library imports are deferred to
the command functions so ``--help`` does not load torch; the model choices come from the torch-free registry.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from plankton_train.cli._options import console as _console
from plankton_train.engine.precision import PRECISIONS
from plankton_train.errors import PretrainError
from plankton_train.models.registry import MODEL_NAMES

ModelName = Enum("ModelName", {name: name for name in MODEL_NAMES}, type=str)  # type: ignore[misc]  # from the registry
_DEFAULT_MODEL = ModelName("vit_large_patch16_224")
Precision = Enum("Precision", {name: name for name in PRECISIONS}, type=str)  # type: ignore[misc]  # torch-free names
AUTO_PRECISION = Precision("auto")

#: ``--precision`` and ``--compile``, shared by ``pretrain`` and ``finetune``.
PrecisionOpt = Annotated[
    Precision,
    typer.Option(
        help="bf16 (autocast; also on a CPU) or fp32; auto: bf16 on a GPU, fp32 on a CPU. Recorded in the run."
    ),
]
CompileOpt = Annotated[
    bool, typer.Option("--compile/--no-compile", help="torch.compile the model (inductor; first steps compile).")
]


class _Display:
    """Rich progress bar plus one line per metric record (rank 0 only)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]pretrain"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
        )
        self.task: TaskID | None = None

    def __call__(self, record: dict) -> None:
        event = record["event"]
        if event == "start":
            self.console.print(
                f"{record['num_samples']} samples, {record['world_size']} rank(s) on {record['device']}, "
                f"accumulation {record['accum_steps']}, lr {record['lr']:.3g}, "
                f"{record['total_steps']} steps ({record['warmup_steps']} warmup), {record['precision']}"
                f"{', compiled (' + record['compile'] + ')' if record['compile'] else ''}"
            )
            self.progress.start()
            self.task = self.progress.add_task("", total=record["total_steps"], completed=record["step"], info="")
        elif event == "step" and self.task is not None:
            self.progress.update(self.task, completed=record["step"])
        elif event == "log" and self.task is not None:
            info = (
                f"loss {record['loss']:.4f}  lr {record['lr']:.2e}  {record['images_per_s']:.0f} img/s  "
                f"data-wait {100 * record['data_wait']:.1f}%"
            )
            self.progress.update(self.task, info=info)
            self.console.print(f"step {record['step']}  epoch {record['epoch']:.2f}  {info}")
        elif event == "checkpoint":
            self.console.print(f"checkpoint {record['path']}")
        elif event == "done":
            self.close()
            self.console.print(
                f"done at step {record['step']}/{record['total_steps']}; "
                f"checkpoint {record['checkpoint']}; encoder {record['encoder']}"
            )

    def close(self) -> None:
        if self.task is not None:
            self.progress.stop()
            self.task = None


def pretrain(
    shard_set: Annotated[
        str | None,
        typer.Option(
            help="One shard folder (with index.json), e.g. shards/no_daplankton, or its URL (s3://, gs://, https://:"
            " fetched into the local cache). Required unless --resume."
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Run folder: config, metrics, checkpoints, encoder.")] = Path(
        "runs/pretrain"
    ),
    model: Annotated[ModelName, typer.Option(help="Encoder architecture (timm name).")] = _DEFAULT_MODEL,
    img_size: Annotated[
        int, typer.Option(help="Network input side in px (0: the model's own: 224, or 64 for mae_cpu64).")
    ] = 0,
    batch_size: Annotated[int, typer.Option(help="Images per device per micro-step.")] = 256,
    eff_batch: Annotated[int, typer.Option(help="Images per optimiser step, all devices (accumulates).")] = 4096,
    blr: Annotated[float, typer.Option(help="Base learning rate; lr = blr * eff_batch / 256.")] = 1.5e-4,
    epochs: Annotated[float, typer.Option(help="Schedule length in epochs.")] = 800,
    warmup_epochs: Annotated[float, typer.Option(help="Linear warmup length in epochs.")] = 40,
    steps: Annotated[int, typer.Option(help="Schedule length in optimiser steps (overrides --epochs if > 0).")] = 0,
    warmup_steps: Annotated[int, typer.Option(help="Warmup in steps (overrides --warmup-epochs if >= 0).")] = -1,
    workers: Annotated[
        int | None, typer.Option(help="Loader processes per device [default: 8, or the checkpoint's].")
    ] = (None),
    seed: Annotated[int, typer.Option(help="Fixes sample order, augmentation and masks.")] = 0,
    normalization: Annotated[
        str,
        typer.Option(
            help="Input normalisation: 'set' (the set's mean/std, as the paper) or 'dataset' (each image with"
            " its source dataset's mean/std; both from index.json)."
        ),
    ] = "set",
    log_every: Annotated[int, typer.Option(help="Optimiser steps between metric records.")] = 20,
    ckpt_every: Annotated[int, typer.Option(help="Optimiser steps between checkpoints (0: only at the end).")] = 1000,
    keep_checkpoints: Annotated[int, typer.Option(help="Periodic checkpoints to keep.")] = 2,
    resume: Annotated[Path | None, typer.Option(help="Continue exactly from a checkpoint file or run folder.")] = None,
    stop_after: Annotated[
        int | None, typer.Option(help="Stop (with a checkpoint) after this many steps of this call.")
    ] = (None),
    precision: PrecisionOpt = AUTO_PRECISION,
    compile_model: CompileOpt = False,
) -> None:
    """Pretrain a Masked Autoencoder ViT on a shard folder (single device, or every rank under torchrun).

    Example:

        plankton-train pretrain --shard-set shards/all --out runs/mae-vitl

        plankton-train pretrain --shard-set shards/all --model mae_cpu64 --epochs 20 --batch-size 64 --eff-batch 64

        torchrun --nproc_per_node 8 --no-python plankton-train pretrain --shard-set shards/all --out runs/mae

    With --resume the run's settings come from the checkpoint: only --shard-set (a moved copy of
    the same shard set) and --workers may change; other training options (--precision and --compile too)
    are ignored.
    """
    from plankton_data.format.remote import localize  # a URL -> its cached, sha256-checked local copy
    from plankton_train.pretrain import PretrainConfig, resume_config, run_pretrain  # torch import: lazy

    rank0 = os.environ.get("RANK", "0") == "0"
    shard_set = None if shard_set is None else str(localize(shard_set))
    if resume is not None:
        cfg = resume_config(resume, shards=shard_set, workers=workers)
        if rank0:
            _console.print(f"resuming {cfg.out} from {resume}: training options come from the checkpoint")
    elif shard_set is None:
        raise PretrainError("--shard-set is required (or --resume a run)")
    else:
        cfg = PretrainConfig(
            shards=shard_set,
            out=str(out),
            model=ModelName(model).value,
            img_size=img_size,
            batch_size=batch_size,
            eff_batch=eff_batch,
            blr=blr,
            epochs=epochs,
            warmup_epochs=warmup_epochs,
            steps=steps,
            warmup_steps=warmup_steps,
            normalization=normalization,
            workers=8 if workers is None else workers,
            seed=seed,
            log_every=log_every,
            ckpt_every=ckpt_every,
            keep_checkpoints=keep_checkpoints,
            precision=Precision(precision).value,
            compile=compile_model,
        )
    display = _Display(_console) if rank0 else None
    try:
        run_pretrain(cfg, resume=resume, stop_after=stop_after, on_event=display)
    finally:
        if display is not None:
            display.close()


def reconstruct(
    checkpoint: Annotated[Path, typer.Option(help="Training checkpoint file or run folder.")],
    out: Annotated[Path, typer.Option(help="PNG file to write.")],
    shard_set: Annotated[
        str | None, typer.Option(help="Shard folder (or its URL) to draw images from [default: the training one].")
    ] = (None),
    n: Annotated[int, typer.Option(min=1, help="Number of images (rows).")] = 8,
    seed: Annotated[int, typer.Option(help="Picks the images and the masks.")] = 0,
) -> None:
    """Write an original / masked / reconstruction grid (Figure 3 of the paper).

    Example:

        plankton-train reconstruct --checkpoint runs/mae-vitl --out runs/mae-vitl/reconstruction.png
    """
    from plankton_data.format.remote import localize
    from plankton_train.protocol.reconstruct import reconstruct as make_figure  # torch import: lazy

    path = make_figure(checkpoint, out=out, shards=None if shard_set is None else localize(shard_set), n=n, seed=seed)
    typer.echo(str(path))


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("pretrain")(pretrain)
    app.command("reconstruct")(reconstruct)
