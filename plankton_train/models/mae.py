"""Masked Autoencoder for 1-channel images: a timm ViT encoder inside lightly's masked-ViT modules.

Composition follows lightly's MAE (1.6 layout): ``MaskedVisionTransformerTIMM`` encodes only the visible
patches; ``decoder_embed`` -> ``MaskedVisionTransformerDecoderTIMM`` (mask tokens, fixed sin-cos position
embedding, blocks, norm) -> ``prediction_head`` predicts the masked patches' pixels. Gaps and pitfalls of the
stock examples handled here:

* 1-channel prediction head (``patch**2 * in_chans``; the lightly example hard-codes 3 channels).
* Norm-pix target: each target patch normalised by its own mean/variance (MAE ``--norm_pix_loss``).
* The deprecated ``MAEDecoderTIMM`` is not used; the embed and head live outside the decoder as in 1.6.
* DDP: the encoder's own mask token is never used (the encoder drops masked patches) and is frozen, the
  ViT is built with ``num_classes=0`` (no unused head), position embeddings are fixed, so every trainable
  parameter gets a gradient and DDP needs no ``find_unused_parameters``.
* Masks come from an explicit ``torch.Generator`` so a training step is a pure function of its seed
  (exact resume without saving RNG streams). Prefix tokens (class/register) are always kept.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import cast

import timm
import torch
from lightly.models import utils as lutils
from lightly.models.modules.masked_vision_transformer_decoder_timm import MaskedVisionTransformerDecoderTIMM
from lightly.models.modules.masked_vision_transformer_timm import MaskedVisionTransformerTIMM, init_weights
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn


@dataclass(frozen=True)
class MAEConfig:
    """Architecture of an MAE: a timm ViT encoder plus the MAE decoder."""

    arch: str = "vit_large_patch16_224"  # timm architecture name of the encoder
    img_size: int = 224  # input side in pixels
    patch_size: int = 16
    in_chans: int = 1  # grayscale
    encoder_args: dict = field(default_factory=dict)  # extra timm kwargs (embed_dim, depth, ...) for variants
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True

    def timm_args(self) -> dict:
        """Keyword arguments that make ``timm.create_model(arch, **args)`` build exactly this encoder."""
        return dict(img_size=self.img_size, patch_size=self.patch_size, in_chans=self.in_chans, **self.encoder_args)

    def to_dict(self) -> dict:
        """JSON-serialisable form (stored in checkpoints)."""
        return asdict(self)


#: Selectable encoders. The decoder is the paper's (8 blocks, width 512) for every real variant.
#: CPU-sized: ``mae_cpu64`` (64 px input in 8 px patches = 64 tokens, so 75 % masking leaves 16 visible; ViT
#: width 96, depth 4, 3 heads; decoder 64 x 2), which learns something on a 2-core CPU in minutes and beat random
#: init on real ZooLake (``benchmarks/real_zoolake_finetune.py``); ``mae_test`` is a few-thousand-parameter model
#: for CPU tests only.
MODELS: dict[str, MAEConfig] = {
    "vit_large_patch16_224": MAEConfig("vit_large_patch16_224"),
    "vit_base_patch16_224": MAEConfig("vit_base_patch16_224"),
    "vit_small_patch16_224": MAEConfig("vit_small_patch16_224"),
    "vit_tiny_patch16_224": MAEConfig("vit_tiny_patch16_224"),
    "mae_cpu64": MAEConfig(
        "vit_tiny_patch16_224",
        img_size=64,
        patch_size=8,
        encoder_args={"embed_dim": 96, "depth": 4, "num_heads": 3},
        decoder_dim=64,
        decoder_depth=2,
        decoder_heads=4,
    ),
    "mae_test": MAEConfig(
        "vit_tiny_patch16_224",
        img_size=32,
        patch_size=8,
        encoder_args={"embed_dim": 32, "depth": 2, "num_heads": 2},
        decoder_dim=32,
        decoder_depth=1,
        decoder_heads=2,
    ),
}


def random_mask(
    batch: int,
    num_patches: int,
    num_prefix: int,
    mask_ratio: float,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Random per-image token mask over a ``num_prefix + num_patches`` sequence.

    Returns ``(idx_keep, idx_mask)``: int64 ``(B, num_prefix + K)`` with the prefix tokens first, and
    ``(B, num_patches - K)``, where ``K = int(num_patches * (1 - mask_ratio))`` patches stay visible.
    """
    noise = torch.rand(batch, num_patches, device=device, generator=generator)
    order = torch.argsort(noise, dim=1) + num_prefix  # patch token positions in random order
    keep = int(num_patches * (1 - mask_ratio))
    prefix = torch.arange(num_prefix, device=device).expand(batch, -1)
    return torch.cat([prefix, order[:, :keep]], dim=1), order[:, keep:]


class MAE(nn.Module):
    """MAE with a 1-channel timm ViT encoder. ``forward(images)`` returns the scalar training loss."""

    def __init__(self, cfg: MAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        vit = cast(VisionTransformer, timm.create_model(cfg.arch, pretrained=False, num_classes=0, **cfg.timm_args()))
        self.backbone = MaskedVisionTransformerTIMM(vit=vit)  # MAE init + fixed sin-cos pos embed
        self.backbone.mask_token.requires_grad_(False)  # never used: masked patches are dropped
        self.num_prefix: int = vit.num_prefix_tokens
        self.num_patches: int = vit.patch_embed.num_patches
        self.decoder_embed = nn.Linear(vit.embed_dim, cfg.decoder_dim)
        self.decoder = MaskedVisionTransformerDecoderTIMM(
            num_patches=self.num_patches,
            embed_dim=cfg.decoder_dim,
            depth=cfg.decoder_depth,
            num_heads=cfg.decoder_heads,
            num_prefix_tokens=self.num_prefix,
        )
        self.prediction_head = nn.Linear(cfg.decoder_dim, cfg.patch_size**2 * cfg.in_chans)
        init_weights(self.decoder_embed)
        init_weights(self.prediction_head)

    @property
    def encoder(self) -> nn.Module:
        """The timm ``VisionTransformer`` being pretrained (what gets exported)."""
        return self.backbone.vit

    def predict(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Mask, encode, decode.

        Args:
            images: normalised ``(B, C, H, W)`` float images.
            generator: source of the random mask (``None``: torch's global RNG).

        Returns:
            ``(pred, target, idx_mask)``: predicted and target pixels of the masked patches, both
            ``(B, M, patch**2 * C)`` (target norm-pix normalised if configured), and the masked token
            positions ``(B, M)`` (sequence positions, i.e. patch index + number of prefix tokens).
        """
        batch = images.shape[0]
        idx_keep, idx_mask = random_mask(
            batch, self.num_patches, self.num_prefix, self.cfg.mask_ratio, images.device, generator
        )
        x = self.backbone.encode(images, idx_keep=idx_keep)  # (B, P+K, D) visible tokens only
        x = self.decoder_embed(x)  # (B, P+K, Dd)
        full = x.new_zeros(batch, self.num_prefix + self.num_patches, x.shape[-1])
        full = lutils.set_at_index(full, idx_keep, x)  # visible tokens in place; same dtype (bf16-safe)
        x = self.decoder(full, idx_mask=idx_mask)  # mask tokens in, + pos embed, blocks, norm
        pred = self.prediction_head(lutils.get_at_index(x, idx_mask))  # (B, M, p*p*C)
        target = lutils.patchify(images, self.cfg.patch_size)  # (B, N, p*p*C)
        target = lutils.get_at_index(target, idx_mask - self.num_prefix)
        if self.cfg.norm_pix_loss:
            target = lutils.normalize_mean_var(target, dim=-1)  # per patch, eps 1e-6, as MAE
        return pred, target, idx_mask

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Mean squared error over the pixels of the masked patches (float32 scalar)."""
        pred, target, _ = self.predict(images, generator)
        return torch.mean((pred.float() - target.float()) ** 2)


def build_mae(model: str | MAEConfig) -> MAE:
    """An untrained :class:`MAE` from a :data:`MODELS` name or an explicit config."""
    if isinstance(model, str):
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
        model = MODELS[model]
    return MAE(model)
