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
``weights_file``, ``hf-hub:``) first look in the local hub cache. If the files are not there and the hub is
unreachable (``HF_HUB_OFFLINE=1``, or ``HF_ENDPOINT`` does not answer a ``HEAD`` request within 3 s), they fail at
once with a one-line :class:`ModelInitError` naming the repo and how to pass a local copy, instead of
``huggingface_hub``'s retry loop (about 23 s per file, a minute for one timm model). Cached files load with the
hub treated as offline.
"""

from __future__ import annotations

import json
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import timm
import torch
from torch import nn

from plankton_data.errors import PlanktonDataError
from plankton_train.checkpoint import CheckpointError, load_checkpoint, load_encoder
from plankton_train.models.mae import MAEConfig
from plankton_train.optim import param_groups

#: Named inits and the timm tags they stand for: the paper's ImageNet baseline is MAE on ImageNet-1k.
IMAGENET_TAGS = {
    "imagenet": "vit_large_patch16_224.mae",
    "imagenet-supervised": "vit_large_patch16_224.augreg_in21k_ft_in1k",
}
IMAGENET_TAG = IMAGENET_TAGS["imagenet"]
#: Inits that are names, not paths.
NAMED_INITS = ("random", *IMAGENET_TAGS)
#: Seconds to wait for the hub endpoint to answer a HEAD request before calling it unreachable.
HUB_PROBE_TIMEOUT = 3.0
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


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (torch's state-dict errors name the keys on later lines)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _weight_files(filename: str = "") -> tuple[str, ...]:
    """The files timm tries for hub weights ``filename``, in order (a ``.safetensors`` twin first)."""
    filename = filename or "pytorch_model.bin"
    if filename == "pytorch_model.bin":
        return "model.safetensors", filename
    if filename.endswith(".bin"):
        return filename[:-4] + ".safetensors", filename
    return (filename,)


def _hub_unreachable() -> str:
    """Why the Hugging Face hub cannot be reached (``""`` if it can).

    ``HF_HUB_OFFLINE``, else one ``HEAD`` request to ``HF_ENDPOINT`` (through the ``https_proxy`` /
    ``http_proxy`` the environment names, as the hub client does), bounded by :data:`HUB_PROBE_TIMEOUT` seconds,
    name resolution included. Any HTTP answer counts as reachable except a proxy's 407 or a 5xx (a proxy that
    cannot reach the hub answers 502/503/504). The probe only asks for the endpoint's root and sends no token.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "offline (HF_HUB_OFFLINE is set)"
    endpoint = constants.ENDPOINT.rstrip("/")
    proxy = urllib.request.getproxies().get(urlsplit(endpoint).scheme)
    via = f" via proxy {proxy}" if proxy and not urllib.request.proxy_bypass(urlsplit(endpoint).hostname or "") else ""
    result = [f"offline ({endpoint}{via} did not answer within {HUB_PROBE_TIMEOUT:g} s)"]

    def probe() -> None:
        request = urllib.request.Request(endpoint + "/", method="HEAD")
        context = ssl._create_unverified_context()  # reachability only: no CA bundle mismatch can hide the hub
        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))
        try:
            opener.open(request, timeout=HUB_PROBE_TIMEOUT).close()
            result[0] = ""
        except urllib.error.HTTPError as exc:
            result[0] = (
                f"offline ({endpoint}{via} answered HTTP {exc.code})" if exc.code == 407 or exc.code >= 500 else ""
            )
        except (OSError, ValueError) as exc:  # URLError, timeouts, TLS and connection errors
            reason = getattr(exc, "reason", exc)
            if not isinstance(reason, TimeoutError):  # a timeout keeps the "did not answer" message
                result[0] = f"offline ({endpoint}{via}: {getattr(reason, 'strerror', None) or reason})"

    thread = threading.Thread(target=probe, daemon=True)  # name resolution has no timeout of its own
    thread.start()
    thread.join(HUB_PROBE_TIMEOUT + 0.5)
    return result[0]


def _check_hub(init: str, hub_id: str, needs: list[tuple[str, ...]], local: str) -> bool:
    """Make sure the files of hub repo ``hub_id`` (``ORG/NAME[@REV]``) can be had, without waiting for retries.

    ``needs``: for each file, the names that would do (one is enough). Returns True if they are all in the
    local cache and the hub is unreachable (load them with the hub offline), False if the hub is reachable.
    Raises a one-line :class:`ModelInitError` if something is missing and the hub is unreachable.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    repo, _, rev = hub_id.partition("@")
    try:
        cached = all(
            any(isinstance(try_to_load_from_cache(repo, f, revision=rev or None), str) for f in names)
            for names in needs
        )
    except ValueError:  # a malformed repo id: let the hub client say so
        cached = False
    why = _hub_unreachable()
    if not why:
        return False
    if cached:
        return True
    raise ModelInitError(
        f"cannot load {init!r} ({hub_id} on the Hugging Face hub): {why} and it is not in the local cache "
        f"{constants.HF_HUB_CACHE}; pass a local copy: {local}"
    )


def _local_copy_hint(hub_id: str, weights_file: bool) -> str:
    repo = hub_id.partition("@")[0]
    folder = f"`hf download {repo} --local-dir DIR` on a connected machine, then --init DIR"
    return f"--weights-file FILE (the repo's model.safetensors), or {folder}" if weights_file else folder


@contextmanager
def _hub_offline(on: bool) -> Iterator[None]:
    """Treat the hub as offline (``HF_HUB_OFFLINE``) meanwhile: cached files load without network retries."""
    if not on:
        yield
        return
    from huggingface_hub import constants

    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def _hub_config(init: str, hub_id: str, pretrained: bool) -> tuple[Path, bool]:
    """``config.json`` of hub repo ``hub_id`` and whether its files must be loaded offline."""
    from huggingface_hub import hf_hub_download

    needs = [("config.json",), _weight_files()] if pretrained else [("config.json",)]
    offline = _check_hub(init, hub_id, needs, _local_copy_hint(hub_id, weights_file=False))
    repo, _, rev = hub_id.partition("@")
    try:
        with _hub_offline(offline):
            return Path(hf_hub_download(repo, "config.json", revision=rev or None)), offline
    except Exception as exc:  # unknown repo, auth: huggingface_hub raises many types
        raise ModelInitError(f"cannot fetch config.json of hf-hub:{hub_id}: {_one_line(exc)}") from exc


def _timm_tag_offline(init: str, name: str) -> bool:
    """For a timm tag whose weights come from the hub: :func:`_check_hub` on its ``hf_hub_id``."""
    try:
        cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=False)
    except (RuntimeError, ValueError, KeyError):
        cfg = None  # unknown name or tag: create_model says so
    if cfg is None or not cfg.hf_hub_id:
        return False
    return _check_hub(
        init,
        cfg.hf_hub_id,
        [_weight_files(cfg.hf_hub_filename or "")],
        _local_copy_hint(cfg.hf_hub_id, weights_file=True),
    )


def _resolve(spec: EncoderSpec, pretrained: bool = True) -> _Source:
    init, extra = spec.init, dict(spec.model_kwargs)
    overlay = {"file": spec.weights_file} if spec.weights_file else {}
    if init == "random":
        return _Source(spec.arch, extra)
    if init in IMAGENET_TAGS or init.startswith("timm:"):
        name = IMAGENET_TAGS.get(init) or init[5:]
        offline = pretrained and not overlay and _timm_tag_offline(init, name)
        return _Source(name, extra, "timm", name, overlay, hub_offline=offline)
    if init.startswith("hf-hub:"):
        config, offline = _hub_config(init, init[7:], pretrained)
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
    raise ModelInitError(
        f"unknown init {init!r}: use random, imagenet, imagenet-supervised, timm:NAME, hf-hub:ORG/NAME, "
        "a model folder, a pretrain run or checkpoint, or a weights file"
    )


def _source_model(src: _Source, spec: EncoderSpec) -> nn.Module:
    if src.weights == "checkpoint":
        return load_encoder(src.path, num_classes=0, **spec.model_kwargs)
    with _hub_offline(src.hub_offline):
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
        raise ModelInitError(f"cannot create encoder from {spec.init!r}: {_one_line(exc)}") from exc
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
