"""The ``ingest`` command's options for a user's own data: which kind takes which, and the one-line refusals."""

from __future__ import annotations

from plankton_data.errors import PlanktonDataError
from plankton_data.ingest.adapters import DATASET_IDS, SOURCE_KINDS, make_source
from plankton_data.ingest.adapters.base import UserSource

#: Each option's value when not given on the command line.
DEFAULTS: dict[str, object] = {
    "label_level": 1,
    "unlabelled": False,
    "path_column": "path",
    "label_column": None,
    "root": None,
    "status": None,
    "strip_legend": False,
    "labels": None,
    "instrument": None,
}
#: The options each kind of source takes (their names as the source classes take them).
TAKES: dict[str, tuple[str, ...]] = {
    "folder": ("label_level", "unlabelled", "strip_legend", "instrument"),
    "csv": ("path_column", "label_column", "root", "instrument"),
    "ecotaxa": ("status", "strip_legend", "unlabelled", "instrument"),
    "ifcb": ("labels", "instrument"),
}


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def own_source(kind: str, name: str | None, options: dict[str, object]) -> UserSource | None:
    """The user source for ``ingest KIND --name NAME``, or ``None`` when ``kind`` is a built-in dataset id.

    Options left at :data:`DEFAULTS` are not passed, so each source keeps its own defaults; an option the kind
    does not take, a missing ``--name`` or an option given with a built-in id is a one-line error.
    """
    given = {k: v for k, v in options.items() if v != DEFAULTS[k]}
    if kind in DATASET_IDS:
        if name is not None or given:
            extra = [_flag(k) for k in given] + (["--name"] if name is not None else [])
            own = ", ".join(SOURCE_KINDS)
            raise PlanktonDataError(f"{', '.join(extra)}: only for your own data ({own}), not for {kind}")
        return None
    if kind in SOURCE_KINDS and name is None:
        raise PlanktonDataError(f"ingest {kind} needs --name NAME: the name of your dataset (shards/NAME/)")
    if kind in SOURCE_KINDS and (foreign := [k for k in given if k not in TAKES[kind]]):
        raise PlanktonDataError(
            f"{', '.join(map(_flag, foreign))} not for ingest {kind}; it takes {', '.join(map(_flag, TAKES[kind]))}"
        )
    return make_source(kind, name or "", **given)  # an unknown kind: UnknownDataset lists datasets and kinds
