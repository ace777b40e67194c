"""Fine-tuning on CPU with a tiny ViT: layer decay reaches the optimiser, learning beats chance, reloading."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import safetensors.torch as st
import timm
import torch
from timm.models import save_for_hf

from plankton_data.format.index import read_index
from plankton_train.data.labelled import ClassMap
from plankton_train.engine.finetune_loop import predict_probs
from plankton_train.engine.optim import layer_decay_groups, set_lr
from plankton_train.errors import FinetuneError, ModelInitError
from plankton_train.finetune import Cell, Recipe, finetune
from plankton_train.models.classifier import (
    EncoderSpec,
    build_classifier,
    build_encoder,
    load_classifier,
    save_classifier,
)
from plankton_train.pretrain import PretrainConfig, run_pretrain
from plankton_train.protocol.splits import SplitConfig, splits_from_manifest, write_splits
from tests.conftest import make_shard_folder

TINY = dict(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=2)
ARCH = "vit_tiny_patch16_224"
RECIPE = Recipe(epochs=12, warmup_epochs=1, batch_size=16, lr=2e-3, img_size=32, resize=36, num_workers=0)


def _spec(**kw) -> EncoderSpec:
    return EncoderSpec(**{"arch": ARCH, "init": "random", "model_kwargs": TINY, **kw})


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    """A 3-class, 40-per-class labelled shard folder and its splits (one group)."""
    base = tmp_path_factory.mktemp("ft")
    folder = make_shard_folder(base, name="shapes", per_class=40, per_shard=50, seed=3)
    cfg = SplitConfig(seed=0)
    path = write_splits(splits_from_manifest(folder.manifest, cfg=cfg), base / "splits.parquet", cfg=cfg)
    return folder, path


def _cell(data, fraction: float = 1.0, fold: int = 0) -> Cell:
    folder, splits = data
    return Cell(folder.manifest, folder.root, splits, "shapes/synthetic", fold, fraction)


def test_layer_decay_scales_reach_the_optimiser_update() -> None:
    """Each group's lr is base * 0.75^(depth+1-layer); the first AdamW step moves each layer by that lr."""
    torch.manual_seed(0)
    model = build_classifier(_spec(), num_classes=3)
    groups = layer_decay_groups(model, weight_decay=0.0, layer_decay=0.75)
    depth = TINY["depth"]
    by_id = {id(p): g for g in groups for p in g["params"]}
    by_name = {n: by_id[id(p)] for n, p in model.named_parameters()}
    assert by_name["encoder.patch_embed.proj.weight"]["lr_scale"] == pytest.approx(0.75 ** (depth + 1))
    assert by_name["encoder.pos_embed"]["lr_scale"] == pytest.approx(0.75 ** (depth + 1))
    assert by_name["encoder.blocks.0.attn.qkv.weight"]["lr_scale"] == pytest.approx(0.75**depth)
    assert by_name[f"encoder.blocks.{depth - 1}.mlp.fc2.weight"]["lr_scale"] == pytest.approx(0.75)
    assert by_name["head.3.weight"]["lr_scale"] == 1.0 and by_name["encoder.fc_norm.weight"]["lr_scale"] == 1.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    opt = torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.0)
    set_lr(opt, 1e-3)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(1e-3 * g["lr_scale"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.randn(4, 1, 32, 32)).logsumexp(1).sum().backward()
    opt.step()
    for name in ("encoder.patch_embed.proj.weight", "encoder.blocks.1.mlp.fc1.weight", "head.0.weight"):
        p = dict(model.named_parameters())[name]
        step = (p.detach() - before[name]).abs().max().item()  # Adam's first step is ~lr per coordinate
        assert step == pytest.approx(1e-3 * by_name[name]["lr_scale"], rel=0.05), name


def test_no_weight_decay_on_norms_biases_and_tokens() -> None:
    model = build_classifier(_spec(), 3)
    by_id = {id(p): g for g in layer_decay_groups(model, weight_decay=0.01, layer_decay=0.75) for p in g["params"]}
    wd = {n: by_id[id(p)]["weight_decay"] for n, p in model.named_parameters()}
    assert wd["encoder.pos_embed"] == wd["encoder.cls_token"] == wd["encoder.blocks.0.norm1.weight"] == 0.0
    assert wd["encoder.blocks.0.attn.qkv.bias"] == wd["head.1.weight"] == 0.0  # head LayerNorm
    assert wd["encoder.blocks.0.attn.qkv.weight"] == wd["head.3.weight"] == 0.01


def test_training_beats_chance_and_reloads(data, tmp_path: Path) -> None:
    res = finetune(_cell(data), encoder=_spec(drop_path=0.0), recipe=RECIPE, out=tmp_path / "run")
    assert res.n_test == 24 and res.classes == 3
    assert res.accuracy >= 0.7, res  # chance is 1/3
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert len(history) == RECIPE.epochs
    assert history["train_loss"].iloc[-3:].mean() < history["train_loss"].iloc[:2].mean()
    # the kept epoch is the best on validation (ties: lower val loss), never chosen on test
    best = history.sort_values(["val_accuracy", "val_loss"], ascending=[False, True]).iloc[0]
    assert res.best_epoch == int(best["epoch"]) and res.val_accuracy == pytest.approx(best["val_accuracy"])
    # the checkpoint rebuilds offline and reproduces the saved test predictions exactly
    model, info = load_classifier(tmp_path / "run")
    assert info["classes"] == ["bar", "disc", "ring"] and info["initialised_from"] == "random"
    saved = pd.read_parquet(tmp_path / "run" / "test_predictions.parquet")
    from plankton_train.data.labelled import EvalAugment, LabelledImages, make_loader, manifest_rows

    rows = manifest_rows(_cell(data).manifest, {"test": saved["key"].tolist()})["test"]
    ds = LabelledImages(rows, data[0].root, EvalAugment(info["img_size"], info["resize"]))
    probs, _ = predict_probs(model, make_loader(ds, 8, shuffle=False), info["mean"], info["std"], torch.device("cpu"))
    np.testing.assert_allclose(probs.max(1), saved["confidence"], atol=1e-5)
    assert [info["classes"][i] for i in probs.argmax(1)] == saved["pred"].tolist()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx((saved["label"] == saved["pred"]).mean())


def test_one_image_per_class_still_trains(data, tmp_path: Path) -> None:
    """1 % of 20 training images per class is one each: one batch of 3 per epoch; the optimiser steps."""
    recipe = Recipe(epochs=2, warmup_epochs=1, batch_size=128, img_size=32, resize=36, num_workers=0)
    res = finetune(_cell(data, fraction=0.01, fold=1), encoder=_spec(), recipe=recipe, out=tmp_path / "run")
    assert res.n_train == 3
    torch.manual_seed(recipe.seed)
    fresh = build_classifier(_spec(), 3)
    trained, _ = load_classifier(tmp_path / "run")
    assert not torch.equal(fresh.head[3].weight, trained.head[3].weight)  # the optimiser stepped


def test_inits_from_local_files_convert_rgb_to_gray(tmp_path: Path) -> None:
    """A 3-channel weights file (as timm's ImageNet weights) and a Hugging Face-format folder (as a local
    copy of Jookare/no_daplankton_vit_large_patch16_224.mae) both load; RGB patch kernels are summed."""
    torch.manual_seed(1)
    rgb = timm.create_model(ARCH, num_classes=0, in_chans=3, **TINY)
    st.save_file(rgb.state_dict(), str(tmp_path / "rgb.safetensors"))
    enc = build_encoder(_spec(init=str(tmp_path / "rgb.safetensors"))).module
    torch.testing.assert_close(enc.patch_embed.proj.weight[:, 0], rgb.patch_embed.proj.weight.sum(1))
    torch.testing.assert_close(enc.blocks[2].attn.qkv.weight, rgb.blocks[2].attn.qkv.weight)
    gray = timm.create_model(ARCH, num_classes=0, in_chans=1, **TINY)
    save_for_hf(gray, tmp_path / "hf_copy", model_args=dict(in_chans=1, num_classes=0, **TINY))
    enc = build_encoder(_spec(init=str(tmp_path / "hf_copy"), arch="ignored")).module
    torch.testing.assert_close(enc.patch_embed.proj.weight, gray.patch_embed.proj.weight)
    torch.testing.assert_close(enc.blocks[0].mlp.fc1.weight, gray.blocks[0].mlp.fc1.weight)
    assert enc.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)  # the paper's drop path, last block
    assert enc.global_pool == "avg" and isinstance(enc.norm, torch.nn.Identity)  # MAE fine-tuning pooling


def test_inits_from_pretrain_outputs(tmp_path: Path, synthetic_shards) -> None:
    """What `plankton-train pretrain` leaves (exported encoder, finished run folder, mid-run checkpoint)
    loads with no arch or model args given: they come from the export / checkpoint."""
    cfg = PretrainConfig(
        shards=str(synthetic_shards.folder),
        model="mae_test",
        batch_size=8,
        eff_batch=8,
        steps=2,
        warmup_steps=1,
        workers=0,
        log_every=1,
        ckpt_every=1,
    )
    done = run_pretrain(replace(cfg, out=str(tmp_path / "done")))
    part = run_pretrain(replace(cfg, out=str(tmp_path / "part"), steps=4), stop_after=2)
    assert done.encoder is not None and part.encoder is None
    for init, mae in (
        (done.encoder, done.model),
        (tmp_path / "done", done.model),
        (tmp_path / "part", part.model),
    ):
        model = build_classifier(EncoderSpec(init=str(init)), num_classes=3)
        ref = mae.encoder.to("cpu")
        torch.testing.assert_close(model.encoder.blocks[1].attn.qkv.weight, ref.blocks[1].attn.qkv.weight)
        torch.testing.assert_close(model.encoder.patch_embed.proj.weight, ref.patch_embed.proj.weight)
        assert model.spec.init == "random" and model.spec.model_kwargs["embed_dim"] == 32
        index = read_index(synthetic_shards.folder)  # fine-tuning must normalise as pretraining did
        assert model.pretrained_norm == pytest.approx((index.mean, index.std))
    # the fine-tuned checkpoint rebuilds from its stored spec alone (the pretrain run is no longer needed)
    save_classifier(
        tmp_path / "ft",
        model,
        classes=ClassMap(("a", "b", "c")),
        mean=0.8,
        std=0.2,
        recipe=RECIPE,
        initialised_from=str(tmp_path / "part"),
    )
    shutil.rmtree(tmp_path / "part")
    back, info = load_classifier(tmp_path / "ft")
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(back(x), model.eval()(x))
    assert info["initialised_from"].endswith("part")


def test_bad_inits_and_devices_are_one_line_errors(tmp_path: Path, data) -> None:
    with pytest.raises(ModelInitError, match="unknown init"):
        build_encoder(_spec(init="no/such/thing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelInitError, match="config.json"):
        build_encoder(_spec(init=str(tmp_path / "empty")))
    with pytest.raises(FinetuneError, match="not a fine-tuned model"):
        load_classifier(tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(FinetuneError, match="no GPU"):
            finetune(_cell(data), encoder=_spec(), recipe=Recipe(device="cuda", epochs=1), out=tmp_path / "run")
