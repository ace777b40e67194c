"""``plankton-data datasets``: readable at 80 columns with every address whole, and ``--json`` for scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from plankton_data.ingest.adapters import list_adapters, list_sources

SCRIPT = Path(sys.executable).parent / "plankton-data"


def _run(*args: str, columns: int = 80) -> str:
    if not SCRIPT.is_file():
        pytest.skip(f"console script {SCRIPT} not installed")
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "dumb"}
    env.pop("NO_COLOR", None)
    res = subprocess.run([str(SCRIPT), "datasets", *args], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_datasets_fit_80_columns_and_print_every_url_whole() -> None:
    text = _run()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80, [line for line in lines if len(line) > 80]
    assert not [line for line in lines if line != line.rstrip()]  # no padding to the terminal width
    assert "\x1b[" not in text  # no colour codes when piped
    for info in list_adapters():
        url = info.homepage.split()[0]
        assert f"  {url}" in lines, url  # on a line of its own, never folded
        assert any(line.startswith(f"{info.id}  ") for line in lines)
        # every word of the longer fields is there (wrapped, not cut with an ellipsis)
        words = " ".join(lines)
        for field in (info.raw_hint, info.license, info.expected):
            for word in field.split():
                assert word in words, (info.id, word)
    for kind in list_sources():  # the user-data sources, with what --raw takes
        assert any(line.startswith(f"{kind.kind}  ") for line in lines)
        assert all(word in " ".join(lines) for word in kind.raw_hint.split())
    assert "…" not in text


def test_datasets_json_lists_every_adapter_info_and_source() -> None:
    data = json.loads(_run("--json", columns=40))  # JSON is never wrapped, whatever the width
    assert data["datasets"] == [json.loads(json.dumps(asdict(info))) for info in list_adapters()]
    assert {"id", "title", "homepage", "license", "raw_hint", "layout", "expected"} <= set(data["datasets"][0])
    assert [s["kind"] for s in data["sources"]] == ["folder", "csv", "ecotaxa", "ifcb"]
    assert all(s["raw_hint"] and s["labels"] and s["options"] for s in data["sources"])
