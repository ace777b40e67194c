"""CPU-sized models by name, ``--img-size`` for pretraining and fine-tuning (random init included), warmup
clamped to short schedules, ``report`` on one finetune run folder, and CLI defaults equal to the library's."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from plankton_train.cli.main import app
from plankton_train.engine.optim import clamp_warmup
from plankton_train.finetune import Recipe
from plankton_train.models.classifier import EncoderSpec
from plankton_train.models.mae import MODELS, build_mae
from plankton_train.models.registry import MODEL_NAMES, is_large
from plankton_train.pretrain import PretrainConfig, run_pretrain
from plankton_train.protocol.predict import PredictOptions
from plankton_train.protocol.splits import SplitConfig

runner = CliRunner()


def test_mae_cpu64_is_in_the_registry_with_the_benchmark_geometry():
    assert "mae_cpu64" in MODEL_NAMES
    cfg = MODELS["mae_cpu64"]
    assert (cfg.img_size, cfg.patch_size, cfg.encoder_args) == (64, 8, {"embed_dim": 96, "depth": 4, "num_heads": 3})
    assert (cfg.decoder_dim, cfg.decoder_depth) == (64, 2)
    model = build_mae("mae_cpu64")
    assert model.num_patches == 64 and model.encoder.embed_dim == 96
    assert is_large("vit_large_patch16_224") and is_large("timm:vit_huge_patch14_224.mae")
    assert not is_large("vit_tiny_patch16_224") and not is_large("mae_cpu64")


def test_warmup_longer_than_the_schedule_is_clamped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert clamp_warmup(40, 10, unit="steps") == 5
    assert "clamped to 5" in caplog.text
    caplog.clear()
    assert clamp_warmup(3, 10, unit="epochs") == 3 and clamp_warmup(0, 1, unit="epochs") == 0
    assert not caplog.text


def test_pretrain_by_name_at_another_img_size_with_a_clamped_warmup(synthetic_shards, tmp_path, caplog):
    cfg = PretrainConfig(
        shards=str(synthetic_shards.folder),
        out=str(tmp_path / "run"),
        model="mae_test",
        img_size=48,
        batch_size=6,
        eff_batch=6,
        steps=2,
        warmup_steps=40,  # the documented smoke-test shape: warmup far past the schedule
        workers=0,
        log_every=1,
    )
    with caplog.at_level(logging.WARNING):
        result = run_pretrain(cfg)
    assert "clamped to 1" in caplog.text
    resolved = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert resolved["warmup_steps"] == 1 and resolved["total_steps"] == 2
    assert resolved["model"]["img_size"] == 48 and result.model.num_patches == 36
    assert result.encoder is not None
    with pytest.raises(Exception, match="multiple of the patch size"):
        dataclasses.replace(cfg, img_size=50).validate()


def test_cli_pretrains_mae_cpu64_by_name(synthetic_shards, tmp_path):
    args = ["pretrain", "--shard-set", str(synthetic_shards.folder), "--out", str(tmp_path / "cpu64")]
    args += ["--model", "mae_cpu64", "--batch-size", "6", "--eff-batch", "6", "--steps", "1", "--workers", "0"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    resolved = json.loads((tmp_path / "cpu64" / "run_config.json").read_text())
    assert resolved["model"]["img_size"] == 64 and resolved["model"]["encoder_args"]["embed_dim"] == 96
    assert resolved["warmup_steps"] == 0  # 40 default warmup epochs of a 1-step schedule: clamped


def test_cli_finetunes_random_init_at_img_size_64_then_reports_the_run_folder(synthetic_shards, tmp_path):
    splits = tmp_path / "splits.parquet"
    assert runner.invoke(app, ["splits", str(synthetic_shards.manifest), "--out", str(splits)]).exit_code == 0
    run = tmp_path / "run"
    args = ["finetune", "--manifest", str(synthetic_shards.manifest), "--shards", str(synthetic_shards.root)]
    args += ["--splits", str(splits), "--init", "random", "--arch", "vit_tiny_patch16_224", "--img-size", "64"]
    args += ["--resize", "73", "--epochs", "1", "--batch-size", "8", "--workers", "0", "--device", "cpu"]
    r = runner.invoke(app, [*args, "--out", str(run)])
    assert r.exit_code == 0, r.output  # was: "Input height (64) doesn't match model (224)"
    info = json.loads((run / "classifier.json").read_text())
    assert info["encoder"]["model_kwargs"]["img_size"] == 64 and info["img_size"] == 64
    report = tmp_path / "report"
    r = runner.invoke(app, ["report", str(run), "--out", str(report)])
    assert r.exit_code == 0, r.output
    assert (report / "accuracy.md").is_file() and (report / "results.csv").is_file()
    pngs = [p.name for p in report.rglob("*.png") if not p.name.startswith("accuracy")]
    assert pngs, sorted(p.name for p in report.rglob("*"))  # the run's confusion matrix and reliability diagram
    r = runner.invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "r2")])
    assert r.exit_code == 1 and "not a finished finetune run folder" in r.output


#: CLI command -> [(dataclass, {CLI parameter: field} where the names differ)]. Parameters without a field are
#: not compared; a default the CLI must state differently is in EXCEPTIONS with its reason.
MIRRORS = {
    "pretrain": [(PretrainConfig, {})],
    "finetune": [(Recipe, {"workers": "num_workers"}), (EncoderSpec, {})],
    "splits": [(SplitConfig, {})],
    "predict": [(PredictOptions, {})],
}
EXCEPTIONS = {
    ("pretrain", "workers"),  # None on the CLI: the checkpoint's on --resume, else the dataclass's 8
    ("splits", "fractions"),  # a comma-separated string on the CLI
}


def _cli_default(param):
    default = param.default
    if isinstance(default, Path):  # a path option mirrors a str field
        return str(default)
    return default.value if hasattr(default, "value") else default


@pytest.mark.parametrize("command", sorted(MIRRORS))
def test_cli_defaults_equal_the_library_defaults(command):
    click_cmd = get_command(app).commands[command]  # type: ignore[attr-defined]
    params = {p.name: p for p in click_cmd.params}
    checked = 0
    for cls, renames in MIRRORS[command]:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name, param in params.items():
            field = fields.get(renames.get(name, name))
            if field is None or (command, name) in EXCEPTIONS or param.required:
                continue
            if field.default is dataclasses.MISSING:
                continue
            assert _cli_default(param) == field.default, f"{command} --{name}: CLI {param.default!r} != {field}"
            checked += 1
    assert checked >= 3, f"{command}: only {checked} options compared"


def test_the_pretrain_workers_default_is_the_dataclass_default():
    assert PretrainConfig.__dataclass_fields__["workers"].default == 8  # what the CLI's None means without --resume


def test_shards_means_a_root_everywhere_and_shard_set_one_folder():
    commands = get_command(app).commands  # type: ignore[attr-defined]
    opts = {name: {o for p in cmd.params for o in p.opts} for name, cmd in commands.items()}
    assert "--shard-set" in opts["pretrain"] and "--shard-set" in opts["reconstruct"]
    assert "--shards" in opts["finetune"] and "--shards-root" not in opts["finetune"]
    assert "--shards" not in opts["pretrain"] and "--shards" not in opts["reconstruct"]
