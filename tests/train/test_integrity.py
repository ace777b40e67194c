"""Integrity of what training writes: checkpoints carry a digest (bit rot is refused), results rows are whole."""

from __future__ import annotations

import struct
import zipfile

import pytest
import torch

from plankton_train.errors import CheckpointError
from plankton_train.models.checkpoint import load_checkpoint, save_checkpoint
from plankton_train.models.mae import MAE, MODELS


def _state() -> dict:
    model = MAE(MODELS["mae_test"])
    optimizer = torch.optim.AdamW(model.parameters())
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 7, "model_cfg": {"a": 1}}


def _flip_inside_largest_tensor(path) -> None:
    """Flip one byte in the middle of the biggest tensor's stored bytes (torch's zip stores them uncompressed)."""
    with zipfile.ZipFile(path) as zf:
        info = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as fh:
        fh.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", fh.read(4))
        where = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        fh.seek(where)
        byte = fh.read(1)[0]
        fh.seek(where)
        fh.write(bytes([byte ^ 0x10]))


def test_a_checkpoint_round_trips_and_a_flipped_weight_byte_is_refused(tmp_path):
    state = _state()
    path = save_checkpoint(tmp_path / "step-00000007.pt", state)
    loaded = load_checkpoint(path)
    assert loaded["step"] == 7 and "digest" not in loaded
    assert all(torch.equal(loaded["model"][k], v) for k, v in state["model"].items())
    _flip_inside_largest_tensor(path)
    with pytest.raises(CheckpointError, match="damaged: its contents do not match the digest"):
        load_checkpoint(path)


def test_checkpoints_from_before_the_digest_still_load(tmp_path):
    state = _state()
    path = tmp_path / "step-00000001.pt"
    torch.save({"format": "plankton-mae-checkpoint/1", **state}, path)  # as written before digests existed
    assert load_checkpoint(path)["step"] == 7


def test_a_results_row_cut_short_is_not_a_finished_cell(tmp_path, caplog):
    import logging

    from plankton_train.protocol.experiment import RESULT_COLUMNS, read_results_csv

    row = ",".join(
        {"model": "m", "group": "g", "fraction": "0.1", "fold": "0", "run_dir": "runs/m/g/10pct/fold0"}.get(c, "1")
        for c in RESULT_COLUMNS
    )
    path = tmp_path / "results.csv"
    path.write_text(",".join(RESULT_COLUMNS) + "\n" + row + "\n" + row.replace("fold0", "fold1")[:25] + "\n")
    with caplog.at_level(logging.WARNING):
        done = read_results_csv(path)
    assert len(done) == 1 and done.loc[0, "fold"] == 0 and "1 incomplete row(s) dropped" in caplog.text
    assert read_results_csv(tmp_path / "none.csv").empty


def test_a_checkpoint_that_cannot_be_written_leaves_nothing_behind(tmp_path):
    """A full disk makes torch raise RuntimeError mid-write; /dev/full is a real device that is always full."""
    import os

    full = tmp_path / "ckpt"
    full.mkdir()
    os.symlink("/dev/full", full / ".step-00000001.pt.partial")  # the temp name: writes land on a full device
    with pytest.raises((CheckpointError, OSError)):  # both are one line in the CLI (ENOSPC arrives as either)
        save_checkpoint(full / "step-00000001.pt", _state())
    assert sorted(p.name for p in full.iterdir()) == []
