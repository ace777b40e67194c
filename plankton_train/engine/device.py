"""Where and how training runs: the device by name, autocast, torch.compile, and the torchrun process group.

``resolve_device`` serves fine-tuning and prediction (one device, chosen by name); pretraining runs on one
device or on every rank torchrun starts (:func:`init_distributed`: NCCL on GPU, gloo on CPU). The precision
names and their rules live in :mod:`plankton_train.engine.precision` (torch-free, for the CLI); :func:`autocast`
and :func:`compile_model` apply them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from plankton_train.engine.precision import resolve_precision
from plankton_train.errors import FinetuneError, PlanktonTrainError


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


def autocast(device: torch.device, precision: str = "auto") -> torch.autocast:
    """The forward-pass context of ``precision`` on ``device``: bf16 autocast, or a disabled autocast for fp32.

    ``auto``: bf16 on CUDA, fp32 elsewhere (see :mod:`plankton_train.engine.precision`). bf16 needs no loss
    scaling (fp16 ViT-L attention overflows); on a CPU it is ``torch.autocast("cpu", dtype=torch.bfloat16)``.
    """
    bf16 = resolve_precision(precision, device.type) == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def compile_problem(device: torch.device, backend: str) -> str | None:
    """Why ``torch.compile(backend=backend)`` cannot work on ``device`` here (one line), or ``None``.

    Cheap checks only (no kernel is compiled): dynamo supports this Python, and for ``inductor`` a C++ compiler
    (CPU; ``$CXX`` or ``g++``) or Triton (CUDA) is there. What slips through fails at the first step and
    :func:`compile_errors` turns it into one line too.
    """
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python/platform"
    if backend != "inductor":
        return None
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "inductor needs Triton for CUDA and it is not installed"
    if device.type == "cpu":
        from torch._inductor import cpp_builder

        try:
            cpp_builder.get_cpp_compiler()
        except Exception as exc:  # InvalidCxxCompiler, or a subprocess error of the compiler probe
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return f"inductor needs a C++ compiler on the CPU ({first})"
    return None


def check_compile(device: torch.device, backend: str, error: type[PlanktonTrainError]) -> None:
    """Raise ``error`` (one line) when :func:`compile_problem` finds one."""
    problem = compile_problem(device, backend)
    if problem is not None:
        raise error(f"--compile cannot work here: {problem}; run without --compile")


def compile_model(model: nn.Module, *, device: torch.device, backend: str, error: type[PlanktonTrainError]) -> None:
    """Compile ``model``'s forward in place (``nn.Module.compile``: state-dict keys unchanged, so checkpoints
    of compiled and eager runs are interchangeable). Compilation itself happens at the first call (wrap the
    loop in :func:`compile_errors`). Raises ``error`` (one line) where it cannot work."""
    check_compile(device, backend, error)
    model.compile(backend=backend)


@contextmanager
def compile_errors(error: type[PlanktonTrainError]) -> Iterator[None]:
    """Turn a torch.compile failure (raised lazily, at the first compiled call) into one ``error`` line."""
    try:
        yield
    except torch._dynamo.exc.BackendCompilerFailed as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        first = lines[0] if lines else type(exc).__name__
        raise error(f"torch.compile failed: {first}; run without --compile") from None


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
