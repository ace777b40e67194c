"""The MAE model (real timm + lightly modules, tiny sizes) and the optimiser helpers."""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch

from plankton_train.data.augment import normalize
from plankton_train.data.stream import ShardStream
from plankton_train.engine.optim import cosine_lr, param_groups, set_lr
from plankton_train.models.mae import MODELS, build_mae, random_mask
from plankton_train.models.registry import CPU_MODELS


@pytest.fixture(scope="module")
def fixed_batch(synthetic_shards) -> torch.Tensor:
    """8 normalised 32 px images from the synthetic shard set, ``(8, 1, 32, 32)``."""
    stream = ShardStream(synthetic_shards.folder, 8, out_size=32, train=False, epochs=1)
    images = next(iter(stream))["images"]
    return normalize(images, stream.index.mean, stream.index.std)


def test_every_trainable_parameter_gets_a_gradient_and_no_deprecated_decoder():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # lightly's deprecated MAEDecoderTIMM would warn here
        model = build_mae("mae_test")
    model(torch.randn(3, 1, 32, 32), torch.Generator().manual_seed(0)).backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert [n for n, p in trainable.items() if p.grad is None] == []  # DDP needs no find_unused_parameters
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"backbone.mask_token", "backbone.vit.pos_embed", "decoder.pos_embed"}
    assert model.prediction_head.out_features == 8 * 8 * 1  # one channel, not the example's three
    assert model.encoder.patch_embed.proj.in_channels == 1 and model.encoder.num_classes == 0


def test_mask_keeps_prefix_and_a_quarter_of_the_patches():
    keep, mask = random_mask(4, 196, 1, 0.75, torch.device("cpu"), torch.Generator().manual_seed(1))
    assert keep.shape == (4, 1 + 49) and mask.shape == (4, 147)
    assert (keep[:, 0] == 0).all()
    both = torch.cat([keep, mask], dim=1).sort(dim=1).values
    assert torch.equal(both, torch.arange(197).expand(4, -1))  # a partition of the sequence
    again, _ = random_mask(4, 196, 1, 0.75, torch.device("cpu"), torch.Generator().manual_seed(1))
    assert torch.equal(keep, again)


def test_loss_is_norm_pix_mse_on_masked_patches(fixed_batch):
    model = build_mae("mae_test")
    pred, target, idx_mask = model.predict(fixed_batch, torch.Generator().manual_seed(0))
    assert pred.shape == target.shape == (8, 12, 64)  # 16 patches of 8x8, 75 % masked
    patches = torch.nn.functional.unfold(fixed_batch, kernel_size=8, stride=8).transpose(1, 2)  # (8, 16, 64)
    raw = torch.stack([patches[b, idx_mask[b] - 1] for b in range(8)])  # masked patches, in mask order
    expected = (raw - raw.mean(-1, keepdim=True)) / (raw.var(-1, keepdim=True) + 1e-6).sqrt()
    torch.testing.assert_close(target, expected)
    loss = model(fixed_batch, torch.Generator().manual_seed(0))
    torch.testing.assert_close(loss, ((pred - target) ** 2).mean())
    assert idx_mask.min() >= 1  # the class token is never a target


def test_bf16_autocast_forward_has_no_dtype_clash(fixed_batch):
    model = build_mae("mae_test")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(fixed_batch, torch.Generator().manual_seed(0))
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())


def test_tiny_mae_overfits_a_fixed_batch(fixed_batch):
    """Same images, same mask every step: pure memorisation, so the loss must fall far."""
    torch.manual_seed(0)
    model = build_mae("mae_test")
    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=5e-3, betas=(0.9, 0.95))
    losses = []
    for _ in range(150):
        loss = model(fixed_batch, torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    start, end = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert end < 0.4 * start, (start, end)


def test_param_groups_exclude_norms_biases_and_tokens_from_decay():
    model = build_mae("mae_test")
    groups = param_groups(model, 0.05)
    by_id = {id(p): g for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert by_id[id(named["backbone.vit.cls_token"])]["weight_decay"] == 0.0
    assert by_id[id(named["decoder.mask_token"])]["weight_decay"] == 0.0
    assert by_id[id(named["backbone.vit.blocks.0.norm1.weight"])]["weight_decay"] == 0.0
    assert by_id[id(named["decoder_embed.bias"])]["weight_decay"] == 0.0
    assert by_id[id(named["backbone.vit.blocks.0.attn.qkv.weight"])]["weight_decay"] == 0.05
    assert id(named["backbone.mask_token"]) not in by_id  # frozen parameters are left out
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())


def test_lr_scale_reaches_the_optimiser_through_set_lr():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    groups = param_groups(model, 0.1, lr_scale_fn=lambda name: 0.5 if name.startswith("0.") else 1.0)
    optimizer = torch.optim.AdamW(groups, lr=1.0)
    set_lr(optimizer, 2e-3)
    assert sorted((g["lr"], g["weight_decay"]) for g in optimizer.param_groups) == [
        (1e-3, 0.0),
        (1e-3, 0.1),
        (2e-3, 0.0),
        (2e-3, 0.1),
    ]


def test_cosine_schedule_warms_up_linearly_then_decays_to_min():
    lrs = [cosine_lr(s, 100, 10, 1.0, min_lr=0.1) for s in range(101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[55] == pytest.approx(0.55)
    assert lrs[100] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))


def test_model_table_has_the_paper_decoder_and_builds_one_channel_vits():
    for name, cfg in MODELS.items():
        assert cfg.in_chans == 1 and cfg.mask_ratio == 0.75 and cfg.norm_pix_loss
        if name not in CPU_MODELS:  # mae_cpu64 and mae_test have small decoders (tests/train/test_cpu_models.py)
            assert (cfg.arch, cfg.decoder_depth, cfg.decoder_dim, cfg.img_size) == (name, 8, 512, 224)
    model = build_mae("vit_tiny_patch16_224")  # the smallest real variant: 1-channel stem, 8x512 decoder
    assert model.encoder.patch_embed.proj.in_channels == 1 and len(model.decoder.blocks) == 8
