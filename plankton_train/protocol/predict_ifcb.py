"""Classify raw IFCB bins (``<bin>.hdr`` + ``.adc`` + ``.roi``): every ROI of every bin under a folder tree or zip.

``plankton-train predict MODEL PATH`` comes here when PATH (one of a bin's three files, a bin's folder, a dated
folder tree of bins, a zip of them, zips in zips) is or holds any ``.hdr``/``.adc``/``.roi`` file; image files
beside the bins are then left out (with one warning naming how many: classify them with a separate run). Bins
are found by their file names (:func:`plankton_data.ingest.ifcb.bin_parts`) and read by
:mod:`plankton_data.ingest.ifcb`, which is pure over bytes, so a bin in a zip reads exactly like one in a folder.

Every imaged trigger (``.adc`` row with a width and height) is cut from the ``.roi`` bytes and given what
ingest gives an IFCB ROI: the model's dataset steps if any (:func:`~plankton_train.protocol.predict.raw_steps`),
:func:`plankton_data.ingest.preprocess.square_gray` on the gray ROI, then the evaluation view. The padding noise
is seeded from the ROI's pixels (:func:`plankton_data.format.keys.pixel_sha256`), so the same ROI gets the same
prediction from a folder, a zip or a copy of the bin under another name. Bins are streamed one at a time (one
bin's bytes in memory, the long table written batch by batch), so a year of bins fits in memory.

Outputs, beside ``out`` (``.parquet`` or ``.csv``, the long table of :mod:`~plankton_train.protocol.predict`,
with ``source`` = ROI name ``<bin>_<NNNNN>`` and two more columns, ``bin`` and ``roi`` = the ROI number) in
``<out stem>_bins/``:

=============== ===================================================================================
``<bin>.csv``   one row per classified ROI: ``roi`` (its number, as syke-pic's ``.prob.csv``),
                ``prob_<class>`` for every class, ``top_class``, ``passed`` (its probability reached the
                class's threshold or ``--min-confidence``; if not, it is counted as ``unassigned``)
``counts.csv``  ``bin, class, count, ml_analyzed, count_per_ml``: every class of the model plus
                ``unassigned`` for every bin read, so a bin's counts add up to its classified ROIs
``bins.csv``    one row per bin found: ``bin, path, status`` (``ok`` or why it was skipped), ``triggers``
                (``.adc`` rows), ``rois`` (imaged triggers), ``classified``, ``empty_triggers`` (no image),
                ``bad_rows`` (unreadable ``.adc`` rows), ``unreadable`` (a ROI past the end of ``.roi`` or
                that cannot be preprocessed), ``ml_analyzed``, ``syringe_ml``; ``rois = classified + unreadable``
=============== ===================================================================================

Concentration uses ``ml_analyzed`` (:func:`plankton_data.ingest.ifcb.ml_analyzed`: 0.25 mL/min x (runTime -
inhibitTime), the IFCB dashboard's formula and what IFCB users divide by), not the header's
``SyringeSampleVolume``: that is the volume the syringe drew (5 mL on all three real bins), but the camera is
blind while the instrument processes a trigger (``inhibitTime``) and a run can stop early, so only the volume
that flowed while imaging was possible is the volume the counted cells came from. ``syringe_ml`` is kept in
``bins.csv`` for reference; a bin whose header lacks the run times gets empty ``ml_analyzed`` and
``count_per_ml``.

A bin missing one of its three files, whose header has no column layout, or whose ``.roi`` is over the member
size limit is skipped with one warning line and a ``bins.csv`` row saying why; when no bin can be read the run
stops with one error line. Every file is written under a temp name and renamed when complete; ``<bin>.csv``
files of bins not in this run are removed from the folder, so it always describes the last run.
"""

from __future__ import annotations

import json
import logging
import zipfile
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from plankton_data.compat import batched
from plankton_data.errors import PlanktonError
from plankton_data.format.atomic import atomic_path, commit, partial_path
from plankton_data.format.keys import pixel_sha256
from plankton_data.ingest.ifcb import (
    AdcScan,
    BinError,
    Roi,
    adc_columns,
    bin_parts,
    ml_analyzed,
    parse_header,
    roi_name,
    roi_pixels,
    sample_volume_ml,
    scan_adc,
)
from plankton_data.ingest.sources import Member, RawTree, is_image
from plankton_train.errors import PredictError
from plankton_train.protocol.predict import (
    METADATA_KEY,
    UNASSIGNED,
    PredictModel,
    PredictOptions,
    meta_path,
    run_meta,
)

log = logging.getLogger(__name__)

EXTENSIONS = ("hdr", "adc", "roi")
COUNT_COLUMNS = ("bin", "class", "count", "ml_analyzed", "count_per_ml")
BIN_COLUMNS = ("bin", "path", "status", "triggers", "rois", "classified", "empty_triggers", "bad_rows", "unreadable",
               "ml_analyzed", "syringe_ml")  # fmt: skip


@dataclass
class BinFiles:
    """One bin found under the input: its id, the folder (virtual path) it lies in, its files by extension."""

    bin_id: str
    folder: str
    files: dict[str, Member] = field(default_factory=dict)

    @property
    def missing(self) -> list[str]:
        return [f".{e}" for e in EXTENSIONS if e not in self.files]


@dataclass
class FoundBins:
    """What :func:`find_bins` saw: complete bins (sorted by id), skipped ones ``(bin, folder, reason)``, and the
    number of image files lying beside them."""

    bins: list[BinFiles]
    skipped: list[tuple[str, str, str]]
    images: int


def bin_input(source: Path) -> tuple[Path, str | None]:
    """``(path to list, bin id or None)``: one of a bin's three files stands for that bin in its folder."""
    parts = bin_parts(source.name) if source.is_file() else None
    return (source.parent, parts[0]) if parts else (source, None)


def find_bins(tree: RawTree, *, only: str | None = None) -> FoundBins:
    """Group a tree's ``.hdr``/``.adc``/``.roi`` members into bins by id and folder (``only``: that bin id).

    A bin lacking a file is skipped (reason names the missing files); a bin id found in a second folder is
    skipped as a duplicate (its ``<bin>.csv`` would overwrite the first one's).
    """
    groups: dict[tuple[str, str], BinFiles] = {}
    images = 0
    for m in tree.members:
        parts = bin_parts(m.path)
        if parts is None or (only is not None and parts[0] != only):
            images += parts is None and only is None and is_image(m.path)
            continue
        folder = str(PurePosixPath(m.path).parent).removeprefix(".")  # "" at the top of the input
        groups.setdefault((parts[0], folder), BinFiles(parts[0], folder)).files[parts[1]] = m
    bins, skipped, seen = [], [], dict[str, str]()
    for (bin_id, folder), b in sorted(groups.items()):
        if b.missing:
            skipped.append((bin_id, folder, f"missing {' and '.join(b.missing)}"))
        elif bin_id in seen:
            skipped.append((bin_id, folder, f"duplicate of the bin in {seen[bin_id]}"))
        else:
            seen[bin_id] = folder
            bins.append(b)
    return FoundBins(bins, skipped, images)


@dataclass
class _Bin:
    """One bin's decoded contents: header fields, the ``.adc`` scan, the ``.roi`` bytes."""

    header: dict[str, str]
    scan: AdcScan
    roi: bytes


def _read_bin(tree: RawTree, b: BinFiles) -> _Bin:
    """Read and parse one bin; :class:`BinError` (or a size-limit error) says why it cannot be used."""
    header = parse_header(tree.read(b.files["hdr"]).decode("latin-1"))
    scan = scan_adc(tree.read(b.files["adc"]).decode("latin-1"), adc_columns(header))
    return _Bin(header, scan, tree.read(b.files["roi"]))


def _roi_input(model: PredictModel, roi_bytes: bytes, roi: Roi) -> np.ndarray | str:
    """One ROI -> the model's input view, or the reason it cannot be read."""
    try:
        gray = roi_pixels(roi_bytes, roi)
        return model.raw_input(gray, key=pixel_sha256(gray))
    except (ValueError, cv2.error) as exc:
        return " ".join(str(exc).split())


class _LongTable:
    """The long table written batch by batch under a temp name, committed with its metadata on close."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.tmp = partial_path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        self._parquet: pq.ParquetWriter | None = None
        self._csv_started = False

    def write(self, frame: pd.DataFrame) -> None:
        if self.out.suffix == ".parquet":
            arrow = pa.Table.from_pandas(frame, preserve_index=False)
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.tmp, arrow.schema)
            self._parquet.write_table(arrow.cast(self._parquet.schema))
        else:
            frame.to_csv(self.tmp, mode="a" if self._csv_started else "w", header=not self._csv_started, index=False)
            self._csv_started = True

    def commit(self, meta: dict) -> None:
        if self._parquet is not None:
            self._parquet.add_key_value_metadata({METADATA_KEY: json.dumps(meta)})
            self._parquet.close()
            self._parquet = None
        else:
            with atomic_path(meta_path(self.out)) as side:
                side.write_text(json.dumps(meta, indent=2) + "\n")
        commit(self.tmp, self.out)

    def abort(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        self.tmp.unlink(missing_ok=True)


def _in(folder: str) -> str:
    return f" in {folder}" if folder else ""


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def bins_folder(out: Path) -> Path:
    """The folder of per-bin outputs beside ``out``: ``<out stem>_bins/``."""
    return out.parent / f"{out.stem}_bins"


def predict_bins(
    run: Path | str,
    *,
    tree: RawTree,
    found: FoundBins,
    source: Path | str,
    out: Path,
    opts: PredictOptions,
) -> pd.DataFrame:
    """Classify every ROI of the bins :func:`find_bins` found in ``tree``; write the outputs (module docstring).

    Returns the count table (``counts.csv``); its ``attrs["predict"]`` holds the recorded settings and checks,
    with ``bins`` (bins read), ``bins_skipped`` (``[bin, folder, reason]``) and ``bins_folder``.
    """
    for bin_id, where, reason in found.skipped:
        log.warning("skipping bin %s%s: %s", bin_id, _in(where), reason)
    if not found.bins:
        bin_id, where, reason = found.skipped[0]
        raise PredictError(f"no complete IFCB bin in {source} ({len(found.skipped)} skipped; {bin_id}: {reason})")
    if found.images:
        log.warning("%d image files beside the IFCB bins in %s are not classified (run predict on them apart)",
                    found.images, source)  # fmt: skip
    model = PredictModel(run, opts)
    folder = bins_folder(out)
    folder.mkdir(parents=True, exist_ok=True)
    summary: list[dict] = [
        dict(bin=b, path=f, status=f"skipped: {r}", **dict.fromkeys(BIN_COLUMNS[3:])) for b, f, r in found.skipped
    ]
    counts: list[pd.DataFrame] = []
    top1: Counter[str] = Counter()
    unassigned = 0
    skipped = list(found.skipped)
    table = _LongTable(out)
    labels = [*model.classes, UNASSIGNED]
    try:
        with ThreadPoolExecutor(max(1, opts.threads)) as pool:
            for b in found.bins:
                try:
                    data = _read_bin(tree, b)
                except (BinError, PlanktonError, OSError, zipfile.BadZipFile, zlib.error) as exc:  # damaged: skip
                    reason = " ".join(str(exc).split())
                    log.warning("skipping bin %s%s: %s", b.bin_id, _in(b.folder), reason)
                    skipped.append((b.bin_id, b.folder, reason))
                    summary.append(dict(bin=b.bin_id, path=b.folder, status=f"skipped: {reason}",
                                        **dict.fromkeys(BIN_COLUMNS[3:])))  # fmt: skip
                    continue
                row, bin_rows = _classify_bin(b, data, model, pool, table)
                summary.append(row)
                top1.update(bin_rows["top_class"].tolist())
                unassigned += int((bin_rows["label"] == UNASSIGNED).sum())
                _write_csv(bin_rows.drop(columns="label"), folder / f"{b.bin_id}.csv")
                n = bin_rows["label"].value_counts().reindex(labels, fill_value=0)
                ml = row["ml_analyzed"]
                c = pd.DataFrame({"bin": b.bin_id, "class": labels, "count": n.to_numpy().astype(np.int64)})
                c["ml_analyzed"] = ml
                c["count_per_ml"] = c["count"] / ml if ml else np.nan
                counts.append(c)
        written = {b["bin"] for b in summary if b["status"] == "ok"}
        if not written:
            raise PredictError(f"no readable IFCB bin in {source} ({len(skipped)} skipped; {skipped[0][0]}: "
                               f"{skipped[0][2]})")  # fmt: skip
        count_table = pd.concat(counts, ignore_index=True)[list(COUNT_COLUMNS)]
        if not top1:
            raise PredictError(f"the IFCB bins in {source} hold no readable ROI (see {folder / 'bins.csv'})")
        meta = run_meta(run, source, model, pd.Series(top1), unassigned)
        meta.update(bins=len(written), bins_skipped=[list(s) for s in skipped], bins_folder=str(folder),
                    volume="ml_analyzed")  # fmt: skip
        table.commit(meta)
    except BaseException:
        table.abort()
        raise
    _write_csv(count_table, folder / "counts.csv")
    _write_csv(pd.DataFrame(summary, columns=list(BIN_COLUMNS)).sort_values("bin", kind="stable"), folder / "bins.csv")
    for stale in folder.glob("*.csv"):
        parts = bin_parts(stale.with_suffix(".roi").name)
        if parts and parts[0] not in written:
            stale.unlink()
    count_table.attrs["predict"] = meta
    log.info("classified %d ROIs of %d bins -> %s and %s", meta["images"], len(written), out, folder)
    return count_table


def _classify_bin(
    b: BinFiles, data: _Bin, model: PredictModel, pool: ThreadPoolExecutor, table: _LongTable
) -> tuple[dict, pd.DataFrame]:
    """Classify one bin's ROIs in batches; write its long-table rows; return its ``bins.csv`` row and its
    ``<bin>.csv`` rows (plus the ``label`` column the counts need, dropped on write)."""
    scan, opts = data.scan, model.opts
    unreadable: list[tuple[int, str]] = []
    frames = []
    for batch in batched(scan.rois, opts.batch_size):
        views = list(pool.map(lambda r: _roi_input(model, data.roi, r), batch))
        keep = [(r, v) for r, v in zip(batch, views, strict=True) if not isinstance(v, str)]
        unreadable += [(r.number, v) for r, v in zip(batch, views, strict=True) if isinstance(v, str)]
        if not keep:
            continue
        probs, embs = model.classify([v for _, v in keep])
        rows = model.rows([roi_name(b.bin_id, r.number) for r, _ in keep], probs, embs)
        numbers = np.array([r.number for r, _ in keep], dtype=np.int64)
        rows.insert(1, "bin", b.bin_id)
        rows.insert(2, "roi", numbers)
        table.write(rows)
        per_roi = pd.DataFrame({"roi": numbers})
        for i, c in enumerate(model.classes):
            per_roi[f"prob_{c}"] = probs[:, i]
        per_roi["top_class"] = rows["top1"].to_numpy()
        per_roi["passed"] = (rows["label"] != UNASSIGNED).to_numpy()
        per_roi["label"] = rows["label"].to_numpy()
        frames.append(per_roi)
    if unreadable:
        number, reason = unreadable[0]
        log.warning("bin %s: %d ROIs cannot be read (first: ROI %d, %s)", b.bin_id, len(unreadable), number, reason)
    columns = ["roi", *(f"prob_{c}" for c in model.classes), "top_class", "passed", "label"]
    bin_rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    ml, syringe = ml_analyzed(data.header), sample_volume_ml(data.header)
    row = dict(
        bin=b.bin_id,
        path=b.folder,
        status="ok",
        triggers=len(scan.rois) + len(scan.empty_triggers) + len(scan.bad_rows),
        rois=len(scan.rois),
        classified=len(bin_rows),
        empty_triggers=len(scan.empty_triggers),
        bad_rows=len(scan.bad_rows),
        unreadable=len(unreadable),
        ml_analyzed=ml,
        syringe_ml=syringe,
    )
    return row, bin_rows
