"""Pretraining end to end on CPU: exact resume, real 2-process gloo DDP, timm-loadable export, the CLI.

Run as a script, this file is one rank of the DDP test (``torchrun ... test_pretrain.py SHARDS OUT``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import pytest
import timm
import torch
from typer.testing import CliRunner

from plankton_data.fixtures import write_fixture
from plankton_data.format.index import read_index, write_index
from plankton_data.ingest import ingest
from plankton_data.ingest.preprocess import PreprocessConfig
from plankton_data.shardset import build_shard_set
from plankton_train.cli.main import app
from plankton_train.data.stream import ShardStream
from plankton_train.errors import PretrainError
from plankton_train.models.export import load_encoder
from plankton_train.models.mae import MODELS
from plankton_train.pretrain import PretrainConfig, _sample_stats, resume_config, run_pretrain

TINY = dict(model="mae_test", batch_size=4, eff_batch=8, steps=6, warmup_steps=2, seed=3, log_every=1)


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(synthetic_shards, tmp_path_factory):
    """6 uninterrupted steps (9 micro-batches per epoch, accumulation 2: crosses an epoch boundary)."""
    out = tmp_path_factory.mktemp("straight") / "run"
    cfg = PretrainConfig(shards=str(synthetic_shards.folder), out=str(out), workers=2, ckpt_every=2, **TINY)
    return run_pretrain(cfg)


def test_uninterrupted_run_writes_its_outputs(straight):
    assert straight.step == straight.total_steps == 6
    assert sorted(p.name for p in (straight.run_dir / "checkpoints").iterdir()) == [
        "step-00000004.pt",
        "step-00000006.pt",  # periodic every 2, newest 2 kept
    ]
    resolved = json.loads((straight.run_dir / "run_config.json").read_text())
    assert resolved["accum_steps"] == 2 and resolved["lr"] == pytest.approx(1.5e-4 * 8 / 256)
    assert (straight.run_dir / "metrics.csv").read_text().startswith("step,epoch,loss,lr,images_per_s,data_wait")
    assert list((straight.run_dir / "tb").glob("events.out.tfevents.*"))
    assert len(_losses(straight.run_dir)) == 6


def test_resume_after_k_steps_equals_the_uninterrupted_run(straight, synthetic_shards, tmp_path):
    cfg = PretrainConfig(
        shards=str(synthetic_shards.folder), out=str(tmp_path / "split"), workers=0, ckpt_every=0, **TINY
    )
    part = run_pretrain(cfg, stop_after=4)
    assert part.step == 4 and part.encoder is None and part.checkpoint.name == "step-00000004.pt"
    rest = run_pretrain(resume_config(tmp_path / "split", workers=1), resume=tmp_path / "split")
    assert rest.step == 6 and rest.encoder is not None
    assert _losses(tmp_path / "split") == _losses(straight.run_dir)  # bit-identical, any worker count
    theirs = straight.model.state_dict()
    for name, value in rest.model.state_dict().items():
        assert torch.equal(value, theirs[name]), name


def test_exported_encoder_loads_with_timm(straight):
    enc = straight.run_dir / "encoder"
    cfg = MODELS["mae_test"]
    x = torch.randn(2, 1, 32, 32)
    reference = straight.model.encoder.eval()(x)
    native = timm.create_model(
        cfg.arch,
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(enc / "model.safetensors")),
        in_chans=1,
        num_classes=0,
        img_size=32,
        patch_size=8,
        **cfg.encoder_args,
    )
    torch.testing.assert_close(native.eval()(x), reference)
    hub = timm.create_model(f"local-dir:{enc}", pretrained=True)
    torch.testing.assert_close(hub.eval()(x), reference)
    mean = json.loads((straight.run_dir / "run_config.json").read_text())["mean"]
    assert tuple(timm.data.resolve_data_config(model=hub)["mean"]) == (mean,)
    for source in (straight.run_dir, straight.checkpoint):
        classifier = load_encoder(source, num_classes=3, global_pool="avg")
        assert classifier(x).shape == (2, 3)
        torch.testing.assert_close(classifier.blocks[1].mlp.fc2.weight, hub.blocks[1].mlp.fc2.weight)


def test_bad_geometry_and_reused_run_folder_are_refused(straight, synthetic_shards):
    cfg = PretrainConfig(shards=str(synthetic_shards.folder), out=str(straight.run_dir), **TINY)
    with pytest.raises(PretrainError, match="already holds checkpoints"):
        run_pretrain(cfg)
    with pytest.raises(PretrainError, match="not a multiple"):
        run_pretrain(replace(cfg, out=str(straight.run_dir.parent / "other"), eff_batch=10))


@pytest.fixture(scope="module")
def mixed_set(tmp_path_factory) -> Path:
    """A shard set of the Kaggle (bright field: white background) and ZooLake (dark field) fixtures."""
    base = tmp_path_factory.mktemp("mixed")
    for dataset in ("kaggle", "zoolake"):
        raw = write_fixture(dataset, base / "raw").raw
        ingest(
            dataset,
            raw,
            shards_root=base / "shards",
            manifests_root=base / "manifests",
            config=PreprocessConfig(size=32),
            records_per_shard=8,
        )
    return build_shard_set(
        "mix", shards_root=base / "shards", manifests_root=base / "manifests", samples_per_shard=4
    ).shard_dir


def test_each_image_is_normalised_with_its_own_datasets_statistics(mixed_set, tmp_path):
    index = read_index(mixed_set)
    (kaggle_mean, _), (zoolake_mean, _) = index.dataset_stats["kaggle"], index.dataset_stats["zoolake"]
    assert kaggle_mean > index.mean + 0.1 and zoolake_mean < index.mean - 0.1  # one mean/std fits neither
    stream = ShardStream(mixed_set, 4, out_size=32)
    cfg = PretrainConfig(
        shards=str(mixed_set), out=str(tmp_path / "run"), workers=0, ckpt_every=0, normalization="dataset", **TINY
    )
    stats, mean, std = _sample_stats(stream, cfg)
    assert stats == index.dataset_stats and mean.shape == std.shape == (index.total,)
    for key, m, s in zip(stream.table.keys, mean, std, strict=True):
        assert [m, s] == index.dataset_stats[key.decode().split("_")[0]]
    _, mean, std = _sample_stats(stream, replace(cfg, normalization="set"))
    assert set(mean) == {index.mean} and set(std) == {index.std}

    result = run_pretrain(cfg)
    assert json.loads((result.run_dir / "run_config.json").read_text())["dataset_stats"] == index.dataset_stats
    exported = json.loads((result.encoder / "config.json").read_text())["plankton_normalization"]
    assert exported == {"mode": "dataset", "dataset_stats": index.dataset_stats}


def test_an_index_without_per_dataset_statistics_needs_set_normalisation(mixed_set, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(mixed_set, old)
    write_index(replace(read_index(old), dataset_stats={}), old)
    cfg = PretrainConfig(
        shards=str(old), out=str(tmp_path / "run"), workers=0, ckpt_every=0, normalization="dataset", **TINY
    )
    with pytest.raises(PretrainError, match="no per-dataset statistics.*--normalization set"):
        run_pretrain(cfg)
    assert run_pretrain(replace(cfg, normalization="set")).step == TINY["steps"]
    with pytest.raises(PretrainError, match="normalization must be one of dataset, set"):
        run_pretrain(replace(cfg, normalization="image"))


def _ddp_rank(shards: str, out: str) -> None:
    """One torchrun rank: train 2 epochs, record every micro-batch's sample ids and the final weights."""
    seen: list[list[int]] = []
    cfg = PretrainConfig(
        shards=shards,
        out=out,
        model="mae_test",
        batch_size=5,
        eff_batch=20,
        epochs=2,
        warmup_epochs=0.5,
        workers=2,
        log_every=1,
        ckpt_every=0,
    )
    result = run_pretrain(cfg, on_batch=lambda batch: seen.append(batch["index"].tolist()))
    weights = b"".join(p.detach().numpy().tobytes() for p in result.model.parameters())
    record = {"batches": seen, "step": result.step, "digest": hashlib.sha256(weights).hexdigest()}
    Path(out, f"rank{os.environ['RANK']}.json").write_text(json.dumps(record))


@pytest.mark.slow  # two torchrun ranks: ~45 s on 2 cores; `make test` (and CI) runs it, `make test-fast` skips it
def test_two_process_gloo_ddp_gives_equal_disjoint_batches(synthetic_shards, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        __file__,
        str(synthetic_shards.folder),
        str(out),
    ]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    # 36 samples, 2 ranks: 18 each = batches of 5, 5, 5, 3 per epoch; 2 epochs; accumulation 2 -> 4 steps.
    assert [len(r["batches"]) for r in ranks] == [8, 8] and [r["step"] for r in ranks] == [4, 4]
    for epoch in (0, 1):
        per_rank = [sum(r["batches"][4 * epoch : 4 * epoch + 4], []) for r in ranks]
        assert not set(per_rank[0]) & set(per_rank[1])
        assert sorted(per_rank[0] + per_rank[1]) == list(range(36))
    assert ranks[0]["digest"] == ranks[1]["digest"]  # DDP kept the replicas identical
    assert (out / "encoder" / "model.safetensors").is_file()


def test_cli_pretrains_and_reconstructs_end_to_end(synthetic_shards, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli-run"
    args = [
        "pretrain",
        "--shard-set",
        str(synthetic_shards.folder),
        "--out",
        str(out),
        "--model",
        "mae_test",
        "--batch-size",
        "6",
        "--eff-batch",
        "12",
        "--epochs",
        "2",
        "--warmup-epochs",
        "0.5",
        "--workers",
        "1",
        "--log-every",
        "2",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "encoder" / "config.json").is_file() and len(_losses(out)) == 3  # 6 steps, logged every 2
    figure = tmp_path / "figs" / "recon.png"
    result = runner.invoke(app, ["reconstruct", "--checkpoint", str(out), "--out", str(figure), "--n", "3"])
    assert result.exit_code == 0, result.output
    height, width = cv2.imread(str(figure), cv2.IMREAD_GRAYSCALE).shape  # 3 rows x 3 columns of 224 px + titles
    assert height > 3 * 224 and 3 * 224 <= width < 4 * 224 and figure.with_suffix(".pdf").is_file()

    again = runner.invoke(app, args)  # same run folder without --resume
    assert again.exit_code == 1 and "already holds checkpoints" in again.output
    for bad in (
        ["pretrain", "--shard-set", str(tmp_path / "nowhere")],
        ["pretrain"],
        ["reconstruct", "--checkpoint", str(tmp_path), "--out", str(figure)],
    ):
        result = runner.invoke(app, bad)
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    assert "torchrun" in runner.invoke(app, ["pretrain", "--help"]).output
    assert "Example" in runner.invoke(app, ["reconstruct", "--help"]).output


if __name__ == "__main__":
    _ddp_rank(sys.argv[1], sys.argv[2])
