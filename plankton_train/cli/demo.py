"""``plankton-train demo``: the whole toolkit on the built-in sample data, then a summary of stages and artefacts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from plankton_train.cli._options import console, out


def demo(
    output: Annotated[
        Path,
        typer.Option("--out", "-o", help="Folder for every stage's output (an earlier demo's folder is replaced)."),
    ] = Path("sample_data"),
    quick: Annotated[bool, typer.Option(help="CI-sized: less data, a few epochs (about 20 s on 2 cores).")] = False,
) -> None:
    """Raw sample archives -> ingest -> pretraining set (verified) -> MAE pretraining -> reconstruction figure ->
    splits -> fine-tuning (MAE encoder vs random init) -> report -> predictions, on a CPU in minutes.

    Example: plankton-train demo --out sample_data
    """
    from plankton_train.cli.pretrain import _Display
    from plankton_train.demo import DemoConfig, Stage, run_demo

    def stage(s: Stage) -> None:
        console.print(f"[green]✓[/] {s.name} ({s.seconds:.1f} s): {s.detail}", highlight=False)

    display = _Display(console)
    try:
        result = run_demo(output, cfg=DemoConfig.quick() if quick else DemoConfig(), on_stage=stage, on_event=display)
    finally:
        display.close()
    table = Table("stage", "time", "what it did", title=f"plankton-train demo -> {output}")
    for s in result.stages:
        table.add_row(s.name, f"{s.seconds:.1f} s", s.detail)
    table.add_row("total", f"{result.seconds:.1f} s", "")
    out.print(table)
    out.print("Open:")
    for label, path in result.artefacts.items():
        out.print(f"  {label:<19} {path}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add this module's command to ``app``."""
    app.command()(demo)
