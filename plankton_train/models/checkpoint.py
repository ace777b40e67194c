"""The training checkpoint file: one ``torch.save`` of plain values, written atomically, found by step.

A checkpoint holds only tensors and plain Python values, so it loads with ``torch.load(weights_only=True)``:
model and optimiser state, optimiser step, loader position, the RNG states of every rank, the resolved run
configuration and the MAE architecture. The training engine writes it (:mod:`plankton_train.engine`); fine-tuning
reads the encoder out of it (an init may be a pretrain run that has not exported yet), which is why the file
format lives here, below both, and not in the engine.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch

from plankton_data.format.atomic import atomic_path
from plankton_train.errors import CheckpointError
from plankton_train.models.mae import MAE, MAEConfig

CHECKPOINT_FORMAT = "plankton-mae-checkpoint/1"
_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")


def save_checkpoint(path: Path, state: dict) -> Path:
    """Write ``state`` atomically (temp file + fsync + rename), so a crash never leaves half a file.

    The file carries ``digest``, a sha256 over every value in it, which :func:`load_checkpoint` checks: a
    flipped bit in the weights would otherwise load without a word (torch checks no data checksums).
    """
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # the temp file is removed if this fails
            torch.save({"format": CHECKPOINT_FORMAT, **state, "digest": state_digest(state)}, fh)
    except RuntimeError as exc:  # torch reports a failed write (a full disk) as RuntimeError, not OSError
        raise CheckpointError(f"cannot write checkpoint {path}: {str(exc).splitlines()[0]}") from exc
    return path


def state_digest(state: dict) -> str:
    """sha256 over every tensor's bytes and every other value of ``state``, in a fixed (sorted key) order."""
    h = hashlib.sha256()

    def walk(value: object, where: str) -> None:
        if isinstance(value, torch.Tensor):
            data = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
            h.update(f"{where}:{value.dtype}:{tuple(value.shape)}".encode())
            h.update(data.data)  # the array's buffer, no copy
        elif isinstance(value, dict):
            for key in sorted(value, key=repr):
                walk(value[key], f"{where}/{key!r}")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{where}[{i}]")
        else:
            h.update(f"{where}={value!r}".encode())

    walk({k: v for k, v in state.items() if k not in ("format", "digest", "path")}, "")
    return h.hexdigest()


def step_checkpoint_name(step: int) -> str:
    """File name of the checkpoint taken after optimiser step ``step``."""
    return f"step-{step:08d}.pt"


def latest_checkpoint(path: Path | str) -> Path:
    """``path`` if it is a file, else the highest-step checkpoint in ``path/checkpoints`` or ``path``."""
    path = Path(path)
    if path.is_file():
        return path
    for folder in (path / "checkpoints", path):
        found = sorted(p for p in folder.glob("step-*.pt") if _STEP_FILE.match(p.name)) if folder.is_dir() else []
        if found:
            return found[-1]
    raise CheckpointError(f"no checkpoint at {path}")


def load_checkpoint(path: Path | str) -> dict:
    """Load a training checkpoint (a file, or the latest in a run folder) onto the CPU."""
    path = latest_checkpoint(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # lazy: big files
    except Exception as exc:  # torch raises many types for a foreign or damaged file
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a plankton-train MAE checkpoint")
    stored = state.pop("digest", None)  # checkpoints written before the digest existed have none
    if stored is not None and stored != state_digest(state):
        raise CheckpointError(f"{path} is damaged: its contents do not match the digest written with it")
    state["path"] = str(path)
    return state


def load_mae(path: Path | str) -> tuple[MAE, dict]:
    """The trained :class:`MAE` (CPU, eval mode) and the raw checkpoint dict."""
    state = load_checkpoint(path)
    model = MAE(MAEConfig(**state["model_cfg"]))
    model.load_state_dict(state["model"])
    return model.eval(), state
