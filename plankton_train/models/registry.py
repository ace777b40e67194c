"""The names the command line offers, without importing torch: pretraining models and encoder inits.

``plankton-train --help`` lists them and checks ``--model`` / ``--init`` before any heavy import. The models
themselves live in :mod:`plankton_train.models.mae` (``MODELS``, whose keys ``MODEL_NAMES`` mirrors; a test
keeps the two equal) and :mod:`plankton_train.models.classifier` (how each init is loaded).
"""

from __future__ import annotations

from pathlib import Path

from plankton_train.errors import ModelInitError

#: Pretraining encoders (keys of :data:`plankton_train.models.mae.MODELS`). ``mae_cpu64`` (64 px, 8 px patches,
#: width 96, depth 4) is sized for a CPU: it learns something in minutes on 2 cores; ``mae_test`` is for tests.
MODEL_NAMES: tuple[str, ...] = (
    "vit_large_patch16_224",
    "vit_base_patch16_224",
    "vit_small_patch16_224",
    "vit_tiny_patch16_224",
    "mae_cpu64",
    "mae_test",
)
#: Models sized for a CPU (the rest want a GPU).
CPU_MODELS: tuple[str, ...] = ("mae_cpu64", "mae_test")
#: Encoders too large to train on a CPU (a warning when such a run starts on one); matched as name prefixes.
LARGE_ARCHS: tuple[str, ...] = ("vit_large", "vit_huge", "vit_giant", "vit_gigantic")


def is_large(arch: str) -> bool:
    """True for ViT-L and larger (``vit_large_patch16_224``, ``timm:vit_huge_...``, ...)."""
    name = arch.split(":", 1)[-1].rsplit("/", 1)[-1]
    return name.startswith(LARGE_ARCHS)


#: Named inits and the timm tags they stand for: the paper's ImageNet baseline is MAE on ImageNet-1k.
IMAGENET_TAGS = {
    "imagenet": "vit_large_patch16_224.mae",
    "imagenet-supervised": "vit_large_patch16_224.augreg_in21k_ft_in1k",
}
IMAGENET_TAG = IMAGENET_TAGS["imagenet"]
#: Inits that are names, not paths.
NAMED_INITS = ("random", *IMAGENET_TAGS)
#: Prefixes of inits that name weights elsewhere (the rest of the string is the name or path).
INIT_PREFIXES = ("timm:", "hf-hub:", "local-dir:")
#: What ``--init`` accepts, for help texts and error messages.
INIT_KINDS = (
    "random, imagenet, imagenet-supervised, timm:NAME, hf-hub:ORG/NAME, a model folder, a pretrain run or "
    "checkpoint, or a weights file"
)


def check_init(init: str) -> None:
    """Raise a one-line :class:`ModelInitError` unless ``init`` has one of the accepted forms.

    Only the form is checked (and that a path exists): whether the weights load is
    :func:`plankton_train.models.classifier.build_encoder`'s business.
    """
    if init in NAMED_INITS:
        return
    if init.startswith("timm:") and init[5:]:
        return
    if init.startswith("hf-hub:") and "/" in init[7:].strip("/"):
        return
    path = Path(init[10:] if init.startswith("local-dir:") else init).expanduser()
    if init and path.exists():
        return
    raise ModelInitError(f"unknown init {init!r}: use {INIT_KINDS}")
