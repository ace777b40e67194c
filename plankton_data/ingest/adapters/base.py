"""What an adapter is: it reads a published layout and describes samples; it never decodes or writes.

An adapter turns a :class:`~plankton_data.ingest.sources.RawTree` into a :class:`Scan`: one :class:`RawRecord` per
image to process (with its label, native split and metadata), plus the inputs it had to reject and the
files it skipped, each with a reason. Decoding, cropping, padding and writing are shared stages.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field, replace
from typing import Protocol

from plankton_data.ingest.sources import Member, RawTree, is_image


@dataclass(frozen=True)
class AdapterInfo:
    """Static facts about a dataset, shown by ``plankton-data datasets`` and used in error messages."""

    id: str
    title: str
    homepage: str
    license: str
    raw_hint: str  # what --raw should point at
    layout: str  # the layout the adapter looks for, in one line
    instrument: str  # default manifest `instrument`
    expected: str = ""  # published sample/class counts
    #: Native ``split`` values a pretraining shard set takes from this dataset by default (``None``: every
    #: row), and why. This is where the paper's per-dataset choices live as data, so the builder has no special
    #: cases; ``plankton-data shard --all-splits`` takes every row.
    pretrain_splits: tuple[str, ...] | None = None
    pretrain_why: str = ""


@dataclass(frozen=True)
class Box:
    """A crop box in published-image pixels, 0-based, end-exclusive (not yet clipped to the image)."""

    x0: int
    y0: int
    x1: int
    y1: int
    label_raw: str
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RawPixels:
    """Where an image stored as bare pixels lies in its member: ``height x width`` uint8 bytes in row order
    from byte ``start`` (a raw IFCB ROI inside its bin's ``.roi`` file)."""

    start: int
    height: int
    width: int

    @property
    def length(self) -> int:
        return self.height * self.width


@dataclass(frozen=True)
class RawRecord:
    """One input image. With ``boxes`` it yields one sample per box (PMID2019), else one sample.

    ``source`` is the image's name in the manifest: the member path, or for a ROI cut from a bigger member
    (``pixels`` set) the name the instrument's own tools use.
    """

    source: str  # Member.path
    member: Member
    label_raw: str
    split: str = ""
    subset: str = ""
    instrument: str = ""
    step: str = ""  # dataset-specific preprocessing: "" or "zooprocess_legend"
    boxes: tuple[Box, ...] = ()
    meta: dict = field(default_factory=dict)
    pixels: RawPixels | None = None  # set: the image is these bare pixels of ``member``, not an encoded file


@dataclass(frozen=True)
class Reject:
    """An input that did not become a sample (``kind='reject'``) or a file that is not one (``'skipped'``)."""

    source: str
    reason: str
    label_raw: str = ""
    kind: str = "reject"


@dataclass
class Scan:
    records: list[RawRecord] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)

    def skip(self, source: str, reason: str) -> None:
        self.rejects.append(Reject(source, reason, kind="skipped"))

    def reject(self, source: str, reason: str, label_raw: str = "") -> None:
        self.rejects.append(Reject(source, reason, label_raw))

    def reject_bad_labels(self) -> None:
        """Reject records (and boxes) whose label cannot name a class (:func:`label_problem`); keep the rest."""
        kept = []
        for rec in self.records:
            if why := label_problem(rec.label_raw):
                self.reject(rec.source, why, rec.label_raw)
                continue
            if rec.boxes:
                ids = rec.meta.get("box_ids", list(range(len(rec.boxes))))
                good = []
                for k, box in zip(ids, rec.boxes, strict=True):
                    if why := label_problem(box.label_raw) or ("box has no class name" if not box.label_raw else None):
                        self.reject(f"{rec.source}#box{k}", why, box.label_raw)
                    else:
                        good.append((k, box))
                if not good:
                    continue
                if len(good) < len(rec.boxes):
                    rec = replace(
                        rec, boxes=tuple(b for _, b in good), meta=dict(rec.meta, box_ids=[k for k, _ in good])
                    )
            kept.append(rec)
        self.records = kept


def label_problem(label: str) -> str | None:
    """Why a published label cannot name a class, or ``None``. An empty label means unlabelled and is fine;
    one of white space only, or a path component (a zip member under ``train/../`` or ``train/./``), is not."""
    if not label:
        return None
    text = label.strip()
    if not text:
        return f"blank label {label!r} (white space only)"
    if text in (".", ".."):
        return f"label {label!r} is a path component, not a class name"
    return None


class DatasetAdapter(Protocol):
    info: AdapterInfo

    def scan(self, tree: RawTree) -> Scan:
        """Describe every sample under ``tree``; reject/skip the rest with reasons."""
        ...


@dataclass(frozen=True)
class SourceInfo:
    """A kind of user data (``plankton-data ingest KIND --name NAME``), shown by ``plankton-data datasets``."""

    kind: str
    title: str
    raw_hint: str  # what --raw accepts
    labels: str  # where labels come from
    options: str  # the ingest options of this kind, in one line


class UserSource(DatasetAdapter, Protocol):
    """An adapter for the user's own data: ``info.id`` is the name they chose; ``options`` are the choices that
    decide the output (recorded in the plan and in ``index.json``, so a rerun with other options is a new plan)."""

    kind: SourceInfo

    @property
    def options(self) -> dict: ...


def normalize_label(label: str) -> str:
    """Published label -> comparable label: NFKC, trimmed, lower case, runs of spaces/hyphens -> ``_``.

    ``"Cryptophyceae-Teleaulax"`` and ``"Cryptophyceae_Teleaulax"`` both become ``cryptophyceae_teleaulax``.
    """
    text = unicodedata.normalize("NFKC", label).strip().lower()
    return re.sub(r"[\s\-]+", "_", text)


def match_images(tree: RawTree, pattern: re.Pattern[str], scan: Scan, metadata: re.Pattern[str] | None = None):
    """Yield ``(member, match)`` for members matching ``pattern``; file everything else in ``scan``.

    Images outside the layout are rejected (they look like data but cannot be labelled); other files are
    skipped unless ``metadata`` matches them (label files the adapter reads itself).
    """
    for m in tree.members:
        hit = pattern.search(m.path)
        if hit and is_image(m.path):
            yield m, hit
        elif metadata is not None and metadata.search(m.path):
            continue
        elif is_image(m.path):
            scan.reject(m.path, "image outside the published layout")
        else:
            scan.skip(m.path, "not an image")
