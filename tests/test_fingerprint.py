"""The on-disk format does not drift: the sample outputs are byte-identical to the committed fingerprint.

A change that means to alter the bytes (a new manifest column, another encoder setting) regenerates
``tests/golden/sample_fingerprint.json`` with ``python scripts/fingerprint.py --out /tmp/fp --write`` in the
same commit, so the diff shows which files changed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import fingerprint  # noqa: E402


def test_sample_outputs_match_the_committed_fingerprint(tmp_path):
    golden = json.loads(fingerprint.GOLDEN.read_text())
    fresh = fingerprint.fingerprint(tmp_path / "fp")
    if fresh["_versions"] != golden["_versions"]:
        pytest.skip(f"golden made with {golden['_versions']}, this machine has {fresh['_versions']}")
    assert sorted(fresh) == sorted(golden)
    changed = sorted(path for path in golden if fresh[path] != golden[path])
    assert changed == [], f"bytes changed: {changed}"
