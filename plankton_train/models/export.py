"""The exported encoder: a timm-loadable folder (``model.safetensors`` + ``config.json``), and loading it back.

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
from pathlib import Path
from typing import cast

import safetensors.torch
import timm
import torch
from timm.models import save_for_hf
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn

from plankton_train.errors import CheckpointError
from plankton_train.models.checkpoint import load_checkpoint
from plankton_train.models.mae import MAE, MAEConfig

ENCODER_WEIGHTS = "model.safetensors"
# Keys a fine-tuning model may lack (fresh head / pooling norm) or not need (final norm under avg pool).
_FRESH = ("head.", "fc_norm.")
_DROPPABLE = ("norm.",)


def export_encoder(
    model: MAE,
    folder: Path,
    *,
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
    model = cast(
        VisionTransformer, timm.create_model(arch, pretrained=False, pretrained_cfg_overlay=data_cfg, **kwargs)
    )
    weights = checkpoint_filter_fn(weights, model)  # resamples pos_embed / patch_embed if sizes changed
    result = model.load_state_dict(weights, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(_FRESH)]
    unexpected = [k for k in result.unexpected_keys if not k.startswith(_DROPPABLE)]
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit {arch} with {timm_kwargs}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model
