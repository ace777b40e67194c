"""Training checkpoints carry a digest of everything in them: bit rot in the weights is refused, not trained on."""

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
