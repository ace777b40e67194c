"""UDE Diatoms in the Wild 2024 (Venkataramanan, Kloster et al., GigaScience 2024): labels from the CSV."""

from __future__ import annotations

import csv
import io
import re
from pathlib import PurePosixPath

from plankton_data.ingest.adapters.base import AdapterInfo, RawRecord, Scan, match_images
from plankton_data.ingest.sources import RawTree

_IMAGE = re.compile(r"(?:^|/)images/[^/]+$")
_CSV = re.compile(r"\.csv$", re.IGNORECASE)
_META = re.compile(r"(?i)(\.csv|readme\.txt)$")
KEPT_COLUMNS = (
    "annotation_id",
    "type",
    "genus",
    "species",
    "subspecies",
    "image_filename",
    "bbox_x0",
    "bbox_y0",
    "bbox_x1",
    "bbox_y1",
)


def resolve_label(row: dict) -> str:
    """The paper's 611 taxa: ``species`` when given (and not "None"/NaN), else ``genus``."""
    species = (row.get("species") or "").strip()
    if species and species.lower() not in ("none", "nan"):
        return species
    return (row.get("genus") or "").strip()


class UdeDiatoms:
    info = AdapterInfo(
        id="ude_diatoms",
        title="UDE Diatoms in the Wild 2024",
        homepage="https://zenodo.org/records/10410655",
        license="CC0-1.0",
        raw_hint="'UDE Diatoms in the Wild 2024.zip' as downloaded, or the unpacked folder",
        layout="UDE Diatoms in the Wild 2024/images/*.png + 'UDE Diatoms in the Wild 2024.csv'",
        instrument="microscope",
        expected="83,570 images, 611 taxa",
    )

    def scan(self, tree: RawTree) -> Scan:
        scan = Scan()
        rows: dict[str, dict] = {}
        for m in tree.members:
            if _CSV.search(m.path):
                reader = csv.DictReader(io.StringIO(tree.read(m).decode("utf-8-sig", "replace")))
                if "cutout_filename" not in (reader.fieldnames or []):
                    continue
                for row in reader:
                    rows.setdefault(row["cutout_filename"].strip(), row)
        seen = set()
        for member, _ in match_images(tree, _IMAGE, scan, _META):
            name = PurePosixPath(member.path).name
            found = rows.get(name)
            if found is None:
                scan.reject(member.path, "image has no row in the annotation CSV")
                continue
            seen.add(name)
            label = resolve_label(found)
            if not label:
                scan.reject(member.path, "CSV row has neither species nor genus", "")
                continue
            meta = {k: found[k] for k in KEPT_COLUMNS if found.get(k) not in (None, "")}
            scan.records.append(RawRecord(member.path, member, label, instrument=self.info.instrument, meta=meta))
        for name in sorted(set(rows) - seen):
            scan.reject(f"csv:{name}", "CSV row whose image file is missing", resolve_label(rows[name]))
        return scan
