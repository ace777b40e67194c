"""The paper's split rules: disjoint stratified folds, 15 % validation, nested fractions, one per class."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from plankton_train.splits import (
    SplitConfig,
    SplitError,
    fraction_column,
    make_splits,
    per_class_ranges,
    read_splits,
    select,
    splits_from_manifest,
    write_splits,
)

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference"
DOC = Path(__file__).resolve().parents[2] / "docs" / "finetuning.md"


def _samples(counts: dict[str, int], **cols: str) -> pd.DataFrame:
    rows = [dict(key=f"{c}_{i:05d}", label=c, **cols) for c, n in counts.items() for i in range(n)]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def imbalanced() -> pd.DataFrame:
    """Two groups; classes from 1 to 400 images (tiny classes are where split rules break)."""
    a = _samples(
        {"big": 400, "mid": 57, "small": 9, "tiny": 2, "single": 1}, dataset="d", subset="", instrument="A"
    )
    b = _samples({"big": 120, "other": 33}, dataset="d", subset="", instrument="B")
    b["key"] = "B" + b["key"]
    return pd.concat([a, b], ignore_index=True)


def test_test_folds_are_disjoint_and_cover_every_sample(imbalanced: pd.DataFrame) -> None:
    s = make_splits(imbalanced)
    test = s[s["role"] == "test"]
    assert test["key"].is_unique  # each sample is test in exactly one fold ...
    assert set(test["key"]) == set(imbalanced["key"])  # ... and every sample is test once
    sizes = s.groupby("group")["key"].nunique()
    for (group, _), g in s.groupby(["group", "fold"]):
        assert g["key"].is_unique and len(g) == sizes[group]  # one role per sample: train/val/test disjoint


def test_folds_are_stratified_and_val_is_15_percent_of_train(imbalanced: pd.DataFrame) -> None:
    s = make_splits(imbalanced)
    for (group, label), g in s.groupby(["group", "label"]):
        n = g["key"].nunique()
        per_fold_test = g[g["role"] == "test"].groupby("fold").size().reindex(range(5), fill_value=0)
        assert per_fold_test.min() >= n // 5 and per_fold_test.max() <= -(-n // 5), (group, label)
        for fold in range(5):
            f = g[g["fold"] == fold]
            n_train_part = (f["role"] != "test").sum()
            n_val = (f["role"] == "val").sum()
            if n_train_part >= 2:
                assert abs(n_val - 0.15 * n_train_part) <= 0.5
    big = s[(s["label"] == "big") & (s["group"] == "d/A")]
    assert (big["role"] == "test").sum() / 5 == 80  # 20 % of 400 per fold


def test_fractions_are_nested_stratified_and_keep_one_per_class(imbalanced: pd.DataFrame) -> None:
    cfg = SplitConfig()
    s = make_splits(imbalanced, cfg)
    cols = [fraction_column(f) for f in cfg.fractions]
    assert cols == ["in_1pct", "in_5pct", "in_10pct", "in_100pct"]
    assert not s.loc[s["role"] != "train", cols].any().any()  # fractions only draw from the train role
    assert (s[s["role"] == "train"]["in_100pct"]).all()
    for small, large in zip(cols, cols[1:], strict=False):
        assert not (s[small] & ~s[large]).any()  # nested
    for (_, fold, label), g in s.groupby(["group", "fold", "label"]):
        pool = (g["role"] == "train").sum()
        for f, col in zip(cfg.fractions, cols, strict=True):
            k = g[col].sum()
            if pool:
                assert k >= 1, (label, fold, f)
                assert k == min(pool, max(1, int(np.floor(f * pool + 0.5))))


def test_splits_are_deterministic_from_seed_and_independent_of_row_order(imbalanced: pd.DataFrame) -> None:
    a = make_splits(imbalanced, SplitConfig(seed=3))
    b = make_splits(imbalanced.sample(frac=1.0, random_state=1), SplitConfig(seed=3))
    c = make_splits(imbalanced, SplitConfig(seed=4))
    pd.testing.assert_frame_equal(a, b)
    assert not a["role"].equals(c["role"])


def test_select_and_parquet_round_trip(tmp_path: Path, synthetic_shards) -> None:
    cfg = SplitConfig(seed=1)
    s = splits_from_manifest(synthetic_shards.manifest, cfg)
    assert set(s["group"]) == {"synthetic/synthetic"}  # dataset + instrument, empty subset skipped
    path = write_splits(s, tmp_path / "splits.parquet", cfg)
    back, back_cfg = read_splits(path)
    assert back_cfg == cfg
    pd.testing.assert_frame_equal(back, s)
    keys = select(back, "synthetic/synthetic", 2, 0.01)
    assert len(keys["train"]) == 3  # one per class
    assert not set(keys["train"]) & set(keys["val"]) and not set(keys["val"]) & set(keys["test"])
    with pytest.raises(SplitError, match="groups are"):
        select(back, "nope", 0, 0.01)
    with pytest.raises(SplitError, match="fraction"):
        select(back, "synthetic/synthetic", 0, 0.2)


def _daplankton() -> pd.DataFrame:
    counts = pd.read_csv(REFERENCE / "daplankton_class_counts.tsv", sep="\t")
    frames = []
    for col in [c for c in counts.columns if re.fullmatch(r"n_(lab|sea)_\w+", c)]:
        _, subset, instrument = col.split("_")
        for cls, n in zip(counts["class_dir"], counts[col], strict=True):
            if n == 0:
                continue
            frame = _samples(
                {cls: int(n)}, dataset="daplankton", subset=subset, instrument=instrument.upper()
            )
            frames.append(frame.assign(key=f"{subset}{instrument}_" + frame["key"]))
    return pd.concat(frames, ignore_index=True)


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="needs ../shared/reference")
def test_daplankton_table4_per_class_ranges_match_the_docs() -> None:
    """Splits over the published DAPlankton class counts reproduce the per-class ranges documented in
    docs/finetuning.md (Table 4 of the paper) and never leave a class without a training image."""
    ranges = per_class_ranges(make_splits(_daplankton()))
    assert set(ranges["group"]) == {
        f"daplankton/{g}" for g in ("lab/CS", "lab/FC", "lab/IFCB", "sea/CS", "sea/IFCB")
    }
    assert (ranges["min"] >= 1).all()
    lab = ranges[ranges["group"].str.contains("/lab/")]
    assert set(lab["classes"]) == {15}
    assert set(ranges[ranges["group"].str.contains("/sea/")]["classes"]) == {31}
    # LAB CS: classes of 608..1285 images -> 80 % train part, 85 % of it kept -> 413..874 at 100 %
    row = ranges[(ranges["group"] == "daplankton/lab/CS") & (ranges["fraction"] == 1.0)].iloc[0]
    assert (row["min"], row["max"]) == (413, 874)
    documented = {}
    for line in DOC.read_text().splitlines():
        m = re.fullmatch(r"\| (daplankton/\S+) \| (\d+) \| (.+) \|", line.strip())
        if m:
            documented[m.group(1)] = [c.strip() for c in m.group(3).split("|")]
    assert documented, "docs/finetuning.md lacks the DAPlankton per-class range table"
    for group, cells in documented.items():
        g = ranges[ranges["group"] == group].sort_values("fraction")
        assert cells == [f"{a}-{b}" for a, b in zip(g["min"], g["max"], strict=True)], group
