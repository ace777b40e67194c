"""What every ``plankton-train`` command shares: the two consoles and the checked free-form options.

Nothing here imports torch: ``plankton-train --help`` loads only Typer, Rich and these names.
"""

from __future__ import annotations

import re
from typing import Annotated

import typer
from rich.console import Console

console = Console(stderr=True)  # progress, logs and errors
out = Console()  # results

#: What ``--device`` accepts (``resolve_device`` then checks that the device exists).
DEVICE_CHOICES = "auto|cpu|cuda|cuda:N|mps"
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _device(value: str) -> str:
    if not _DEVICE.fullmatch(value):
        raise typer.BadParameter(f"{value!r} is not one of {DEVICE_CHOICES.replace('|', ', ')}")
    return value


DeviceOpt = Annotated[
    str, typer.Option(metavar=f"<{DEVICE_CHOICES}>", callback=_device, help="Device to run on (auto: a GPU if any).")
]


def floats(text: str) -> tuple[float, ...]:
    """``"0.01,0.1"`` -> ``(0.01, 0.1)``; a usage error for anything that is not numbers."""
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}") from None
