"""``ingest ecotaxa``: an EcoTaxa export (zip or folder) of one or more samples.

Each sample folder holds ``ecotaxa_<sample>.tsv`` beside its images; ``img_file_name`` names the image relative
to the TSV. EcoTaxa may write a second row of column types (``[t]`` text, ``[f]`` number): it is recognised
(every cell is ``[t]`` or ``[f]``) and dropped, the rule ``pyecotaxa.archive.read_tsv`` uses.

Labels: ``object_annotation_category`` counts only where ``object_annotation_status`` is ``validated``; other
objects (``predicted``, ``dubious``, empty) are ingested unlabelled with their status and category kept in
``meta``. ``--status validated`` keeps only the validated ones (the others are skipped, with the reason). A TSV
without the category column (a ZooProcess import file, not an export) needs ``--unlabelled``. Kept in ``meta``:
``object_id``, the status, the category, ``img_rank`` and the pixel size (``process_particle_pixel_size_mm``).
``--strip-legend`` removes the ZooProcess "1 mm" legend, as for SYKE ZooScan.

Why not ``pyecotaxa`` (PyPI, 0.0.5): its ``read_tsv`` is pandas over a path or a file object and applies the
same type-row rule as this reader; the package is GPL-3.0 (this project is MIT) and brings twelve dependencies
(an EcoTaxa server client: requests, werkzeug, click, ...). Reading the TSVs needs the standard csv module.
"""

from __future__ import annotations

import contextlib
import posixpath
import re

from plankton_data.errors import PlanktonDataError
from plankton_data.ingest.adapters.base import RawRecord, Scan, SourceInfo
from plankton_data.ingest.adapters.own import own_info, skip_junk
from plankton_data.ingest.adapters.table import read_table
from plankton_data.ingest.sources import Member, RawTree, is_image

KIND = SourceInfo(
    kind="ecotaxa",
    title="EcoTaxa export",
    raw_hint="an EcoTaxa export zip or folder: ecotaxa_*.tsv beside the images, one folder per sample",
    labels="object_annotation_category where object_annotation_status is validated; others unlabelled",
    options="--status validated, --strip-legend, --unlabelled, --instrument TEXT",
)
_TSV = re.compile(r"(?:^|/)ecotaxa_[^/]*\.tsv$", re.IGNORECASE)
_KEPT = {
    "object_id": "object_id",
    "img_rank": "img_rank",
    "object_annotation_status": "status",
    "object_annotation_category": "category",
    "process_particle_pixel_size_mm": "pixel_size_mm",
}


def read_ecotaxa_tsv(data: bytes, name: str) -> list[dict[str, str]]:
    """The objects of an EcoTaxa TSV as dicts of column -> cell, without the ``[t]``/``[f]`` type row.

    Raises :class:`PlanktonDataError` (one line) when the table has no ``img_file_name`` column.
    """
    header, body = read_table(data, name)  # a .tsv: tab-separated
    if body and all(c.strip() in ("[t]", "[f]") for c in body[0] if c.strip()):
        body = body[1:]
    if "img_file_name" not in header:
        raise PlanktonDataError(f"{name} has no img_file_name column; its columns start: {', '.join(header[:8])}")
    return [dict(zip(header, (c.strip() for c in row), strict=False)) for row in body]


class EcotaxaSource:
    kind = KIND

    def __init__(
        self,
        name: str,
        *,
        status: str | None = None,
        strip_legend: bool = False,
        unlabelled: bool = False,
        instrument: str = "ZooScan",
    ) -> None:
        if status not in (None, "validated"):
            raise PlanktonDataError(f"--status takes only 'validated', not {status!r}")
        self.status, self.strip_legend, self.unlabelled = status, strip_legend, unlabelled
        self.info = own_info(name, KIND, instrument)

    @property
    def options(self) -> dict:
        return {"status": self.status, "strip_legend": self.strip_legend, "unlabelled": self.unlabelled}

    def scan(self, tree: RawTree) -> Scan:
        scan = Scan()
        skip_junk(tree, scan)
        by_path = {m.path: m for m in tree.members}
        listed: set[str] = set()
        for tsv in (m for m in tree.members if _TSV.search(m.path)):
            listed.add(tsv.path)
            objects = read_ecotaxa_tsv(tree.read(tsv), tsv.path)
            if objects and "object_annotation_category" not in objects[0] and not self.unlabelled:
                raise PlanktonDataError(
                    f"{tsv.path} has no object_annotation_category column (a ZooProcess import file rather than an"
                    " EcoTaxa export?); pass --unlabelled to ingest its objects without labels"
                )
            folder = posixpath.dirname(tsv.path)
            for number, obj in enumerate(objects, start=1):
                self._add(scan, tsv.path, number, obj, folder, by_path, listed)
        for m in tree.members:
            if m.path in listed:
                continue
            if is_image(m.path):
                scan.reject(m.path, "image not named by any ecotaxa_*.tsv (no object to describe it)")
            else:
                scan.skip(m.path, "not an image or an ecotaxa_*.tsv")
        return scan

    def _add(
        self, scan: Scan, tsv: str, number: int, obj: dict, folder: str, by_path: dict[str, Member], listed: set[str]
    ) -> None:
        name = obj.get("img_file_name", "")
        status = obj.get("object_annotation_status", "")
        category = obj.get("object_annotation_category", "")
        label = category if status == "validated" and not self.unlabelled else ""
        path = posixpath.normpath(posixpath.join(folder, name)) if name else ""
        if not name:
            scan.reject(f"{tsv}:{number}", "object row has an empty img_file_name", label)
            return
        if path in listed:
            scan.reject(f"{path}@{tsv}:{number}", f"{name} is named by another object row already", label)
            return
        member = by_path.get(path)
        if member is None:
            scan.reject(path, f"image named in {posixpath.basename(tsv)} (object {number}) is not in the export", label)
            return
        listed.add(path)
        if self.status == "validated" and status != "validated":
            scan.skip(path, f"object status {status or 'empty'!r}, not validated (--status validated)")
            return
        meta: dict[str, str | float] = {out: obj[col] for col, out in _KEPT.items() if obj.get(col)}
        for key in ("pixel_size_mm", "img_rank"):  # numbers ([f] columns) stay numbers
            with contextlib.suppress(KeyError, ValueError):
                meta[key] = float(meta[key])
        scan.records.append(
            RawRecord(
                path,
                member,
                label,
                instrument=self.info.instrument,
                step="zooprocess_legend" if self.strip_legend else "",
                meta=meta,
            )
        )
