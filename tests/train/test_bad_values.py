"""Bad option values give one line and a non-zero exit, never a traceback (the reliability review's B2, B4)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from plankton_train.errors import PretrainError, SplitError
from plankton_train.pretrain import PretrainConfig
from plankton_train.protocol.splits import splits_from_manifest

CLI = Path(sys.executable).parent / "plankton-train"


@pytest.mark.parametrize("epochs", [float("nan"), float("inf"), 0.0, -1.0])
def test_pretrain_epochs_must_be_finite_and_positive(epochs, tmp_path):
    with pytest.raises(PretrainError, match="finite and > 0"):
        PretrainConfig(shards=str(tmp_path), out=str(tmp_path / "o"), model="mae_test", epochs=epochs).validate()


def test_splits_by_a_missing_column_or_on_a_rejects_file(synthetic_shards, tmp_path):
    with pytest.raises(SplitError, match="has no column nosuchcol"):
        splits_from_manifest(synthetic_shards.manifest, group_by=("nosuchcol",))
    res = subprocess.run(
        [str(CLI), "splits", str(synthetic_shards.manifest), "--by", "nosuchcol", "--out", str(tmp_path / "s.parquet")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert [line for line in res.stderr.splitlines() if line.strip()][-1].startswith("error:")
    assert "has no column nosuchcol" in res.stderr


@pytest.mark.parametrize(
    "change", [{"lr": -1.0}, {"img_size": 0}, {"epochs": 0}, {"lr": float("nan")}, {"normalization": "x"}]
)
def test_finetune_settings_are_checked_before_any_work(change):
    from dataclasses import replace

    from plankton_train.errors import FinetuneError
    from plankton_train.finetune import Recipe

    with pytest.raises(FinetuneError, match="invalid fine-tuning settings"):
        replace(Recipe(), **change).validate()
    Recipe().validate()  # the paper's recipe is valid


def test_an_error_from_a_loader_worker_is_shown_as_its_own_message():
    from plankton_train.cli.main import one_line
    from plankton_train.errors import LabelledDataError

    wrapped = LabelledDataError(
        "Caught LabelledDataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n    raise LabelledDataError(msg)\n'
        "plankton_train.errors.LabelledDataError: cannot decode the jpg image at byte 512 of a/b.tar: bad\n"
    )
    assert one_line(wrapped) == "cannot decode the jpg image at byte 512 of a/b.tar: bad"
    assert one_line(OSError(28, "No space left on device")) == "[Errno 28] No space left on device"
