"""``--precision bf16|fp32`` and ``--compile`` on CPU: the GPU's bf16 autocast path, recorded, resumed, compiled.

bf16 on a CPU is ``torch.autocast("cpu", dtype=torch.bfloat16)``: the same code path a GPU run takes, so CI
exercises it. Compiled runs use the ``aot_eager`` backend in the fast tests (dynamo capture, graph breaks and
AOT autograd, without inductor's C++ code generation, which costs about a minute cold on 2 cores); the slow
test runs inductor itself.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from plankton_train.engine.device import autocast
from plankton_train.engine.precision import PRECISIONS, resolve_precision
from plankton_train.errors import FinetuneError, PretrainError
from plankton_train.finetune import Cell, Recipe, finetune
from plankton_train.models.checkpoint import load_checkpoint
from plankton_train.models.classifier import EncoderSpec
from plankton_train.pretrain import PretrainConfig, resume_config, run_pretrain
from plankton_train.protocol.splits import SplitConfig, splits_from_manifest, write_splits

TINY = dict(model="mae_test", batch_size=4, eff_batch=4, steps=4, warmup_steps=1, seed=5, log_every=1, ckpt_every=0)
BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _run(shards, out: Path, **kw):
    cfg = PretrainConfig(shards=str(shards.folder), out=str(out), workers=0, **{**TINY, **kw})
    return run_pretrain(cfg)


@pytest.fixture(scope="module")
def fp32_run(synthetic_shards, tmp_path_factory):
    return _run(synthetic_shards, tmp_path_factory.mktemp("fp32") / "run", precision="fp32")


def test_precision_names_resolve_and_autocast_follows_them():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [resolve_precision(p, "cpu") for p in PRECISIONS] == ["fp32", "bf16", "fp32"]
    assert resolve_precision("auto", "cuda") == "bf16"
    assert autocast(cpu, "bf16").fast_dtype == torch.bfloat16 and autocast(cpu, "bf16")._enabled
    assert not autocast(cpu, "fp32")._enabled and not autocast(cpu)._enabled  # auto on a CPU: fp32
    assert autocast(cuda, "fp32")._enabled is False
    with autocast(cpu, "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16", "cpu")


def test_bf16_steps_on_cpu_are_finite_close_to_fp32_and_recorded(fp32_run, synthetic_shards, tmp_path):
    bf16 = _run(synthetic_shards, tmp_path / "bf16", precision="bf16")
    ref, got = _losses(fp32_run.run_dir), _losses(bf16.run_dir)
    assert len(got) == 4 and all(math.isfinite(x) for x in got)
    assert got != ref  # bf16 really ran: its matmuls round differently
    for a, b in zip(got, ref, strict=True):
        assert abs(a - b) <= 0.02 * abs(b), (got, ref)  # same batches and masks; only the rounding differs
    resolved = json.loads((bf16.run_dir / "run_config.json").read_text())
    assert resolved["precision"] == resolved["config"]["precision"] == "bf16" and resolved["compile"] is None
    assert load_checkpoint(bf16.checkpoint)["config"]["precision"] == "bf16"
    auto = json.loads((fp32_run.run_dir / "run_config.json").read_text())
    assert auto["precision"] == "fp32"


def test_auto_is_recorded_resolved(synthetic_shards, tmp_path):
    run = _run(synthetic_shards, tmp_path / "auto", steps=1)  # precision "auto" on a CPU
    assert json.loads((run.run_dir / "run_config.json").read_text())["config"]["precision"] == "fp32"


def test_compiled_losses_equal_eager_and_resume_keeps_precision_and_compile(fp32_run, synthetic_shards, tmp_path):
    out = tmp_path / "compiled"
    part = run_pretrain(
        PretrainConfig(
            shards=str(synthetic_shards.folder),
            out=str(out),
            workers=0,
            precision="fp32",
            compile=True,
            compile_backend="aot_eager",
            **TINY,
        ),
        stop_after=2,
    )
    assert part.step == 2
    cfg = resume_config(out)
    assert (cfg.precision, cfg.compile, cfg.compile_backend) == ("fp32", True, "aot_eager")
    rest = run_pretrain(cfg, resume=out)
    assert rest.step == 4
    resolved = json.loads((out / "run_config.json").read_text())
    assert resolved["compile"] == "aot_eager" and resolved["precision"] == "fp32"
    compiled, eager = _losses(out), _losses(fp32_run.run_dir)
    assert compiled == pytest.approx(eager, rel=1e-4)  # traced graphs, same kernels: equal within float noise
    # a compiled run's checkpoint has the eager model's keys (nn.Module.compile), so either loads the other
    assert set(load_checkpoint(rest.checkpoint)["model"]) == set(fp32_run.model.state_dict())


@pytest.mark.slow
def test_inductor_compiled_losses_match_eager_in_fp32_and_bf16(fp32_run, synthetic_shards, tmp_path):
    """The real --compile (inductor C++ kernels on the CPU); about a minute cold on 2 cores."""
    compiled = _run(synthetic_shards, tmp_path / "inductor", precision="fp32", compile=True)
    assert _losses(compiled.run_dir) == pytest.approx(_losses(fp32_run.run_dir), rel=1e-3)
    bf16_eager = _run(synthetic_shards, tmp_path / "bf16_eager", precision="bf16", steps=2)
    bf16_compiled = _run(synthetic_shards, tmp_path / "bf16_inductor", precision="bf16", steps=2, compile=True)
    assert _losses(bf16_compiled.run_dir) == pytest.approx(_losses(bf16_eager.run_dir), rel=2e-2)


def test_bad_precision_or_backend_is_refused():
    with pytest.raises(PretrainError, match="precision='fp16'"):
        PretrainConfig(shards="x", precision="fp16").validate()
    with pytest.raises(PretrainError, match="compile_backend='tvm'"):
        PretrainConfig(shards="x", compile_backend="tvm").validate()
    with pytest.raises(FinetuneError, match="precision='half'"):
        Recipe(precision="half").validate()


def test_finetune_in_bf16_compiled_records_how_it_trained(tmp_path):
    from tests.conftest import make_shard_folder

    folder = make_shard_folder(tmp_path, name="shapes", per_class=12, per_shard=40, seed=1)
    cfg = SplitConfig(seed=0)
    splits = write_splits(splits_from_manifest(folder.manifest, cfg=cfg), tmp_path / "splits.parquet", cfg=cfg)
    cell = Cell(folder.manifest, folder.root, splits, "shapes/synthetic")
    spec = EncoderSpec(
        arch="vit_tiny_patch16_224",
        init="random",
        model_kwargs=dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2),
    )
    recipe = Recipe(epochs=2, warmup_epochs=1, batch_size=8, img_size=32, resize=36, num_workers=0)
    res = finetune(
        cell,
        encoder=spec,
        recipe=replace(recipe, precision="bf16", compile=True, compile_backend="aot_eager"),
        out=tmp_path / "ft",
    )
    assert 0 <= res.accuracy <= 1
    saved = json.loads((tmp_path / "ft" / "classifier.json").read_text())["recipe"]
    assert (saved["precision"], saved["compile"], saved["compile_backend"]) == ("bf16", True, "aot_eager")
    history = (tmp_path / "ft" / "history.csv").read_text().splitlines()
    assert "train_images_per_s" in history[0] and len(history) == 3
    finetune(cell, encoder=spec, recipe=recipe, out=tmp_path / "auto")
    assert json.loads((tmp_path / "auto" / "classifier.json").read_text())["recipe"]["precision"] == "fp32"


def test_cli_compile_without_a_cxx_compiler_fails_in_one_line(synthetic_shards, tmp_path):
    """Where inductor cannot work (here: no C++ compiler), --compile is one red line and exit 1, before any step."""
    env = {**os.environ, "CXX": str(tmp_path / "no-such-g++"), "COLUMNS": "200"}
    args = [str(BIN / "plankton-train"), "pretrain", "--shard-set", str(synthetic_shards.folder)]
    args += ["--out", str(tmp_path / "run"), "--model", "mae_test", "--batch-size", "4", "--eff-batch", "4"]
    args += ["--steps", "1", "--warmup-steps", "0", "--workers", "0", "--precision", "bf16", "--compile"]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "C++ compiler" in lines[0] and "--compile" in lines[0], proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_cli_precision_choices_and_help(tmp_path):
    for command in ("pretrain", "finetune"):
        proc = subprocess.run(
            [str(BIN / "plankton-train"), command, "--help"],
            capture_output=True,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert proc.returncode == 0 and "--precision" in proc.stdout and "--compile" in proc.stdout
    proc = subprocess.run(
        [str(BIN / "plankton-train"), "pretrain", "--shard-set", str(tmp_path), "--precision", "fp16"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "fp16" in proc.stderr and "Traceback" not in proc.stderr


def test_finetune_compile_without_a_cxx_compiler_fails_before_training(tmp_path, monkeypatch):
    from torch._inductor import config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, str(tmp_path / "no-such-g++")))
    cell = Cell(tmp_path / "m.parquet", tmp_path, tmp_path / "s.parquet", "g")  # never read: the check comes first
    with pytest.raises(FinetuneError, match=r"--compile cannot work here: inductor needs a C\+\+ compiler"):
        finetune(
            cell, encoder=EncoderSpec(init="random"), recipe=Recipe(compile=True, device="cpu"), out=tmp_path / "o"
        )
    assert not (tmp_path / "o" / "history.csv").exists()
