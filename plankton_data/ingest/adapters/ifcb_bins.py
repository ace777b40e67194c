"""``ingest ifcb``: raw Imaging FlowCytobot bins (``.hdr`` + ``.adc`` + ``.roi``) as the instrument writes them.

``--raw`` is a folder tree of bins (the dated ``2022/D20220522/`` folders instruments and dashboards keep), a zip
of them, or one bin given by any of its three files. Every imaged trigger becomes one sample named
``<bin>_<ROI, 5 digits>`` (the name of the IFCB dashboard's PNG exports and of ClassiPyR/syke-pic class files),
cut from the ``.roi`` file at its ``.adc`` start byte (:mod:`plankton_data.ingest.ifcb`). Triggers without an
image are skipped and counted; a ROI running past the end of the ``.roi``, or an ``.adc`` row that cannot be
read, is a reject; a bin missing one of its files is rejected whole (each file it has, with the reason).

``--labels CSV`` (``file_name``, ``class_name``, as ClassiPyR and the IFCB dashboard export them; the file name
with or without ``.png``) labels the ROIs it lists; the others are unlabelled. The manifest's ``meta`` keeps the
bin id, the ROI number and position, and the bin's ``ml_analyzed`` and the header's syringe volume when known.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path, PurePosixPath

from plankton_data.errors import PlanktonDataError
from plankton_data.ingest import ifcb
from plankton_data.ingest.adapters.base import RawPixels, RawRecord, Scan, SourceInfo
from plankton_data.ingest.adapters.own import own_info, skip_junk
from plankton_data.ingest.adapters.table import column, read_table
from plankton_data.ingest.sources import Member, RawTree

log = logging.getLogger(__name__)

KIND = SourceInfo(
    kind="ifcb",
    title="Raw IFCB bins",
    raw_hint="a folder tree or zip of IFCB bins (.hdr/.adc/.roi), or one bin by any of its three files",
    labels="--labels CSV (file_name, class_name) for the ROIs it lists; others unlabelled",
    options="--labels CSV, --instrument TEXT",
)
_EXTENSIONS = ("hdr", "adc", "roi")


def read_labels(path: Path) -> dict[str, str]:
    """ROI name -> class from a ``file_name,class_name`` CSV (ClassiPyR, IFCB dashboard exports)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PlanktonDataError(f"cannot read --labels {path}: {exc.strerror or exc}") from None
    header, rows = read_table(data, path.name)
    fcol = column(header, "file_name", str(path), "--labels")
    ccol = column(header, "class_name", str(path), "--labels")
    labels = {}
    for row in rows:
        if len(row) > max(fcol, ccol) and row[fcol].strip():
            labels[PurePosixPath(row[fcol].strip()).name.removesuffix(".png")] = row[ccol].strip()
    return labels


class IfcbSource:
    kind = KIND

    def __init__(self, name: str, *, labels: Path | str | None = None, instrument: str = "IFCB") -> None:
        self.labels_path = Path(labels) if labels is not None else None
        self.labels = read_labels(self.labels_path) if self.labels_path else {}
        self.info = own_info(name, KIND, instrument)

    @property
    def options(self) -> dict:
        # the labels' content, not their path, decides the output
        return {"labels": sorted(self.labels.items())}

    def open_tree(self, raw: Path, max_member_bytes: int) -> RawTree:
        """A folder or zip as usual; one bin file stands for its bin (the three files beside it)."""
        if raw.is_file() and (parts := ifcb.bin_parts(raw.name)):
            bin_id = parts[0]
            siblings = [raw.with_name(f"{bin_id}.{ext}") for ext in _EXTENSIONS]
            return RawTree.of_files([p for p in siblings if p.is_file()], max_member_bytes=max_member_bytes)
        return RawTree(raw, max_member_bytes=max_member_bytes)

    def scan(self, tree: RawTree) -> Scan:
        scan = Scan()
        skip_junk(tree, scan)
        bins: dict[tuple[str, str], dict[str, Member]] = defaultdict(dict)  # (folder, bin id) -> ext -> member
        for m in tree.members:
            parts = ifcb.bin_parts(m.path)
            if parts is None:
                scan.skip(m.path, "not a file of an IFCB bin (.hdr/.adc/.roi named D<date>T<time>_IFCB<n>)")
                continue
            folder = m.path[: -len(f"{parts[0]}.{parts[1]}")]
            bins[(folder, parts[0])][parts[1]] = m
        first: dict[str, str] = {}
        for (folder, bin_id), files in sorted(bins.items()):
            if bin_id in first:
                for m in files.values():
                    scan.reject(m.path, f"bin {bin_id} was already read from {first[bin_id]}")
                continue
            first[bin_id] = folder or "the top of --raw"
            self._scan_bin(tree, scan, bin_id, files)
        found = {r.source for r in scan.records}
        if missing := [name for name in self.labels if name not in found]:
            log.warning("%d ROIs named in --labels are not in the input (first: %s)", len(missing), missing[0])
        return scan

    def _scan_bin(self, tree: RawTree, scan: Scan, bin_id: str, files: dict[str, Member]) -> None:
        if lacking := [ext for ext in _EXTENSIONS if ext not in files]:
            for m in files.values():
                scan.reject(m.path, f"bin {bin_id} has no .{' or .'.join(lacking)} file: its images cannot be cut")
            return
        try:
            header = ifcb.parse_header(tree.read(files["hdr"]).decode("latin-1"))
            columns = ifcb.adc_columns(header)
            adc = ifcb.scan_adc(tree.read(files["adc"]).decode("latin-1"), columns)
        except (ifcb.BinError, OSError, ValueError) as exc:
            for m in files.values():
                scan.reject(m.path, f"bin {bin_id} cannot be read: {exc}")
            return
        roi = files["roi"]
        bin_meta: dict[str, str | float] = {"bin": bin_id}
        if (ml := ifcb.ml_analyzed(header)) is not None:
            bin_meta["ml_analyzed"] = round(ml, 6)
        if (volume := ifcb.sample_volume_ml(header)) is not None:
            bin_meta["sample_volume_ml"] = volume
        for number in adc.empty_triggers:
            scan.skip(ifcb.roi_name(bin_id, number), "trigger with no image (ROI width or height 0)")
        for number, why in adc.bad_rows:
            scan.reject(ifcb.roi_name(bin_id, number), why)
        for r in adc.rois:
            name = ifcb.roi_name(bin_id, r.number)
            label = self.labels.get(name, "")
            if r.end > roi.size:
                scan.reject(name, f"ROI runs past the end of {bin_id}.roi ({r.end} > {roi.size} bytes)", label)
                continue
            meta = dict(bin_meta, roi=r.number, roi_x=r.x, roi_y=r.y)
            scan.records.append(
                RawRecord(
                    name,
                    roi,
                    label,
                    instrument=self.info.instrument,
                    meta=meta,
                    pixels=RawPixels(r.start, r.height, r.width),
                )
            )
