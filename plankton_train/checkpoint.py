"""Training checkpoints (exact resume) and the exported encoder (timm-loadable safetensors + config).

A training checkpoint is one ``torch.save`` file holding only tensors and plain Python values, so it loads
with ``torch.load(weights_only=True)``: model and optimiser state, optimiser step, loader position, the RNG
states of every rank, the resolved run configuration and the MAE architecture.

The exported encoder is the bare timm ``VisionTransformer`` (no lightly wrapper, hence no ``mask_token``
key, which timm would mistake for DINOv2), written by timm's own ``save_for_hf``: ``model.safetensors`` and
a ``config.json`` whose ``pretrained_cfg`` carries 1-channel input size and the shard set's mean/std.
Loading either works::

    timm.create_model("vit_large_patch16_224", pretrained=True, in_chans=1, num_classes=0,
                      pretrained_cfg_overlay=dict(file="run/encoder/model.safetensors"))
    timm.create_model("local-dir:run/encoder", pretrained=True)
    load_encoder("run/encoder", num_classes=10, global_pool="avg", drop_path_rate=0.2)
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import numpy as np
import safetensors.torch
import timm
import torch
from timm.models import save_for_hf
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn

from plankton_data.errors import PlanktonDataError
from plankton_train.models.mae import MAE, MAEConfig

CHECKPOINT_FORMAT = "plankton-mae-checkpoint/1"
ENCODER_WEIGHTS = "model.safetensors"
_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")
# Keys a fine-tuning model may lack (fresh head / pooling norm) or not need (final norm under avg pool).
_FRESH = ("head.", "fc_norm.")
_DROPPABLE = ("norm.",)


class CheckpointError(PlanktonDataError):
    """A checkpoint or encoder folder that is missing, foreign or does not fit the requested model."""


def save_checkpoint(path: Path, state: dict) -> Path:
    """Write ``state`` atomically (temp file + fsync + rename), so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "wb") as fh:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


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
    state["path"] = str(path)
    return state


def load_mae(path: Path | str) -> tuple[MAE, dict]:
    """The trained :class:`MAE` (CPU, eval mode) and the raw checkpoint dict."""
    state = load_checkpoint(path)
    model = MAE(MAEConfig(**state["model_cfg"]))
    model.load_state_dict(state["model"])
    return model.eval(), state


def rng_state() -> dict:
    """This process's RNG states (torch CPU/CUDA, numpy, python) as checkpoint-safe values."""
    np_state = np.random.get_state()
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


def export_encoder(
    model: MAE,
    folder: Path,
    mean: float,
    std: float,
    normalization: str = "set",
    dataset_stats: dict[str, list[float]] | None = None,
) -> Path:
    """Write the encoder as ``folder/model.safetensors`` + ``folder/config.json`` (timm hub layout).

    ``mean``/``std`` (shard-set pixel statistics in [0, 1] units) go into the config's data settings, so
    ``timm.data.resolve_data_config`` gives one normalisation for the encoder. With per-dataset pretraining
    (``normalization="dataset"``) each image was normalised with its own dataset's statistics, recorded as
    ``plankton_normalization`` in ``config.json``; fine-tune with the target dataset's own statistics then.
    """
    cfg = model.cfg
    save_for_hf(
        model.encoder,
        str(folder),
        model_config={
            "pretrained_cfg": {"tag": "plankton_mae", "license": None},  # not timm's augreg tag
            "plankton_normalization": {"mode": normalization, "dataset_stats": dataset_stats or {}},
        },
        model_args=cfg.timm_args(),
        safe_serialization=True,
        data_config={
            "input_size": (cfg.in_chans, cfg.img_size, cfg.img_size),
            "mean": (mean,) * cfg.in_chans,
            "std": (std,) * cfg.in_chans,
            "interpolation": "bicubic",
            "crop_pct": 224 / 256,  # the paper's Resize(256) + CenterCrop(224)
        },
    )
    return folder


def _encoder_source(path: Path) -> tuple[str, dict, dict, dict[str, torch.Tensor]]:
    """``(arch, timm model args, pretrained_cfg overlay, encoder weights)`` from an encoder folder, run
    folder or checkpoint."""
    for folder in (path, path / "encoder"):
        if (folder / ENCODER_WEIGHTS).is_file() and (folder / "config.json").is_file():
            config = json.loads((folder / "config.json").read_text())
            weights = safetensors.torch.load_file(folder / ENCODER_WEIGHTS)
            return config["architecture"], config.get("model_args", {}), config["pretrained_cfg"], weights
    state = load_checkpoint(path)
    cfg = MAEConfig(**state["model_cfg"])
    prefix = "backbone.vit."
    weights = {k[len(prefix) :]: v for k, v in state["model"].items() if k.startswith(prefix)}
    data: dict = {"input_size": (cfg.in_chans, cfg.img_size, cfg.img_size)}
    if "mean" in state and "std" in state:
        data.update(mean=(state["mean"],) * cfg.in_chans, std=(state["std"],) * cfg.in_chans)
    return cfg.arch, cfg.timm_args(), data, weights


def load_encoder(path: Path | str, num_classes: int = 0, **timm_kwargs) -> nn.Module:
    """A timm ViT initialised with pretrained MAE encoder weights, ready for fine-tuning or features.

    Args:
        path: an exported encoder folder (``config.json`` + ``model.safetensors``), a run folder (its
            ``encoder/``, else its latest checkpoint) or a training checkpoint file.
        num_classes: classifier outputs; 0 gives a feature extractor (``forward`` returns pooled features).
        **timm_kwargs: passed to ``timm.create_model`` (e.g. ``global_pool="avg"``, ``drop_path_rate=0.2``,
            ``img_size=...``; position embeddings are resampled to a new size).

    Returns:
        The model on the CPU. A new classifier head and ``fc_norm`` are freshly initialised; every other
        weight comes from the checkpoint (checked: anything else missing raises :class:`CheckpointError`).
        ``model.pretrained_cfg`` carries the pretraining mean/std and input size, so
        ``timm.data.resolve_data_config(model=model)`` reports them.
    """
    path = Path(path)
    arch, model_args, data_cfg, weights = _encoder_source(path)
    kwargs = {**model_args, **timm_kwargs, "num_classes": num_classes}
    model = timm.create_model(arch, pretrained=False, pretrained_cfg_overlay=data_cfg, **kwargs)
    weights = checkpoint_filter_fn(weights, model)  # resamples pos_embed / patch_embed if sizes changed
    result = model.load_state_dict(weights, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(_FRESH)]
    unexpected = [k for k in result.unexpected_keys if not k.startswith(_DROPPABLE)]
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit {arch} with {timm_kwargs}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model
