"""``bash benchmarks/gpu_check.sh --smoke``: the GPU check's code paths on a CPU, through bash, as CI runs it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

ROWS = [
    "pretrain mae_test fp32 eager",
    "pretrain mae_test bf16 eager",
    "pretrain mae_test fp32 compiled",
    "pretrain mae_test bf16 compiled",
    "finetune vit_tiny_patch16_224 fp32 eager",
    "finetune vit_tiny_patch16_224 bf16 compiled",
]


def _number(cell: str) -> float:
    return float(cell.rstrip("%").replace(",", ""))


@pytest.mark.slow
def test_smoke_prints_the_table_with_every_row_and_finite_numbers(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--smoke", "--work", str(tmp_path / "work")]
        + ["--json", str(tmp_path / "rows.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,  # the script finds the checkout itself
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| row"))
    columns = [c.strip() for c in lines[header].strip("|").split("|")]
    assert columns == ["row", "images/s", "GFLOP/img", "TFLOP/s", "MFU", "data wait", "peak mem GB", "seconds"]
    body = [[c.strip() for c in line.strip("|").split("|")] for line in lines[header + 2 :] if line.startswith("|")]
    assert [r[0] for r in body] == ROWS
    for row in body:
        cells = dict(zip(columns, row, strict=True))
        for key in ("images/s", "GFLOP/img", "TFLOP/s", "seconds"):
            assert math.isfinite(_number(cells[key])) and _number(cells[key]) >= 0, (key, row)
        assert _number(cells["images/s"]) > 0 and _number(cells["GFLOP/img"]) > 0
        assert cells["MFU"] == "-" and cells["peak mem GB"] == "-"  # a CPU has neither
        if row[0].startswith("pretrain"):
            assert 0 <= _number(cells["data wait"]) <= 100  # the real loader's wait share
    saved = json.loads((tmp_path / "rows.json").read_text())
    assert saved["smoke"] is True and [r["row"] for r in saved["rows"]] == ROWS
    losses = {r["row"]: r["loss"] for r in saved["rows"] if r["row"].startswith("pretrain")}
    assert all(math.isfinite(v) for v in losses.values())
    # same batches and masks: compiled equals eager, bf16 is close to fp32
    assert losses[ROWS[2]] == pytest.approx(losses[ROWS[0]], rel=1e-4)
    assert losses[ROWS[1]] == pytest.approx(losses[ROWS[0]], rel=0.05)
    assert (tmp_path / "work" / "shards" / "check" / "index.json").is_file()  # generated from the fixtures
