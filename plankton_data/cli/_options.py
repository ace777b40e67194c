"""What every ``plankton-data`` command shares: option aliases, the two consoles, one progress bar."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

console = Console(stderr=True)  # progress, warnings and errors
out = Console()  # results

ShardsOpt = Annotated[Path, typer.Option("--shards", help="Root folder of shard folders.")]
ManifestsOpt = Annotated[Path, typer.Option("--manifests", help="Folder of Parquet manifests.")]
WorkersOpt = Annotated[
    int, typer.Option("--workers", "-w", min=0, help="Worker processes for image work (0 = one per CPU core).")
]


class ImageFormat(str, Enum):
    """Stored image encodings."""

    jpg = "jpg"
    png = "png"


class RichProgress:
    """Rich progress bar with a rate, fed by the library's ``progress(done, total)`` callback.

    Shown from the first call, so an error raised before any work prints nothing but its one line. Work a
    resumed run finds done (the first ``done``) does not count towards the rate.
    """

    def __init__(self, label: str, unit: str = "img") -> None:
        self._bar = Progress(
            TextColumn("[bold]" + escape(label).replace("{", "{{").replace("}", "}}")),  # markup- and format-safe
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(f"{{task.fields[rate]:>7.0f}} {unit}/s"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self._task: TaskID | None = None
        self._t0 = 0.0
        self._first = 0

    def __enter__(self) -> RichProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._bar.stop()

    def __call__(self, done: int, total: int) -> None:
        if self._task is None:
            self._bar.start()
            self._task = self._bar.add_task("", total=total, rate=0.0)
            self._t0, self._first = time.perf_counter(), done
        rate = (done - self._first) / max(1e-9, time.perf_counter() - self._t0)
        self._bar.update(self._task, completed=done, rate=rate)
