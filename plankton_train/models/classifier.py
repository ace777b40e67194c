"""The fine-tuning model: a timm ViT encoder (1 input channel) plus the paper's MLP head.

``encoder (pooled, D) -> Linear(D, 512) -> LayerNorm(512) -> GELU -> Linear(512, classes)``

Encoder initialisations (``init``):

* ``random`` - timm ``arch`` with random weights;
* ``imagenet`` - the paper's baseline (a), an ImageNet-1k *self-supervised* ViT-L/16: alias of
  ``timm:vit_large_patch16_224.mae`` (the MAE authors' encoder, no classifier head, ``pretrained_cfg``
  ``num_classes=0``); with ``weights_file`` the same architecture loads a local copy of those weights;
* ``imagenet-supervised`` - alias of ``timm:vit_large_patch16_224.augreg_in21k_ft_in1k`` (timm's *supervised*
  ImageNet-21k -> ImageNet-1k ViT-L/16; not the paper's baseline), ``weights_file`` as for ``imagenet``;
* ``timm:NAME[.TAG]`` - any timm pretrained tag, from the hub or from ``weights_file``;
* ``hf-hub:ORG/NAME[@REVISION]`` - a timm-format Hugging Face repo (``config.json`` with ``architecture`` and
  ``pretrained_cfg``, ``model.safetensors``), e.g. the paper authors' encoders
  ``hf-hub:Jookare/plankton_vit_large_patch16_224.mae`` and ``hf-hub:Jookare/no_daplankton_vit_large_patch16_224.mae``;
* a local folder with ``config.json`` + weights - a downloaded copy of such a repo (the layout timm's
  ``push_to_hf_hub``/``save_for_hf`` writes), or an encoder exported by ``plankton-train pretrain`` (timm's
  ``local-dir:`` source); a pretrain run folder (its ``encoder/``);
* a pretrain training checkpoint (``step-*.pt``, or a run folder with ``checkpoints/`` but no export yet);
* a local weights file (``.safetensors``/``.pth``/``.bin``) - weights for ``arch``.

RGB (3-channel) weights are converted to 1 channel by timm (the patch-embedding kernels are summed over
channels, which is exact for a gray image replicated to RGB). Pretrained weights are loaded into a source
model, then copied into the fine-tuning encoder, which may differ in pooling (``avg`` pooling drops the
pretrained final ``norm`` and adds a fresh ``fc_norm``, as MAE fine-tuning does) and drop path. A classifier
head in the weights (supervised tags) is dropped; weights without one (``.mae`` tags) load as they are.

Inits that need the Hugging Face hub (``imagenet``, ``imagenet-supervised``, ``timm:`` without
``weights_file``, ``hf-hub:``) load from the local hub cache when the hub is unreachable, or fail at once in one
line (:mod:`plankton_train.models.hub`). A fine-tuned classifier's run folder holds ``model.safetensors`` and
``classifier.json`` (:func:`save_classifier`, :func:`load_classifier`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from plankton_train.errors import CheckpointError, FinetuneError, ModelInitError, one_line
from plankton_train.models import hub
from plankton_train.models.checkpoint import load_checkpoint
from plankton_train.models.export import load_encoder
from plankton_train.models.mae import MAEConfig
from plankton_train.models.registry import IMAGENET_TAGS, INIT_KINDS

if TYPE_CHECKING:
    from plankton_train.data.labelled import ClassMap

#: Files of a fine-tuned classifier's run folder.
CHECKPOINT_NAME = "model.safetensors"
INFO_NAME = "classifier.json"
#: Keys the fine-tuning encoder may lack in the pretrained weights, or the weights may carry unused.
_MAY_BE_MISSING = ("fc_norm.", "head.")
_MAY_BE_UNUSED = ("norm.", "head.", "fc_norm.")
#: timm kwargs fine-tuning decides itself, whatever a pretrained config says.
_FINETUNE_ARGS = ("in_chans", "num_classes", "global_pool", "drop_path_rate", "pretrained_cfg_overlay")


@dataclass(frozen=True)
class EncoderSpec:
    """Everything needed to rebuild the encoder (stored in checkpoints)."""

    arch: str = "vit_large_patch16_224"  # timm architecture for random / weights-file inits
    init: str = "imagenet"  # see the module docstring
    weights_file: str = ""  # local weights for `imagenet` / `imagenet-supervised` / `timm:` / `arch`
    drop_path: float = 0.2
    global_pool: str = "avg"  # "avg" (MAE fine-tuning) or "token"
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm kwargs (img_size, depth... for tests)


@dataclass(frozen=True)
class _Source:
    """A resolved init: how to rebuild the architecture offline, and where the weights come from."""

    arch: str  # timm name to build the fine-tuning encoder from
    model_args: dict[str, Any]  # timm kwargs that define the architecture (with the spec's model_kwargs)
    weights: str = ""  # "" (random), "timm" (create_model(timm_name, pretrained=True)) or "checkpoint"
    timm_name: str = ""  # tag, hf-hub:/local-dir: name for "timm" weights
    overlay: dict = field(default_factory=dict)  # pretrained_cfg_overlay (a local weights file)
    path: str = ""  # training checkpoint (file or run folder) for "checkpoint" weights
    hub_offline: bool = False  # the hub files are cached but the hub is unreachable: load them offline


def _config_json(path: Path) -> tuple[str, dict]:
    """``(architecture, model_args)`` of a timm hub-layout ``config.json``, less the args fine-tuning sets.

    ``model_args`` is optional: recent timm (1.0.31 here) records the factory arguments there, older versions only
    those passed to ``save_for_hf`` (the architecture is then the name's default).
    """
    try:
        config = json.loads(path.read_text())
        args = {k: v for k, v in (config.get("model_args") or {}).items() if k not in _FINETUNE_ARGS}
        return config["architecture"], args
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelInitError(f"{path} is not a timm model config ({exc!r})") from exc


def _resolve(spec: EncoderSpec, pretrained: bool = True) -> _Source:
    init, extra = spec.init, dict(spec.model_kwargs)
    overlay = {"file": spec.weights_file} if spec.weights_file else {}
    if init == "random":
        return _Source(spec.arch, extra)
    if init in IMAGENET_TAGS or init.startswith("timm:"):
        name = IMAGENET_TAGS.get(init) or init[5:]
        offline = pretrained and not overlay and hub.timm_tag_offline(init, name)
        return _Source(name, extra, "timm", name, overlay, hub_offline=offline)
    if init.startswith("hf-hub:"):
        config, offline = hub.config_file(init, init[7:], pretrained)
        arch, args = _config_json(config)
        return _Source(arch, {**args, **extra}, "timm", init, hub_offline=offline)
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
        raise ModelInitError(f"{path} has no config.json (timm model folder), encoder/ or checkpoints/ (pretrain run)")
    raise ModelInitError(f"unknown init {init!r}: use {INIT_KINDS}")


def _source_model(src: _Source, spec: EncoderSpec) -> nn.Module:
    if src.weights == "checkpoint":
        return load_encoder(src.path, num_classes=0, **spec.model_kwargs)
    with hub.offline(src.hub_offline):
        return timm.create_model(
            src.timm_name,
            pretrained=True,
            num_classes=0,  # drops a pretrained head; weights without one (.mae tags) load strictly
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
    src = _resolve(spec, pretrained)
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
        raise ModelInitError(f"cannot create encoder from {spec.init!r}: {one_line(exc)}") from exc
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
        # input (mean, std) the encoder weights expect, if known
        self.pretrained_norm: tuple[float, float] | None = encoder.norm
        dim: int = self.encoder.num_features  # type: ignore[assignment]  # an int on every timm model
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


def save_classifier(
    out: Path,
    model: PlanktonClassifier,
    *,
    classes: ClassMap,
    mean: float,
    std: float,
    recipe: Any,
    initialised_from: str,
    extra: dict | None = None,
) -> None:
    """Write ``model.safetensors`` + ``classifier.json``; :func:`load_classifier` rebuilds the model offline.

    ``recipe`` is the :class:`~plankton_train.finetune.Recipe` trained with (stored whole; its ``img_size`` and
    ``resize`` define the input view). The stored encoder spec is the resolved architecture (timm name + model
    args) with ``init="random"``: rebuilding needs no hub access, and the weights come from the checkpoint.
    """
    out.mkdir(parents=True, exist_ok=True)
    info = {
        "format": "plankton-classifier/1",
        "encoder": asdict(model.spec),
        "initialised_from": initialised_from,
        "classes": list(classes.names),
        "mean": mean,
        "std": std,
        "img_size": recipe.img_size,
        "resize": recipe.resize,
        "recipe": asdict(recipe),
        **(extra or {}),
    }
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / CHECKPOINT_NAME))
    (out / INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")


def load_classifier(run: Path | str, device: str | torch.device = "cpu") -> tuple[PlanktonClassifier, dict]:
    """Rebuild a fine-tuned classifier from its run folder: ``(model in eval mode, classifier.json dict)``."""
    run = Path(run)
    info_path, weights = run / INFO_NAME, run / CHECKPOINT_NAME
    if not info_path.is_file() or not weights.is_file():
        raise FinetuneError(f"{run} is not a fine-tuned model folder (needs {INFO_NAME} and {CHECKPOINT_NAME})")
    info = json.loads(info_path.read_text())
    spec = EncoderSpec(**info["encoder"])
    model = build_classifier(spec, len(info["classes"]), pretrained=False)
    model.load_state_dict(load_file(str(weights)))
    return model.to(device).eval(), info
