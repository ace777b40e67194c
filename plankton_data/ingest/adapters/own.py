"""What the four sources of a user's own data share: the dataset name they write, and accounting for junk.

A user source (``plankton-data ingest folder|csv|ecotaxa|ifcb --name NAME``) is an adapter like the built-in
ones, made per run with the user's options: its ``info.id`` is NAME, so the manifest's ``dataset`` column, the
sample keys and the output paths all carry NAME, and every later command (``shard --include NAME``, ``stats``,
``splits``, ``finetune``) takes it like a published dataset.
"""

from __future__ import annotations

import re

from plankton_data.errors import PlanktonDataError
from plankton_data.ingest.adapters.base import AdapterInfo, Scan, SourceInfo
from plankton_data.ingest.sources import RawTree

#: What a dataset name may look like: it becomes a folder, a file name and the prefix of every sample key.
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_]*")


def own_info(name: str, kind: SourceInfo, instrument: str) -> AdapterInfo:
    """The :class:`AdapterInfo` of a user dataset called ``name`` read by a source of ``kind``."""
    return AdapterInfo(
        id=name,
        title=f"{name} ({kind.title.lower()})",
        homepage="",
        license="",
        raw_hint=kind.raw_hint,
        layout=kind.raw_hint,
        instrument=instrument,
    )


def check_name(name: str, builtin: tuple[str, ...]) -> None:
    """Refuse a NAME that cannot be a dataset id or that is a built-in dataset's id (one line)."""
    if not NAME_PATTERN.fullmatch(name):
        raise PlanktonDataError(
            f"--name {name!r} must match [a-z0-9][a-z0-9_]* (lower case, digits, underscores): it names files and keys"
        )
    if name in builtin:
        raise PlanktonDataError(f"--name {name!r} is a built-in dataset id; choose another name for your data")


def skip_junk(tree: RawTree, scan: Scan) -> None:
    """List the macOS/Windows junk the tree left out as skipped, so every file under --raw is accounted for."""
    for path in tree.junk:
        scan.skip(path, "system junk file (macOS/Windows metadata), not data")


def folder_parts(path: str) -> tuple[str, ...]:
    """The folders of a virtual path, innermost last, without archive names (``a.zip/x/y.png`` -> ``('x',)``)."""
    parts = path.split("/")[:-1]
    return tuple(p for p in parts if not p.lower().endswith(".zip"))
