"""The fine-tuning model: a timm ViT encoder (1 input channel) plus the paper's MLP head.

``encoder (pooled, D) -> Linear(D, 512) -> LayerNorm(512) -> GELU -> Linear(512, classes)``

Encoder initialisations (``init``):

* ``random`` - timm ``arch`` with random weights;
* ``imagenet`` - alias of ``timm:vit_large_patch16_224.augreg_in21k_ft_in1k`` (timm's ImageNet-21k ->
  ImageNet-1k ViT-L/16); with ``weights_file`` the same architecture loads a local copy of those weights;
* ``timm:NAME[.TAG]`` - any timm pretrained tag, from the hub or from ``weights_file``;
* ``hf-hub:ORG/NAME`` - a timm-format Hugging Face repo, e.g.
  ``hf-hub:Jookare/no_daplankton_vit_large_patch16_224.mae``;
* a local folder with ``config.json`` + weights - a downloaded copy of such a repo, or an encoder exported by
  ``plankton-train pretrain`` (timm's ``local-dir:`` source); a pretrain run folder (its ``encoder/``);
* a pretrain training checkpoint (``step-*.pt``, or a run folder with ``checkpoints/`` but no export yet);
* a local weights file (``.safetensors``/``.pth``/``.bin``) - weights for ``arch``.

RGB (3-channel) weights are converted to 1 channel by timm (the patch-embedding kernels are summed over
channels, which is exact for a gray image replicated to RGB). Pretrained weights are loaded into a source
model, then copied into the fine-tuning encoder, which may differ in pooling (``avg`` pooling drops the
pretrained final ``norm`` and adds a fresh ``fc_norm``, as MAE fine-tuning does) and drop path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from plankton_data.errors import PlanktonDataError
from plankton_train.checkpoint import CheckpointError, load_checkpoint, load_encoder
from plankton_train.models.mae import MAEConfig
from plankton_train.optim import param_groups

IMAGENET_TAG = "vit_large_patch16_224.augreg_in21k_ft_in1k"
#: Keys the fine-tuning encoder may lack in the pretrained weights, or the weights may carry unused.
_MAY_BE_MISSING = ("fc_norm.", "head.")
_MAY_BE_UNUSED = ("norm.", "head.", "fc_norm.")
#: timm kwargs fine-tuning decides itself, whatever a pretrained config says.
_FINETUNE_ARGS = ("in_chans", "num_classes", "global_pool", "drop_path_rate", "pretrained_cfg_overlay")


class ModelInitError(PlanktonDataError):
    """An initialisation that cannot be resolved or loaded."""


@dataclass(frozen=True)
class EncoderSpec:
    """Everything needed to rebuild the encoder (stored in checkpoints)."""

    arch: str = "vit_large_patch16_224"  # timm architecture for random / weights-file inits
    init: str = "imagenet"  # see the module docstring
    weights_file: str = ""  # local weights for `imagenet` / `timm:` / `arch`
    drop_path: float = 0.2
    global_pool: str = "avg"  # "avg" (MAE fine-tuning) or "token"
    model_kwargs: dict[str, Any] = field(
        default_factory=dict
    )  # extra timm kwargs (img_size, depth... for tests)


@dataclass(frozen=True)
class _Source:
    """A resolved init: how to rebuild the architecture offline, and where the weights come from."""

    arch: str  # timm name to build the fine-tuning encoder from
    model_args: dict[str, Any]  # timm kwargs that define the architecture (with the spec's model_kwargs)
    weights: str = ""  # "" (random), "timm" (create_model(timm_name, pretrained=True)) or "checkpoint"
    timm_name: str = ""  # tag, hf-hub:/local-dir: name for "timm" weights
    overlay: dict = field(default_factory=dict)  # pretrained_cfg_overlay (a local weights file)
    path: str = ""  # training checkpoint (file or run folder) for "checkpoint" weights


def _config_json(path: Path) -> tuple[str, dict]:
    """``(architecture, model_args)`` of a timm hub-layout ``config.json``, less the args fine-tuning sets."""
    try:
        config = json.loads(path.read_text())
        args = {k: v for k, v in (config.get("model_args") or {}).items() if k not in _FINETUNE_ARGS}
        return config["architecture"], args
    except (OSError, ValueError, KeyError) as exc:
        raise ModelInitError(f"{path} is not a timm model config ({exc})") from exc


def _hub_config(repo: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, "config.json"))
    except Exception as exc:  # offline, unknown repo, auth: huggingface_hub raises many types
        raise ModelInitError(
            f"cannot fetch config.json of hf-hub:{repo}: {str(exc).splitlines()[0]}"
        ) from exc


def _resolve(spec: EncoderSpec) -> _Source:
    init, extra = spec.init, dict(spec.model_kwargs)
    overlay = {"file": spec.weights_file} if spec.weights_file else {}
    if init == "random":
        return _Source(spec.arch, extra)
    if init == "imagenet" or init.startswith("timm:"):
        name = IMAGENET_TAG if init == "imagenet" else init[5:]
        return _Source(name, extra, "timm", name, overlay)
    if init.startswith("hf-hub:"):
        arch, args = _config_json(_hub_config(init[7:]))
        return _Source(arch, {**args, **extra}, "timm", init)
    path = Path(init[10:] if init.startswith("local-dir:") else init).expanduser().resolve()
    if (path / "encoder" / "config.json").is_file():
        path = path / "encoder"  # a finished `plankton-train pretrain` run folder: its exported encoder
    if (path / "checkpoints").is_dir() or path.suffix == ".pt":  # a pretrain run without export yet
        try:
            state = load_checkpoint(path)
        except CheckpointError as exc:
            raise ModelInitError(str(exc)) from exc
        cfg = MAEConfig(**state["model_cfg"])
        return _Source(cfg.arch, {**cfg.timm_args(), **extra}, "checkpoint", path=str(path))
    if (path / "config.json").is_file():
        arch, args = _config_json(path / "config.json")
        return _Source(arch, {**args, **extra}, "timm", f"local-dir:{path}")
    if path.is_file():
        return _Source(spec.arch, extra, "timm", spec.arch, {"file": str(path)})
    if path.is_dir():
        raise ModelInitError(
            f"{path} has no config.json (timm model folder), encoder/ or checkpoints/ (pretrain run)"
        )
    raise ModelInitError(
        f"unknown init {init!r}: use random, imagenet, timm:NAME, hf-hub:ORG/NAME, a model folder, "
        "a pretrain run or checkpoint, or a weights file"
    )


def _source_model(src: _Source, spec: EncoderSpec) -> nn.Module:
    if src.weights == "checkpoint":
        return load_encoder(src.path, num_classes=0, **spec.model_kwargs)
    return timm.create_model(
        src.timm_name,
        pretrained=True,
        num_classes=0,
        in_chans=1,
        pretrained_cfg_overlay=src.overlay or None,
        **spec.model_kwargs,
    )


def _pretrained_norm(model: nn.Module) -> tuple[float, float] | None:
    """Input mean/std (in [0, 1]) the weights were trained with, from timm's ``pretrained_cfg``.

    Per-channel values (ImageNet RGB) are averaged: the 1-channel encoder sees gray images.
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if not cfg.get("mean") or not cfg.get("std"):
        return None
    return float(sum(cfg["mean"]) / len(cfg["mean"])), float(sum(cfg["std"]) / len(cfg["std"]))


@dataclass
class Encoder:
    """A built encoder, what rebuilds it, and the input normalisation its weights expect."""

    module: nn.Module
    spec: EncoderSpec  # same architecture with init="random": rebuilds offline (weights come separately)
    norm: tuple[float, float] | None  # pretraining (mean, std) in [0, 1]; None for random init


def build_encoder(spec: EncoderSpec, pretrained: bool = True) -> Encoder:
    """The timm ViT encoder, ``num_classes=0`` (pooled features), ``in_chans=1``, with ``spec``'s weights.

    ``pretrained=False`` builds the architecture only (when a fine-tuned checkpoint's weights follow).
    """
    src = _resolve(spec)
    rebuild = replace(spec, arch=src.arch, init="random", weights_file="", model_kwargs=src.model_args)
    try:
        args = {**src.model_args, "in_chans": 1, "num_classes": 0}
        encoder = timm.create_model(
            src.arch, pretrained=False, drop_path_rate=spec.drop_path, global_pool=spec.global_pool, **args
        )
        if not (pretrained and src.weights):
            return Encoder(encoder, rebuild, None)
        source = _source_model(src, spec)
    except (RuntimeError, OSError, ValueError, KeyError, CheckpointError) as exc:
        raise ModelInitError(f"cannot create encoder from {spec.init!r}: {str(exc).splitlines()[0]}") from exc
    result = encoder.load_state_dict(source.state_dict(), strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(_MAY_BE_MISSING)]
    unused = [k for k in result.unexpected_keys if not k.startswith(_MAY_BE_UNUSED)]
    if missing or unused:
        raise ModelInitError(
            f"weights of {spec.init!r} do not fit {src.arch}: missing {missing[:4]}, unused {unused[:4]}"
        )
    return Encoder(encoder, rebuild, _pretrained_norm(source))


class PlanktonClassifier(nn.Module):
    """ViT encoder + ``Linear(D, 512) -> LayerNorm -> GELU -> Linear(512, classes)``.

    Input ``(B, 1, S, S)`` float (normalised); output logits ``(B, classes)``.
    """

    def __init__(self, encoder: Encoder, num_classes: int, hidden: int = 512) -> None:
        super().__init__()
        self.encoder = encoder.module
        self.spec = encoder.spec  # rebuild spec, stored with checkpoints
        self.pretrained_norm = encoder.norm  # input (mean, std) the encoder weights expect, if known
        dim = self.encoder.num_features
        self.head = nn.Sequential(
            nn.Linear(dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, num_classes)
        )
        for m in self.head:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled encoder features ``(B, D)``: the embeddings ``predict`` can export."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def build_classifier(spec: EncoderSpec, num_classes: int, pretrained: bool = True) -> PlanktonClassifier:
    """Encoder from ``spec`` (weights loaded unless ``pretrained=False``) plus a freshly initialised head."""
    return PlanktonClassifier(build_encoder(spec, pretrained=pretrained), num_classes)


def layer_id(name: str, depth: int) -> int:
    """Layer index of a classifier parameter for layer-wise lr decay (MAE ``param_groups_lrd`` semantics).

    Stem (``cls_token``, ``reg_token``, ``pos_embed``, ``patch_embed.*``) -> 0; ``blocks.k.*`` -> ``k + 1``;
    everything after the blocks (``norm``, ``fc_norm``, the head) -> ``depth + 1``.
    """
    if name.startswith("encoder."):
        rest = name[len("encoder.") :]
        if rest.startswith(("cls_token", "reg_token", "pos_embed", "patch_embed")):
            return 0
        if rest.startswith("blocks."):
            return int(rest.split(".")[1]) + 1
    return depth + 1


def layer_decay_groups(model: PlanktonClassifier, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW parameter groups with ``lr_scale = layer_decay ** (depth + 1 - layer_id)``.

    Weight decay as in pretraining (:func:`plankton_train.optim.param_groups`: none on norms, biases and
    position/class tokens). The scale is only a key in the group: the schedule must multiply it in
    (:func:`plankton_train.optim.set_lr` does), because torch optimisers ignore unknown keys - the timm
    pitfall where layer decay silently does nothing.
    """
    depth = len(model.encoder.blocks)
    return param_groups(
        model, weight_decay, lr_scale_fn=lambda name: layer_decay ** (depth + 1 - layer_id(name, depth))
    )
