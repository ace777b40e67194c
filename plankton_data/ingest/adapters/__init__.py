"""The registry of datasets: one explicit table, keyed by the dataset id used everywhere.

Adding a dataset: write ``adapters/<id>.py`` from an existing one, add it to ``_ADAPTERS``, add a fixture
builder in ``plankton_data/fixtures/``; the contract test then covers it.
"""

from __future__ import annotations

from plankton_data.errors import UnknownDataset
from plankton_data.ingest.adapters.base import AdapterInfo, DatasetAdapter, normalize_label
from plankton_data.ingest.adapters.daplankton import DAPlankton
from plankton_data.ingest.adapters.kaggle import Kaggle
from plankton_data.ingest.adapters.pmid2019 import Pmid2019
from plankton_data.ingest.adapters.syke_ifcb import SykeIfcb
from plankton_data.ingest.adapters.syke_zooscan import SykeZooScan
from plankton_data.ingest.adapters.ude_diatoms import UdeDiatoms
from plankton_data.ingest.adapters.zoolake import ZooLake

_ADAPTERS: tuple[type[DatasetAdapter], ...] = (Kaggle, ZooLake, SykeZooScan, Pmid2019, SykeIfcb, UdeDiatoms, DAPlankton)
ADAPTERS: dict[str, type[DatasetAdapter]] = {}
for _cls in _ADAPTERS:
    if _cls.info.id in ADAPTERS:
        raise RuntimeError(f"duplicate dataset id {_cls.info.id}")
    ADAPTERS[_cls.info.id] = _cls

DATASET_IDS: tuple[str, ...] = tuple(ADAPTERS)


def get_adapter(dataset: str) -> DatasetAdapter:
    """An adapter instance for ``dataset``; :class:`UnknownDataset` lists the valid ids."""
    try:
        return ADAPTERS[dataset]()
    except KeyError:
        raise UnknownDataset(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASET_IDS)}") from None


def list_adapters() -> list[AdapterInfo]:
    """Static facts of every registered dataset, in registry order."""
    return [cls.info for cls in ADAPTERS.values()]


__all__ = ["ADAPTERS", "DATASET_IDS", "AdapterInfo", "get_adapter", "list_adapters", "normalize_label"]
