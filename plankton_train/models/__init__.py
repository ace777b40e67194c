"""Models: the MAE used for pretraining, the fine-tuning classifier, and their files on disk.

``mae.py`` (MAE = a timm ViT with ``in_chans=1`` inside lightly's masked-ViT modules), ``classifier.py`` (encoder
inits, the classifier, its run-folder files), ``export.py`` (the exported encoder: timm hub layout),
``checkpoint.py`` (the training checkpoint file), ``hub.py`` (Hugging Face hub access), ``registry.py`` (the
torch-free names the CLI offers). This package never imports the training engine, the protocol or the CLI.

Importing the package is cheap (the CLI imports ``models.registry`` for ``--help``); the names below load
their module on first use.
"""

from __future__ import annotations

import importlib

_LAZY = {"MAE": "mae", "MODELS": "mae", "MAEConfig": "mae", "build_mae": "mae", "random_mask": "mae"}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"plankton_train.models.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
