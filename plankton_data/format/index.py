"""The shard folder index (``index.json``): the commit marker of every shard folder.

Written last, atomically, into ``shards/<name>/``. Loaders take the shard list, sample counts and pixel
statistics from here and never scan tars. Layout::

    {
      "format": "plankton-shards/1",
      "name": "kaggle",                 # dataset id or shard-set name
      "kind": "dataset" | "shardset",
      "image_format": "jpg",            # member extension of the image in every sample
      "size": 256,                      # side of the stored square images (0 = native sizes)
      "total": 30336,                   # samples over all shards
      "mean": 0.91, "std": 0.17,        # pixel mean/std of the stored images, in [0, 1] units
      "dataset_stats": {"kaggle": [0.95, 0.15], "zoolake": [0.04, 0.13]},  # the same, per source dataset
      "shards": [{"name": "kaggle-000000.tar", "count": 2000, "bytes": 41230848, "sha256": "..."}],
      "manifest": "../../manifests/kaggle.parquet",  # relative to this folder
      "manifest_sha256": "...",         # sha256 of that manifest file, as committed ("" in older folders)
      "args": {...},                    # the arguments that produced the folder
      "version": "0.1.0"                # plankton_data version that wrote it
    }
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from plankton_data.errors import SchemaError
from plankton_data.format import atomic

INDEX_NAME = "index.json"
INDEX_FORMAT = "plankton-shards/1"


@dataclass(frozen=True)
class ShardInfo:
    """One tar of a shard folder."""

    name: str  # file name inside the shard folder
    count: int  # samples in the tar
    bytes: int  # file size
    sha256: str  # hex digest of the whole file


@dataclass
class ShardIndex:
    """Contents of ``index.json``; see the module docstring."""

    name: str
    kind: str
    image_format: str
    size: int
    total: int
    mean: float
    std: float
    shards: list[ShardInfo]
    manifest: str = ""
    args: dict = field(default_factory=dict)
    #: ``{dataset id: [mean, std]}`` of the stored pixels of each source dataset (one entry for an ingested
    #: folder). Mixed sets need them: bright-field (Kaggle, white background) and dark-field (ZooLake, black
    #: background) images have opposite statistics, and one set-wide mean/std squashes the dark ones.
    dataset_stats: dict[str, list[float]] = field(default_factory=dict)
    version: str = ""
    format: str = INDEX_FORMAT
    #: sha256 of the manifest file committed together with the folder; ``""`` in folders written before it was
    #: recorded (their manifest is then not checked). ``verify`` compares it, so an edited or replaced manifest,
    #: or a commit killed between the folder swap and the manifest rename, does not pass as intact.
    manifest_sha256: str = ""

    def to_json(self, *, manifest_hash: bool = True) -> str:
        """The file's text. ``manifest_hash=False`` leaves ``manifest_sha256`` out: the text as written before the
        field existed (what a shard set's plan hashes, together with the manifest's own bytes)."""
        data = asdict(self)
        if not manifest_hash:
            del data["manifest_sha256"]
        return json.dumps(data, indent=2, sort_keys=True) + "\n"


def write_index(index: ShardIndex, folder: Path) -> Path:
    """Write ``folder/index.json`` atomically (temp + fsync + rename)."""
    return atomic.write_bytes(folder / INDEX_NAME, index.to_json().encode())


def manifest_ref(folder: Path, manifest: Path) -> str:
    """How ``index.json`` names its manifest: the path relative to the shard folder.

    Relative to the folder, not to the working directory, so a shard root and its manifests can be moved or
    mounted elsewhere together. Computed for the staging folder works for the final one: they are siblings.
    """
    return os.path.relpath(Path(manifest).resolve(), Path(folder).resolve())


def manifest_path(folder: Path, index: ShardIndex) -> Path | None:
    """The manifest of the shard folder ``folder``, or ``None`` if it cannot be found.

    ``index.manifest`` resolved against the folder (see :func:`manifest_ref`), else the conventional
    ``<root>/manifests/<name>.parquet`` beside ``<root>/shards/``.
    """
    folder = Path(folder)
    candidates = [Path(os.path.normpath(folder / index.manifest))] if index.manifest else []
    candidates.append(folder.resolve().parent.parent / "manifests" / f"{index.name}.parquet")
    return next((c for c in candidates if c.is_file()), None)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a whole file, read in 4 MiB chunks."""
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(4 << 20):
            sha.update(chunk)
    return sha.hexdigest()


def manifest_mismatch(index: ShardIndex, manifest: Path) -> str | None:
    """Why ``manifest`` is not the file ``index`` was committed with, or ``None`` (also when the index predates
    ``manifest_sha256`` and so cannot tell)."""
    if not index.manifest_sha256 or file_sha256(manifest) == index.manifest_sha256:
        return None
    return (
        f"manifest {manifest} is not the one {index.name}/index.json was committed with (sha256 differs): "
        f"it was edited or replaced, or the command that wrote {index.name} was interrupted; rerun that command"
    )


def swap_in(staging: Path, final: Path, tag: str) -> None:
    """Replace the shard folder ``final`` by the finished ``staging`` folder (which holds its index.json).

    Two renames: the old folder moves aside as ``.<name>.old-<tag>``, the new one takes its name, the old one
    is deleted. A crash in between leaves either folder complete under some name, never a mix. Then what
    earlier runs of ``<name>`` left behind goes too: staging folders of other plans (runs stopped and never
    rerun with the same arguments) and old folders of crashed swaps.
    """
    if final.exists():
        old = final.with_name(f".{final.name}.old-{tag}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        try:
            os.replace(staging, final)
        except BaseException:
            os.replace(old, final)  # put the previous folder back under its name
            raise
        shutil.rmtree(old)
    else:
        os.replace(staging, final)
    for stale in (*final.parent.glob(f".{final.name}.staging-*"), *final.parent.glob(f".{final.name}.old-*")):
        shutil.rmtree(stale, ignore_errors=True)


def read_index(folder: Path | str) -> ShardIndex:
    """Read ``index.json`` from a shard folder (or the path of the file itself)."""
    path = Path(folder)
    if path.is_dir():
        path = path / INDEX_NAME
    if not path.is_file():
        raise SchemaError(f"no shard index at {path} (was the folder fully written?)")
    try:
        data = json.loads(path.read_text())
        if data.get("format") != INDEX_FORMAT:
            raise SchemaError(f"{path}: unknown index format {data.get('format')!r}")
        data["shards"] = [ShardInfo(**s) for s in data["shards"]]
        return ShardIndex(**data)
    except (json.JSONDecodeError, TypeError, KeyError) as exc:
        raise SchemaError(f"{path}: malformed shard index ({exc})") from exc
