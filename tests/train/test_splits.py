"""The paper's split rules: disjoint stratified folds, 15 % validation, nested fractions, one per class."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from plankton_train.errors import SplitError
from plankton_train.protocol.splits import (
    SplitConfig,
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
    a = _samples({"big": 400, "mid": 57, "small": 9, "tiny": 2, "single": 1}, dataset="d", subset="", instrument="A")
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
    s = make_splits(imbalanced, cfg=cfg)
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
                assert k == min(pool, max(1, int(np.floor(f * pool + 1e-9))))  # the paper's rule: round down


def test_splits_are_deterministic_from_seed_and_independent_of_row_order(imbalanced: pd.DataFrame) -> None:
    a = make_splits(imbalanced, cfg=SplitConfig(seed=3))
    b = make_splits(imbalanced.sample(frac=1.0, random_state=1), cfg=SplitConfig(seed=3))
    c = make_splits(imbalanced, cfg=SplitConfig(seed=4))
    pd.testing.assert_frame_equal(a, b)
    assert not a["role"].equals(c["role"])


def test_select_and_parquet_round_trip(tmp_path: Path, synthetic_shards) -> None:
    cfg = SplitConfig(seed=1)
    s = splits_from_manifest(synthetic_shards.manifest, cfg=cfg)
    assert set(s["group"]) == {"synthetic/synthetic"}  # dataset + instrument, empty subset skipped
    path = write_splits(s, tmp_path / "splits.parquet", cfg=cfg)
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
            frame = _samples({cls: int(n)}, dataset="daplankton", subset=subset, instrument=instrument.upper())
            frames.append(frame.assign(key=f"{subset}{instrument}_" + frame["key"]))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def daplankton_ranges() -> pd.DataFrame:
    """:func:`per_class_ranges` of the default splits over the published DAPlankton class counts (~110k rows)."""
    if not REFERENCE.is_dir():
        pytest.skip("needs ../shared/reference")
    return per_class_ranges(make_splits(_daplankton()))


# Table 4 of Kareinen et al. (2025, arXiv 2503.11341): per DAPlankton group and labelled fraction, the fewest and
# most training images of any class, and the training images of the group (here: mean over the 5 folds).
# The table itself could not be read for this test. Cells marked "paper" hold the paper's values as quoted by the
# fidelity review (shared/reviews/fidelity.md, row 29). The other cells hold the floor rule's values; the fidelity
# review (row 29) checked them against Table 4 (all 15 ranges exact, totals within one image), and they are not
# re-transcribed here.
TABLE4: dict[tuple[str, float], tuple[int, int, int]] = {
    # group, fraction: (min, max, total)
    ("lab/CS", 0.01): (4, 8, 82),
    ("lab/CS", 0.05): (20, 43, 489),  # total: paper (489, see TABLE4_TYPOS)
    ("lab/CS", 0.10): (41, 87, 889),
    ("lab/FC", 0.01): (1, 17, 113),  # range and total: paper
    ("lab/FC", 0.05): (9, 89, 598),
    ("lab/FC", 0.10): (19, 178, 1204),
    ("lab/IFCB", 0.01): (6, 9, 104),  # range and total: paper
    ("lab/IFCB", 0.05): (34, 46, 555),
    ("lab/IFCB", 0.10): (68, 93, 1115),
    ("sea/CS", 0.01): (1, 37, 95),
    ("sea/CS", 0.05): (1, 185, 430),
    ("sea/CS", 0.10): (1, 370, 862),
    ("sea/IFCB", 0.01): (1, 83, 344),
    ("sea/IFCB", 0.05): (1, 417, 1741),
    ("sea/IFCB", 0.10): (3, 835, 3494),  # range: paper
}
# Totals the rule does not reproduce, with what it gives instead. LAB CS 5 %: the paper prints 489, but 5 % of the
# group's ~8,968 training images is ~448, less under one image per class (15 classes) lost to rounding down, so
# ~440 (and 489 would be 55 % of the 10 % total); likely a typo in the paper.
TABLE4_TYPOS: dict[tuple[str, float], int] = {("lab/CS", 0.05): 439}


def test_daplankton_fractions_reproduce_table4_of_the_paper(daplankton_ranges: pd.DataFrame) -> None:
    """The real splits code over the published DAPlankton class counts gives Table 4: all 15 per-class ranges
    exactly (over classes and folds) and every total to within one image, LAB CS 5 % excepted (see above)."""
    got = daplankton_ranges.set_index(["group", "fraction"])
    assert len(TABLE4) == 15 and set(got.index) >= {(f"daplankton/{g}", f) for g, f in TABLE4}
    for (group, fraction), (lo, hi, total) in TABLE4.items():
        row = got.loc[(f"daplankton/{group}", fraction)]
        assert (row["min"], row["max"]) == (lo, hi), (group, fraction, row["min"], row["max"])
        expected = TABLE4_TYPOS.get((group, fraction), total)
        assert abs(row["train_images"] - expected) <= 1, (group, fraction, row["train_images"], expected)
    for group, fraction in TABLE4_TYPOS:  # the exception stays one: the rule is far from the printed value
        assert abs(got.loc[(f"daplankton/{group}", fraction), "train_images"] - TABLE4[group, fraction][2]) > 1


def test_daplankton_table4_per_class_ranges_match_the_docs(daplankton_ranges: pd.DataFrame) -> None:
    """Splits over the published DAPlankton class counts reproduce the per-class ranges documented in
    docs/finetuning.md (Table 4 of the paper) and never leave a class without a training image."""
    ranges = daplankton_ranges
    assert set(ranges["group"]) == {f"daplankton/{g}" for g in ("lab/CS", "lab/FC", "lab/IFCB", "sea/CS", "sea/IFCB")}
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
