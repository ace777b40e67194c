"""Encoder inits that come from the Hugging Face hub, without the network.

* ``imagenet`` is the paper's self-supervised baseline (MAE ImageNet-1k ViT-L), ``imagenet-supervised`` the
  supervised IN-21k -> 1k one; both load a local copy with ``weights_file``.
* Offline (``HF_HUB_OFFLINE=1``, or an endpoint that refuses or does not answer) and not cached: one-line
  ``ModelInitError`` within seconds, instead of huggingface_hub's retry loop (a minute for one timm model).
* The paper authors' encoders (``Jookare/..._vit_large_patch16_224.mae``) in the layout timm's
  ``push_to_hf_hub`` writes: from a local folder, and by hub id from the local hub cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import safetensors.torch as st
import timm
import torch
from huggingface_hub import constants
from timm.models import get_pretrained_cfg, save_for_hf

from plankton_train.errors import ModelInitError
from plankton_train.models import classifier
from plankton_train.models import hub as hub_access
from plankton_train.models.classifier import EncoderSpec, build_encoder

TINY = dict(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=2)
AUTHORS = ("Jookare/plankton_vit_large_patch16_224.mae", "Jookare/no_daplankton_vit_large_patch16_224.mae")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache, the hub offline (``HF_HUB_OFFLINE``); yields the cache folder."""
    cache = tmp_path / "hf_home" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_fails_fast(init: str, repo: str, **spec) -> str:
    start = time.monotonic()
    with pytest.raises(ModelInitError) as err:
        build_encoder(EncoderSpec(init=init, **spec))
    took = time.monotonic() - start
    msg = str(err.value)
    assert took < 10, (took, msg)
    assert "\n" not in msg and repo in msg and "offline" in msg and "--init DIR" in msg, msg
    return msg


# --- imagenet / imagenet-supervised ---------------------------------------------------------------------


def test_imagenet_is_the_self_supervised_mae_baseline() -> None:
    assert classifier.IMAGENET_TAGS == {
        "imagenet": "vit_large_patch16_224.mae",
        "imagenet-supervised": "vit_large_patch16_224.augreg_in21k_ft_in1k",
    }
    mae, sup = (get_pretrained_cfg(classifier.IMAGENET_TAGS[k]) for k in ("imagenet", "imagenet-supervised"))
    assert mae.hf_hub_id == "timm/vit_large_patch16_224.mae" and mae.num_classes == 0  # no classifier head
    assert sup.hf_hub_id == "timm/vit_large_patch16_224.augreg_in21k_ft_in1k" and sup.num_classes == 1000
    assert EncoderSpec().init == "imagenet"


def test_imagenet_weights_files_load_headless_mae_and_supervised_weights(tmp_path: Path, hub: Path) -> None:
    """Local copies of both ImageNet encoders (ViT-L layout, shrunk by model_kwargs), with the hub offline:
    the MAE weights have no head (pretrained_cfg num_classes=0) and load strictly; the supervised head is
    dropped. The MAE release's own ``{"model": state_dict}`` .pth loads too."""
    torch.manual_seed(0)
    mae = timm.create_model("vit_large_patch16_224", num_classes=0, in_chans=3, **TINY)
    sup = timm.create_model("vit_large_patch16_224", num_classes=1000, in_chans=3, **TINY)
    st.save_file(mae.state_dict(), str(tmp_path / "mae.safetensors"))
    torch.save({"model": mae.state_dict()}, tmp_path / "mae_pretrain_vit_large.pth")
    st.save_file(sup.state_dict(), str(tmp_path / "sup.safetensors"))
    cases = (
        ("imagenet", "mae.safetensors", mae, IMAGENET_MEAN, IMAGENET_STD),
        ("imagenet", "mae_pretrain_vit_large.pth", mae, IMAGENET_MEAN, IMAGENET_STD),
        ("imagenet-supervised", "sup.safetensors", sup, (0.5,) * 3, (0.5,) * 3),
    )
    for init, file, ref, mean, std in cases:
        enc = build_encoder(EncoderSpec(init=init, weights_file=str(tmp_path / file), model_kwargs=TINY))
        torch.testing.assert_close(enc.module.patch_embed.proj.weight[:, 0], ref.patch_embed.proj.weight.sum(1))
        torch.testing.assert_close(enc.module.blocks[2].mlp.fc2.weight, ref.blocks[2].mlp.fc2.weight)
        assert enc.norm == pytest.approx((sum(mean) / 3, sum(std) / 3)), init
        assert enc.spec.arch == classifier.IMAGENET_TAGS[init] and enc.spec.init == "random"
    # supervised weights given as the MAE baseline: the stray head is named in one line, not loaded silently
    with pytest.raises(ModelInitError, match="Unexpected key.*head") as err:
        build_encoder(EncoderSpec(init="imagenet", weights_file=str(tmp_path / "sup.safetensors"), model_kwargs=TINY))
    assert "\n" not in str(err.value)


# --- offline: fail fast, one line --------------------------------------------------------------------------


def test_offline_uncached_hub_inits_fail_fast_in_one_line(tmp_path: Path) -> None:
    """A fresh process with ``HF_HUB_OFFLINE=1`` and an empty ``HF_HOME``: the real settings, read at import."""
    script = textwrap.dedent(
        """
        import json, sys, time
        from plankton_train.models.classifier import EncoderSpec, ModelInitError, build_encoder
        out = {}
        for init in sys.argv[1:]:
            start = time.monotonic()
            try:
                build_encoder(EncoderSpec(init=init))
                out[init] = [time.monotonic() - start, "loaded"]
            except ModelInitError as exc:
                out[init] = [time.monotonic() - start, str(exc)]
        print(json.dumps(out))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    env.pop("HF_HUB_CACHE", None)
    inits = ["imagenet", "imagenet-supervised", "timm:vit_base_patch16_224.mae", f"hf-hub:{AUTHORS[0]}"]
    res = subprocess.run(
        [sys.executable, "-c", script, *inits], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    out = json.loads(res.stdout.strip().splitlines()[-1])
    repos = [
        "timm/vit_large_patch16_224.mae",
        "timm/vit_large_patch16_224.augreg_in21k_ft_in1k",
        "timm/vit_base_patch16_224.mae",
        AUTHORS[0],
    ]
    for init, repo in zip(inits, repos, strict=True):
        took, msg = out[init]
        assert took < 10 and "\n" not in msg, (init, took, msg)
        assert repo in msg and "HF_HUB_OFFLINE" in msg and "--init DIR" in msg, msg
        assert str(tmp_path / "hf_home" / "hub") in msg  # where it looked
    assert "--weights-file" in out["imagenet"][1] and "--weights-file" not in out[f"hf-hub:{AUTHORS[0]}"][1]


def test_unreachable_endpoint_fails_fast(hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without HF_HUB_OFFLINE: an endpoint that refuses connections, then one that accepts but never answers
    (bounded by the probe timeout), fail in one line instead of retrying."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    msg = _assert_fails_fast("imagenet", "timm/vit_large_patch16_224.mae")
    assert "refused" in msg.lower(), msg
    _assert_fails_fast(f"hf-hub:{AUTHORS[1]}", AUTHORS[1])
    with socket.socket() as silent:  # listens, never accepts: the connection opens, no answer comes
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setattr(hub_access, "HUB_PROBE_TIMEOUT", 0.5)
        start = time.monotonic()
        msg = _assert_fails_fast("imagenet-supervised", "timm/vit_large_patch16_224.augreg_in21k_ft_in1k")
        assert time.monotonic() - start < 3 and "did not answer within 0.5 s" in msg, msg
    assert constants.HF_HUB_OFFLINE is False  # the check left the hub client's settings alone


def test_a_weights_file_or_folder_never_asks_the_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_probe() -> str:
        raise AssertionError("probed the hub")

    monkeypatch.setattr(hub_access, "unreachable", no_probe)
    model = timm.create_model("vit_large_patch16_224", num_classes=0, in_chans=3, **TINY)
    st.save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    build_encoder(EncoderSpec(init="imagenet", weights_file=str(tmp_path / "w.safetensors"), model_kwargs=TINY))
    save_for_hf(model, tmp_path / "folder", safe_serialization=True)
    build_encoder(EncoderSpec(init=str(tmp_path / "folder")))
    build_encoder(EncoderSpec(init="imagenet", model_kwargs=TINY), pretrained=False)  # architecture only


# --- the authors' encoders: timm hub layout, local folder and hub cache ---------------------------------------


def _authors_layout(folder: Path, model_args: bool, num_classes: int) -> dict[str, torch.Tensor]:
    """A 3-channel ViT saved the way ``timm.models.push_to_hf_hub`` saves (``save_for_hf``: config.json with
    ``architecture``, ``num_classes``, ``pretrained_cfg``; model.safetensors). Returns the saved tensors.

    ``model_args=False``: drop ``model_args`` from config.json, as older timm versions saved a model built with
    default arguments (the architecture is then the name's default: a default-size ``vit_tiny_patch16_224``
    stands in for ViT-L; timm's own ``.mae`` hub configs, e.g. timm/vit_huge_patch14_224.mae, have no model_args).
    """
    torch.manual_seed(num_classes + model_args)
    if model_args:  # ViT-L's name and layout, shrunk: the config's model_args carry the sizes
        model = timm.create_model("vit_large_patch16_224", num_classes=num_classes, in_chans=3, **TINY)
    else:
        model = timm.create_model("vit_tiny_patch16_224", num_classes=num_classes, in_chans=3)
    model.pretrained_cfg = {**model.pretrained_cfg, "tag": "mae", "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    save_for_hf(model, folder, safe_serialization=True)
    config = json.loads((folder / "config.json").read_text())
    assert {"architecture", "num_classes", "pretrained_cfg"} <= config.keys() and config["num_classes"] == num_classes
    assert config["pretrained_cfg"]["input_size"][0] == 3 and (folder / "model.safetensors").is_file()
    if not model_args:
        del config["model_args"]
        (folder / "config.json").write_text(json.dumps(config, indent=2))
    return st.load_file(str(folder / "model.safetensors"))


def _assert_loaded(enc, saved: dict[str, torch.Tensor]) -> None:
    module = enc.module
    assert module.patch_embed.proj.in_channels == 1
    torch.testing.assert_close(module.patch_embed.proj.weight, saved["patch_embed.proj.weight"].sum(1, keepdim=True))
    state = module.state_dict()
    blocks = [k for k in saved if k.startswith("blocks.")]
    assert blocks and all(k in state for k in blocks)
    for key in (*blocks, "cls_token", "pos_embed", "patch_embed.proj.bias"):
        torch.testing.assert_close(state[key], saved[key], msg=key)
    assert module.global_pool == "avg" and isinstance(module.norm, torch.nn.Identity)  # MAE fine-tuning pooling
    assert enc.norm == pytest.approx((sum(IMAGENET_MEAN) / 3, sum(IMAGENET_STD) / 3))
    assert "in_chans" not in enc.spec.model_kwargs and enc.spec.init == "random"
    rebuilt = timm.create_model(enc.spec.arch, in_chans=1, num_classes=0, **enc.spec.model_kwargs)
    assert rebuilt.pos_embed.shape == module.pos_embed.shape  # the stored spec rebuilds the architecture


@pytest.mark.parametrize(("model_args", "num_classes"), [(True, 0), (True, 1000), (False, 0), (False, 1000)])
def test_authors_encoder_from_a_local_folder(tmp_path: Path, hub: Path, model_args: bool, num_classes: int) -> None:
    """``hf download Jookare/... --local-dir DIR`` then ``--init DIR``: 3 channels summed to 1, blocks as saved,
    with or without ``model_args``, headless (MAE) or with a 1000-class head; the hub stays offline."""
    folder = tmp_path / AUTHORS[0].split("/")[1]
    saved = _authors_layout(folder, model_args, num_classes)
    for init in (str(folder), f"local-dir:{folder}"):
        enc = build_encoder(EncoderSpec(init=init, arch="ignored"))
        _assert_loaded(enc, saved)
        assert enc.spec.arch == ("vit_large_patch16_224" if model_args else "vit_tiny_patch16_224")


def _put_in_hub_cache(cache: Path, repo: str, folder: Path) -> str:
    """Files of ``folder`` as huggingface_hub caches a download of ``repo`` (blobs, snapshot links, refs/main)."""
    base = cache / f"models--{repo.replace('/', '--')}"
    rev = hashlib.sha1(repo.encode()).hexdigest()
    (base / "blobs").mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(rev)
    snap = base / "snapshots" / rev
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        blob = base / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    return rev


def test_authors_encoder_by_hub_id_from_the_hub_cache(tmp_path: Path, hub: Path, monkeypatch) -> None:
    """``hf-hub:Jookare/...`` resolves through huggingface_hub from its cache: offline by HF_HUB_OFFLINE, and
    with the endpoint unreachable (the cached files then load with the hub treated as offline, no retries)."""
    saved = {}
    for repo, model_args in zip(AUTHORS, (True, False), strict=True):
        folder = tmp_path / repo.split("/")[1]
        saved[repo] = _authors_layout(folder, model_args, num_classes=0)
        rev = _put_in_hub_cache(hub, repo, folder)
    for repo in AUTHORS:
        _assert_loaded(build_encoder(EncoderSpec(init=f"hf-hub:{repo}")), saved[repo])
    _assert_loaded(build_encoder(EncoderSpec(init=f"hf-hub:{AUTHORS[1]}@{rev}")), saved[AUTHORS[1]])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    offline_loads = []
    real = hub_access.offline
    monkeypatch.setattr(hub_access, "offline", lambda on: offline_loads.append(on) or real(on))
    start = time.monotonic()
    _assert_loaded(build_encoder(EncoderSpec(init=f"hf-hub:{AUTHORS[0]}")), saved[AUTHORS[0]])
    assert time.monotonic() - start < 10 and constants.HF_HUB_OFFLINE is False
    assert offline_loads == [True, True]  # config.json and the weights, both with the hub treated as offline
    # a repo that is not cached still fails fast, by name
    _assert_fails_fast("hf-hub:Jookare/not_cached", "Jookare/not_cached")
