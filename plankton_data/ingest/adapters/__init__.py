"""The registry of datasets and of user-data sources: two explicit tables.

* ``ADAPTERS``: the seven published datasets, keyed by the dataset id used everywhere. Adding a dataset: write
  ``adapters/<id>.py`` from an existing one, add it to ``_ADAPTERS``, add a fixture builder in
  ``plankton_data/fixtures/``; the contract test then covers it.
* ``SOURCES``: the kinds of a user's own data (``plankton-data ingest KIND --name NAME``), keyed by kind. Each
  makes an adapter per run whose dataset id is the user's NAME (:mod:`plankton_data.ingest.adapters.own`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from plankton_data.errors import UnknownDataset
from plankton_data.format.index import INDEX_NAME
from plankton_data.ingest.adapters.base import AdapterInfo, DatasetAdapter, SourceInfo, UserSource, normalize_label
from plankton_data.ingest.adapters.daplankton import DAPlankton
from plankton_data.ingest.adapters.ecotaxa import EcotaxaSource
from plankton_data.ingest.adapters.folder import FolderSource
from plankton_data.ingest.adapters.ifcb_bins import IfcbSource
from plankton_data.ingest.adapters.kaggle import Kaggle
from plankton_data.ingest.adapters.own import NAME_PATTERN, check_name
from plankton_data.ingest.adapters.pmid2019 import Pmid2019
from plankton_data.ingest.adapters.syke_ifcb import SykeIfcb
from plankton_data.ingest.adapters.syke_zooscan import SykeZooScan
from plankton_data.ingest.adapters.table import TableSource
from plankton_data.ingest.adapters.ude_diatoms import UdeDiatoms
from plankton_data.ingest.adapters.zoolake import ZooLake

_ADAPTERS: tuple[type[DatasetAdapter], ...] = (Kaggle, ZooLake, SykeZooScan, Pmid2019, SykeIfcb, UdeDiatoms, DAPlankton)
ADAPTERS: dict[str, type[DatasetAdapter]] = {}
for _cls in _ADAPTERS:
    if _cls.info.id in ADAPTERS:
        raise RuntimeError(f"duplicate dataset id {_cls.info.id}")
    ADAPTERS[_cls.info.id] = _cls

DATASET_IDS: tuple[str, ...] = tuple(ADAPTERS)

#: kind -> source class; ``make_source`` builds one with the user's name and options.
_SOURCES: tuple = (FolderSource, TableSource, EcotaxaSource, IfcbSource)
SOURCES: dict[str, type[UserSource]] = {cls.kind.kind: cls for cls in _SOURCES}
SOURCE_KINDS: tuple[str, ...] = tuple(SOURCES)


def get_adapter(dataset: str) -> DatasetAdapter:
    """An adapter instance for ``dataset``; :class:`UnknownDataset` lists the valid ids."""
    try:
        return ADAPTERS[dataset]()
    except KeyError:
        raise UnknownDataset(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASET_IDS)}") from None


def list_adapters() -> list[AdapterInfo]:
    """Static facts of every registered dataset, in registry order."""
    return [cls.info for cls in ADAPTERS.values()]


def list_sources() -> list[SourceInfo]:
    """What every user-data source reads, in registry order."""
    return [cls.kind for cls in SOURCES.values()]


def make_source(kind: str, name: str, **options) -> UserSource:
    """The adapter of the user's ``kind`` of data, writing dataset ``name``; options as the source class takes.

    Raises :class:`UnknownDataset` for an unknown kind and :class:`PlanktonDataError` for a bad name (one line).
    """
    try:
        cls = SOURCES[kind]
    except KeyError:
        raise UnknownDataset(
            f"unknown dataset {kind!r}; choose one of: {', '.join(DATASET_IDS)}, or for your own data: "
            f"{', '.join(SOURCE_KINDS)}"
        ) from None
    check_name(name, DATASET_IDS)
    return cls(name, **options)  # type: ignore[call-arg]  # each source class takes (name, **its options)


def ingested_datasets(shards_root: Path | str) -> tuple[str, ...]:
    """Every dataset id a shard set may take: the built-in ids, then the user datasets ingested under
    ``shards_root`` (folders whose ``index.json`` says ``kind: dataset``), sorted by name."""
    own = []
    root = Path(shards_root)
    for index in sorted(root.glob(f"*/{INDEX_NAME}")) if root.is_dir() else []:
        name = index.parent.name
        if name in ADAPTERS or not NAME_PATTERN.fullmatch(name):
            continue
        try:
            if json.loads(index.read_text()).get("kind") == "dataset":
                own.append(name)
        except (OSError, ValueError):
            continue  # unreadable: not offered; verify reports it
    return DATASET_IDS + tuple(own)


def registry_order(datasets: Iterable[str]) -> list[str]:
    """Dataset ids in registry order, user datasets (unknown to the registry) after them by name."""
    rank = {d: i for i, d in enumerate(DATASET_IDS)}
    return sorted(set(datasets), key=lambda d: (rank.get(d, len(rank)), d))


def dataset_info(dataset: str) -> AdapterInfo:
    """The registry facts of a built-in dataset, or for a user dataset (any other ingested name) plain defaults:
    every split goes into pretraining."""
    if dataset in ADAPTERS:
        return ADAPTERS[dataset].info
    return AdapterInfo(id=dataset, title=dataset, homepage="", license="", raw_hint="", layout="", instrument="")


__all__ = [
    "ADAPTERS",
    "DATASET_IDS",
    "SOURCES",
    "SOURCE_KINDS",
    "AdapterInfo",
    "SourceInfo",
    "dataset_info",
    "ingested_datasets",
    "registry_order",
    "get_adapter",
    "list_adapters",
    "list_sources",
    "make_source",
    "normalize_label",
]
