"""Fingerprint what the toolkit writes for the built-in sample data: sha256 of every output file.

Runs the installed console script (so it works across refactors of the library's module layout):
``plankton-data demo`` (the seven generated archives, ingested) and ``plankton-data shard --exclude
daplankton``, then hashes every file under ``shards/`` and ``manifests/``. ``index.json`` is hashed with its
``manifest`` field resolved against the shard folder and made relative to the output root, so where the
command ran does not change the fingerprint; every other byte counts.

    python scripts/fingerprint.py --out /tmp/fp > fingerprint.json

``tests/test_fingerprint.py`` compares a fresh run against ``tests/golden/sample_fingerprint.json``: the
on-disk format is unchanged unless that file changes in the same commit (regenerate it with ``--write``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden" / "sample_fingerprint.json"


def _cli() -> str:
    exe = Path(sys.executable).parent / "plankton-data"
    return str(exe) if exe.exists() else "plankton-data"


def _index_bytes(path: Path, root: Path) -> bytes:
    index = json.loads(path.read_text())
    manifest = Path(index["manifest"])
    if not manifest.is_absolute():  # relative to the shard folder (the format's rule) or, before it, to the cwd
        here = path.parent / manifest
        manifest = here if here.is_file() else root / manifest
    index["manifest"] = str(manifest.resolve().relative_to(root.resolve()))
    return json.dumps(index, sort_keys=True).encode()


def fingerprint(out: Path) -> dict[str, str]:
    """Build the sample outputs under ``out`` (emptied first) and return ``{relative path: sha256}``."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    run = dict(check=True, capture_output=True, cwd=out)
    subprocess.run([_cli(), "demo", "--out", "."], **run)
    subprocess.run(
        [_cli(), "shard", "--name", "no_daplankton", "--exclude", "daplankton", "--samples-per-shard", "8"],
        **run,
    )
    import cv2
    import pyarrow

    # the bytes depend on the JPEG encoder and the Parquet writer: a golden file is only comparable on these
    digests = {"_versions": f"opencv {cv2.__version__}, pyarrow {pyarrow.__version__}"}
    for path in sorted(p for folder in ("shards", "manifests") for p in (out / folder).rglob("*") if p.is_file()):
        data = _index_bytes(path, out) if path.name == "index.json" else path.read_bytes()
        digests[str(path.relative_to(out))] = hashlib.sha256(data).hexdigest()
    return digests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="scratch folder (emptied)")
    parser.add_argument("--write", action="store_true", help=f"write the result to {GOLDEN}")
    args = parser.parse_args()
    digests = fingerprint(args.out)
    text = json.dumps(digests, indent=1, sort_keys=True) + "\n"
    if args.write:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
