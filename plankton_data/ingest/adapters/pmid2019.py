"""PMID2019 (Li et al. 2020): Pascal VOC detection data; one sample per annotated box."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
import zipfile
import zlib
from pathlib import PurePosixPath

from plankton_data.errors import MemberTooLarge
from plankton_data.ingest.adapters.base import AdapterInfo, Box, RawRecord, Scan, match_images
from plankton_data.ingest.sources import RawTree

_IMAGE = re.compile(r"(?:^|/)JPEGImages/[^/]+$")
_XML = re.compile(r"(?:^|/)Annotations/([^/]+)\.xml$", re.IGNORECASE)
_SETS = re.compile(r"(?:^|/)ImageSets/Main/(train|val|test|trainval)\.txt$")
_META = re.compile(r"(?:^|/)(Annotations/|ImageSets/)|(?i:readme[^/]*$)")


def parse_voc(xml_bytes: bytes) -> list[Box]:
    """VOC XML -> boxes in 0-based end-exclusive pixels (VOC is 1-based inclusive). Raises ``ValueError``."""
    try:
        root = ET.fromstring(xml_bytes)
    except ET.ParseError as exc:
        raise ValueError(f"unreadable XML ({exc})") from exc
    boxes = []
    for obj in root.iter("object"):
        name = obj.findtext("name") or ""
        bb = obj.find("bndbox")
        if bb is None:
            raise ValueError(f"object {name!r} has no <bndbox>")
        try:
            xmin, ymin, xmax, ymax = (int(float(bb.findtext(t) or "nan")) for t in ("xmin", "ymin", "xmax", "ymax"))
        except (ValueError, OverflowError) as exc:  # OverflowError: int(float("inf"))
            raise ValueError(f"object {name!r} has a non-numeric or infinite box coordinate") from exc
        difficult = (obj.findtext("difficult") or obj.findtext("Difficult") or "0").strip()
        boxes.append(Box(xmin - 1, ymin - 1, xmax, ymax, name.strip(), {"difficult": difficult == "1"}))
    return boxes


class Pmid2019:
    info = AdapterInfo(
        id="pmid2019",
        title="PMID2019 (Plankton Microscopic Image Dataset 2019)",
        homepage="https://github.com/joanconquerlee/PMID2019 (data on Baidu Disk)",
        license="none stated",
        raw_hint="the PMID2019 folder (or a zip of it)",
        layout="PMID2019/JPEGImages/<n>.jpg + Annotations/<n>.xml (Pascal VOC) + ImageSets/Main/*.txt",
        instrument="microscope",
        expected="11,089 images, 10,908 annotated, 24 classes",
    )

    def scan(self, tree: RawTree) -> Scan:
        scan = Scan()
        xmls = {hit.group(1): m for m in tree.members if (hit := _XML.search(m.path))}
        split_of: dict[str, str] = {}
        lists = [(m, hit.group(1)) for m in tree.members if (hit := _SETS.search(m.path))]
        for m, split in sorted(lists, key=lambda item: item[0].path.endswith("trainval.txt")):
            for stem in tree.read(m).decode("utf-8", "replace").split():
                split_of.setdefault(stem, split)
        for member, _ in match_images(tree, _IMAGE, scan, _META):
            stem = PurePosixPath(member.path).stem
            if stem not in xmls:
                scan.reject(member.path, "no annotation XML for this image")
                continue
            try:
                boxes = parse_voc(tree.read(xmls[stem]))
            except (ValueError, OSError, MemberTooLarge, zipfile.BadZipFile, zlib.error) as exc:
                scan.reject(member.path, f"annotation {xmls[stem].path}: {exc}")
                continue
            good = []
            for k, box in enumerate(boxes):
                if box.x1 <= box.x0 or box.y1 <= box.y0:
                    scan.reject(
                        f"{member.path}#box{k}",
                        f"degenerate box {box.x0 + 1},{box.y0 + 1},{box.x1},{box.y1}",
                        box.label_raw,
                    )
                else:
                    good.append((k, box))
            if not boxes:
                scan.reject(member.path, "annotation has no objects")
            if good:
                scan.records.append(
                    RawRecord(
                        member.path,
                        member,
                        "",
                        split=split_of.get(stem, ""),
                        instrument=self.info.instrument,
                        boxes=tuple(b for _, b in good),
                        meta={"box_ids": [k for k, _ in good]},
                    )
                )
        return scan
