"""RNG states of a training process, as checkpoint-safe values (exact resume of pretraining).

Each rank saves its own (torch CPU/CUDA, numpy, python) in the checkpoint's ``rng`` list; a resumed rank
restores the one it wrote. Only tensors and plain values, so the checkpoint loads with ``weights_only=True``.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def rng_state() -> dict:
    """This process's RNG states (torch CPU/CUDA, numpy, python) as checkpoint-safe values."""
    np_state: tuple = np.random.get_state(legacy=True)  # type: ignore[assignment]  # legacy form is a tuple
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
