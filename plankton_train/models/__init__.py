"""Models: the MAE used for pretraining (encoder = a timm ViT with ``in_chans=1``).

Fine-tuning loads the pretrained encoder with :func:`plankton_train.checkpoint.load_encoder`.
"""

from plankton_train.models.mae import MAE, MODELS, MAEConfig, build_mae, random_mask

__all__ = ["MAE", "MODELS", "MAEConfig", "build_mae", "random_mask"]
