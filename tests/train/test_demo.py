"""``plankton-train demo --quick`` through the installed console script: every stage runs, every artefact the
summary names exists, and the summary lists each one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from plankton_train.demo import DemoError, run_demo


def _console_script() -> Path:
    script = Path(sys.executable).parent / "plankton-train"
    if not script.is_file():
        pytest.skip(f"{script} is not installed (pip install -e '.[train,dev]')")
    return script


STAGES = ("raw archives", "ingest", "shard set", "pretrain", "reconstruction", "splits", "fine-tune", "report")


def test_quick_demo_runs_every_stage_and_lists_every_artefact(tmp_path):
    out = tmp_path / "demo"
    t0 = time.perf_counter()
    res = subprocess.run(
        [str(_console_script()), "demo", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "200"},
    )
    seconds = time.perf_counter() - t0
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = res.stdout
    for stage in (*STAGES, "predict", "total"):
        assert stage in summary, f"{stage!r} not in the summary:\n{summary}"
    expected = {
        "raw": out / "raw",
        "shards": out / "shards",
        "manifests": out / "manifests",
        "shard_set": out / "shards" / "no_daplankton" / "index.json",
        "encoder": out / "pretrain" / "encoder" / "model.safetensors",
        "reconstruction": out / "figures" / "reconstruction.png",
        "splits": out / "splits" / "daplankton.parquet",
        "results": out / "finetune" / "results.csv",
        "report": out / "report" / "accuracy.md",
        "predictions": out / "predictions.csv",
    }
    listed = summary.split("Open:", 1)[1]
    for label, path in expected.items():
        assert path.exists(), f"{label}: {path} missing"
        assert label in listed, f"{label} not listed"
    for line in listed.strip().splitlines():
        path = Path(line.split()[-1])
        assert path.exists(), f"the summary lists {path}, which does not exist"
    results = pd.read_csv(out / "finetune" / "results.csv")
    assert set(results["model"]) == {"mae_no_daplankton", "random_init"} and (results["fraction"] == 0.1).all()
    assert len(pd.read_csv(out / "predictions.csv")) > 0
    assert any((out / "report").rglob("*.png"))
    assert seconds < 180, f"the quick demo took {seconds:.0f} s"


def test_demo_refuses_a_folder_that_is_not_a_demo(tmp_path):
    (tmp_path / "thesis.tex").write_text("keep me")
    with pytest.raises(DemoError, match="thesis.tex"):
        run_demo(tmp_path)
    assert (tmp_path / "thesis.tex").is_file()
