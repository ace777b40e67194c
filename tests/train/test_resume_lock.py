"""Resuming and locking a pretraining run folder (the reliability review's D9, D6b and G3)."""

from __future__ import annotations

import json
import shutil

import pytest

from plankton_train.pretrain import PretrainConfig, resume_config, run_pretrain

TINY = dict(model="mae_test", batch_size=4, eff_batch=8, steps=6, warmup_steps=2, seed=3, log_every=1)


def test_resuming_a_copied_run_writes_into_the_copy_and_logs_each_step_once(synthetic_shards, tmp_path):
    """The reliability review's D9 and D6b: ``--resume runs/b`` (a copy of runs/a) must not touch runs/a."""
    cfg = PretrainConfig(shards=str(synthetic_shards.folder), out=str(tmp_path / "a"), workers=0, ckpt_every=2, **TINY)
    run_pretrain(cfg, stop_after=5)  # checkpoints at steps 2, 4 and the stop at 5; metrics logged for 1-5
    original = {p.name: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file() and "tb" not in p.parts}
    copy = tmp_path / "b" / "checkpoints"
    copy.mkdir(parents=True)
    shutil.copy(tmp_path / "a" / "checkpoints" / "step-00000004.pt", copy)
    shutil.copy(tmp_path / "a" / "metrics.jsonl", tmp_path / "b")  # logged up to step 5, past the checkpoint
    resumed = resume_config(copy / "step-00000004.pt")
    assert resumed.out == str(tmp_path / "b")
    rest = run_pretrain(resumed, resume=copy / "step-00000004.pt")
    assert rest.run_dir == tmp_path / "b" and rest.step == 6 and (tmp_path / "b" / "encoder").is_dir()
    after = {p.name: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file() and "tb" not in p.parts}
    assert after == original  # the original run is untouched: no new checkpoint, none pruned
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # step 5 was logged before the interruption and again after: once


def test_two_pretrains_into_one_folder_do_not_mix(synthetic_shards, tmp_path):
    """The review's G3: the second run refuses at once while the first holds the folder."""
    from plankton_data.errors import OutputLocked
    from plankton_data.format.lock import output_lock

    out = tmp_path / "run"
    cfg = PretrainConfig(shards=str(synthetic_shards.folder), out=str(out), workers=0, **TINY)
    with output_lock(out, tool="another"), pytest.raises(OutputLocked, match="is writing"):
        run_pretrain(cfg)
    assert not (out / "checkpoints").exists()
    assert run_pretrain(cfg).step == 6  # free again once the holder is gone
