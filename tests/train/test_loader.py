"""Streaming loader: exact epochs, equal batches per rank, determinism, exact resume, corrupt samples."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from plankton_data.format.index import read_index
from plankton_data.format.manifest import read_manifest
from plankton_data.format.samples import sample_table, scan_headers
from plankton_train.data.augment import eval_transform, normalize, train_transform
from plankton_train.data.stream import (
    ShardStream,
    StreamError,
    StreamLoader,
    batches_per_epoch,
    rank_batches,
)


def _take(loader: StreamLoader, n: int) -> list[dict]:
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def test_sample_table_matches_the_manifest_offsets(synthetic_shards):
    table = scan_headers(synthetic_shards.folder, read_index(synthetic_shards.folder))
    rows = read_manifest(synthetic_shards.manifest).to_pandas().set_index("key")
    assert len(table) == synthetic_shards.total == 36
    for i, key in enumerate(table.keys):
        row = rows.loc[key.decode()]
        assert (table.offset[i], table.length[i]) == (row["offset"], row["length"])
        assert table.shard_names[table.shard[i]] == Path(row["shard"]).name


def test_the_loader_takes_offsets_from_the_manifest_and_scans_only_without_one(synthetic_shards, tmp_path):
    index = read_index(synthetic_shards.folder)
    from_manifest, from_headers = (
        sample_table(synthetic_shards.folder, index),
        scan_headers(synthetic_shards.folder, index),
    )
    assert (from_manifest.source, from_headers.source) == ("manifest", "headers")
    for field in ("shard", "offset", "length", "keys"):
        assert np.array_equal(getattr(from_manifest, field), getattr(from_headers, field)), field
    assert ShardStream(synthetic_shards.folder, 4, out_size=32).table.source == "manifest"
    alone = tmp_path / "alone"  # a copy whose index names a manifest that is not there
    shutil.copytree(synthetic_shards.folder, alone)
    (alone / "index.json").write_text((alone / "index.json").read_text().replace(".parquet", ".moved.parquet"))
    table = ShardStream(alone, 4, out_size=32).table
    assert table.source == "headers" and np.array_equal(table.offset, from_manifest.offset)


def test_a_manifest_that_disagrees_with_the_index_is_not_trusted(synthetic_shards, tmp_path, caplog):
    rows = read_manifest(synthetic_shards.manifest).slice(0, 30)  # six samples short
    stale = tmp_path / "stale.parquet"
    import pyarrow.parquet as pq

    pq.write_table(rows, stale)
    with caplog.at_level(logging.WARNING):
        table = sample_table(synthetic_shards.folder, read_index(synthetic_shards.folder), stale)
    assert table.source == "headers" and len(table) == 36 and "scanning tar headers" in caplog.text


@pytest.mark.parametrize(("num", "batch", "world"), [(36, 8, 1), (36, 8, 2), (37, 4, 4), (37, 5, 3), (10, 3, 3)])
def test_each_epoch_covers_every_sample_once_with_equal_batch_counts(num, batch, world):
    for epoch in (0, 1):
        per_rank = [rank_batches(num, batch, world, r, seed=5, epoch=epoch) for r in range(world)]
        assert {len(b) for b in per_rank} == {batches_per_epoch(num, batch, world)}
        ids = np.concatenate([np.concatenate(b) for b in per_rank])
        assert sorted(ids.tolist()) == list(range(num))  # every sample exactly once, ranks disjoint
        assert all(1 <= len(x) <= batch for b in per_rank for x in b)


def test_order_depends_on_seed_and_epoch_only():
    def same(seed: int, epoch: int) -> bool:
        other = rank_batches(100, 10, 2, 1, seed=seed, epoch=epoch)
        return all(np.array_equal(x, y) for x, y in zip(a, other, strict=True))

    a = rank_batches(100, 10, 2, 1, seed=3, epoch=0)
    assert same(3, 0) and not same(3, 1) and not same(4, 0)


def test_too_few_samples_for_the_ranks_is_an_error():
    with pytest.raises(StreamError, match="cannot fill"):
        batches_per_epoch(3, 1, 2)


def test_batches_are_uint8_identical_for_any_worker_count(synthetic_shards):
    def run(workers: int) -> list[dict]:
        stream = ShardStream(synthetic_shards.folder, 8, out_size=32, seed=1, epochs=2)
        return list(StreamLoader(stream, num_workers=workers))

    one, two = run(0), run(2)
    assert [b["position"] for b in two] == list(range(10))  # 5 batches x 2 epochs, in order
    first = two[0]["images"]
    assert first.dtype == torch.uint8 and first.shape == (8, 1, 32, 32)
    for x, y in zip(one, two, strict=True):
        assert torch.equal(x["images"], y["images"]) and torch.equal(x["index"], y["index"])
    epoch0 = torch.cat([b["index"] for b in two[:5]])
    epoch1 = torch.cat([b["index"] for b in two[5:]])
    assert sorted(epoch0.tolist()) == sorted(epoch1.tolist()) == list(range(36))
    assert not torch.equal(epoch0, epoch1)  # reshuffled per epoch


def test_resume_mid_epoch_gives_the_same_next_batches(synthetic_shards):
    def loader(workers: int) -> StreamLoader:
        return StreamLoader(ShardStream(synthetic_shards.folder, 4, out_size=32, seed=2), num_workers=workers)

    straight = _take(loader(2), 12)
    first = loader(2)
    _take(first, 7)  # stop inside epoch 0 (9 batches per epoch)
    state = first.state_dict()
    assert state["position"] == 7
    resumed = loader(1)  # a different worker count must not matter
    resumed.load_state_dict(state)
    assert resumed.epoch == 0
    rest = _take(resumed, 5)
    for x, y in zip(straight[7:], rest, strict=True):
        assert x["position"] == y["position"]
        assert torch.equal(x["images"], y["images"]) and torch.equal(x["index"], y["index"])


def test_state_from_another_geometry_is_refused(synthetic_shards):
    state = StreamLoader(ShardStream(synthetic_shards.folder, 4, out_size=32)).state_dict()
    other = StreamLoader(ShardStream(synthetic_shards.folder, 6, out_size=32))
    with pytest.raises(StreamError, match="batch_size"):
        other.load_state_dict(state)


def _damaged_copy(src: Path, dst: Path) -> tuple[Path, str]:
    """Copy a shard folder and overwrite one image's bytes with garbage; returns the folder and the key."""
    shutil.copytree(src, dst)
    table = scan_headers(dst, read_index(dst))
    with open(dst / table.shard_names[table.shard[5]], "r+b") as fh:
        fh.seek(int(table.offset[5]))
        fh.write(b"\xff\xd8" + b"\x00garbage" * 40)
    return dst, table.keys[5].decode()


def test_corrupt_samples_are_counted_and_replaced_not_fatal(synthetic_shards, tmp_path, caplog):
    folder, key = _damaged_copy(synthetic_shards.folder, tmp_path / "damaged")
    loader = StreamLoader(ShardStream(folder, 6, out_size=32, epochs=1), num_workers=2)
    with caplog.at_level(logging.WARNING):
        batches = list(loader)
    assert [len(b["images"]) for b in batches] == [6] * 6  # shapes kept
    assert loader.corrupt_count == 1 and loader.state_dict()["corrupt_count"] == 1
    assert key in caplog.text
    bad = next(b for b in batches if b["corrupt"])
    assert bad["corrupt"][0].startswith(key)


def test_truncated_shard_loses_only_its_tail(synthetic_shards, tmp_path, caplog):
    folder = tmp_path / "cut"
    shutil.copytree(synthetic_shards.folder, folder)
    tar = folder / read_index(folder).shards[0].name
    tar.write_bytes(tar.read_bytes()[:20000])  # 10 samples of ~4.6 KB each; keep about 4
    with caplog.at_level(logging.WARNING):
        stream = ShardStream(folder, 4, out_size=32, epochs=1)
    assert 26 + 3 <= stream.num_samples < 36
    assert "truncated" in caplog.text
    assert sum(len(b["index"]) for b in StreamLoader(stream, num_workers=0)) == stream.num_samples


def test_missing_shard_is_a_one_line_error(synthetic_shards, tmp_path):
    folder = tmp_path / "missing"
    shutil.copytree(synthetic_shards.folder, folder)
    (folder / read_index(folder).shards[1].name).unlink()
    with pytest.raises(StreamError, match="missing"):
        ShardStream(folder, 4)


def test_train_transform_is_seeded_and_matches_the_paper_geometry():
    img = np.tile(np.arange(256, dtype=np.uint8), (256, 1))  # horizontal ramp: flips and crops are visible
    a = train_transform(img, np.random.default_rng(0))
    assert a.shape == (224, 224) and a.dtype == np.uint8 and a.flags.c_contiguous
    assert np.array_equal(a, train_transform(img, np.random.default_rng(0)))
    noise = np.random.default_rng(9).integers(0, 256, (256, 256), dtype=np.uint8)
    assert len({train_transform(noise, np.random.default_rng(s)).tobytes() for s in range(40)}) == 40
    outs = [train_transform(img, np.random.default_rng(s)) for s in range(40)]
    rising = [o[112, 200] > o[112, 20] for o in outs]
    assert 5 < sum(rising) < 35  # horizontal flips happen about half of the time
    odd = train_transform(np.zeros((300, 180), np.uint8), np.random.default_rng(1), out_size=64)
    assert odd.shape == (64, 64)


def test_eval_transform_resizes_then_centre_crops():
    img = np.zeros((256, 256), np.uint8)
    img[16:240, 16:240] = 200  # exactly the 224 centre
    out = eval_transform(img)
    assert out.shape == (224, 224) and (out == 200).all()
    assert eval_transform(np.zeros((100, 50), np.uint8), out_size=32, resize=40).shape == (32, 32)


def test_normalize_uses_the_shard_statistics():
    batch = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)
    out = normalize(batch, mean=0.5, std=0.25)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[[[-2.0, 2.0]]]]))
