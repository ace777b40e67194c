"""Where training runs: the device by name, bf16 autocast, and the torchrun process group.

``resolve_device`` serves fine-tuning and prediction (one device, chosen by name); pretraining runs on one
device or on every rank torchrun starts (:func:`init_distributed`: NCCL on GPU, gloo on CPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from plankton_train.errors import FinetuneError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> the first GPU if there is one, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise FinetuneError(f"unknown device {name!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FinetuneError(f"device {name!r} asked for, but no GPU is visible")
    return device


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on GPU, a no-op on CPU."""
    # bf16 needs no loss scaling (fp16 ViT-L attention overflows); CPU stays fp32.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank, world size, device."""

    rank: int
    world: int
    device: torch.device
    owns_group: bool  # we initialised the process group, so we destroy it


def init_distributed() -> Dist:
    """Single process, or DDP from torchrun's RANK/WORLD_SIZE/LOCAL_RANK (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world == 1:
        return Dist(0, 1, torch.device("cuda" if cuda else "cpu"), False)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    return Dist(rank, world, device, owns)
