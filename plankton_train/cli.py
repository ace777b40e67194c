"""The ``plankton-train`` command line: a thin Typer layer over the library.

Commands live in ``plankton_train/commands/``; each module there has ``register(app)``.
"""

from __future__ import annotations

import typer

from plankton_train import __version__
from plankton_train.commands import finetune_cmds, pretrain_cmds

app = typer.Typer(
    name="plankton-train",
    help="Pretrain (MAE) and fine-tune Vision Transformers on plankton shard sets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"plankton-train {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """Pretrain (MAE) and fine-tune Vision Transformers on plankton shard sets."""


pretrain_cmds.register(app)
finetune_cmds.register(app)


def main() -> None:
    """Console-script entry point."""
    app()
