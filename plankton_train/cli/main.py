"""The ``plankton-train`` command line: a thin Typer layer over the library.

Commands live beside this module, each file with ``register(app)``: ``pretrain.py`` (pretrain, reconstruct) and
``finetune.py`` (splits, finetune, experiment, report, predict), ``demo.py`` (demo). They import the library inside
the command functions, so ``--help`` and ``--version`` never load torch.

Errors are handled once, for every command (:class:`_Commands`): a
:class:`~plankton_data.errors.PlanktonError` (the base of both packages' errors) or an ``OSError`` prints one
red ``error:`` line and exits with status 1 (``PLANKTON_DEBUG=1`` re-raises it, traceback and all); Ctrl-C
exits with status 130 and says how to resume.
"""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer
from rich.logging import RichHandler
from rich.markup import escape
from typer.core import TyperGroup

from plankton_data.errors import PlanktonError
from plankton_train import __version__
from plankton_train.cli import demo, finetune, pretrain
from plankton_train.cli._options import console

#: What Ctrl-C tells the user, by command (work already finished stays on disk).
RESUME_HINTS = {
    "pretrain": "checkpoints are kept; continue with `plankton-train pretrain --resume RUN_FOLDER`",
    "experiment": "finished cells are kept; rerun the same command to run the rest",
}
_RESTART = "nothing half-written is kept under a final name; rerun the same command"


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` as one line. An error raised in a DataLoader worker reaches the main process
    with the worker's whole traceback as its message; the line that matters is the original message at its end."""
    text = str(exc)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].endswith("Error") else last
    return " ".join(text.split())


class _Commands(TyperGroup):
    """The command group; its :meth:`invoke` is the one error handler of the CLI."""

    def invoke(self, ctx: typer.Context) -> object:  # type: ignore[override]  # typer hands its own Context
        try:
            return super().invoke(ctx)
        except (PlanktonError, OSError) as exc:
            if os.environ.get("PLANKTON_DEBUG"):
                raise
            console.print(f"[red]error:[/] {escape(one_line(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            hint = RESUME_HINTS.get(ctx.invoked_subcommand or "", _RESTART)
            console.print(f"[yellow]interrupted:[/] {escape(hint)}", highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None


app = typer.Typer(
    name="plankton-train",
    cls=_Commands,
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
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Pretrain (MAE) and fine-tune Vision Transformers on plankton shard sets."""
    # Progress logs of every command go to stderr, through Rich.
    logging.basicConfig(
        level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)]
    )


pretrain.register(app)
finetune.register(app)
demo.register(app)


def main() -> None:
    """Console-script entry point (``plankton-train``, or ``python -m plankton_train``)."""
    app(prog_name="plankton-train")


__all__ = ["app", "main"]
