"""The names the command line offers, without importing torch: pretraining models and encoder inits.

``plankton-train --help`` lists them and checks ``--model`` / ``--init`` before any heavy import. The models
themselves live in :mod:`plankton_train.models.mae` (``MODELS``, whose keys ``MODEL_NAMES`` mirrors; a test
keeps the two equal) and :mod:`plankton_train.models.classifier` (how each init is loaded).
"""

from __future__ import annotations

from pathlib import Path

from plankton_train.errors import ModelInitError

#: Pretraining encoders (keys of :data:`plankton_train.models.mae.MODELS`); ``mae_test`` is for CPU tests.
MODEL_NAMES: tuple[str, ...] = (
    "vit_large_patch16_224",
    "vit_base_patch16_224",
    "vit_small_patch16_224",
    "vit_tiny_patch16_224",
    "mae_test",
)

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
