"""SYKE-plankton_ZooScan_2024 (Kareinen & Skyttä 2024; Fairdata package, zip inside zip)."""

from __future__ import annotations

import json
import re
from pathlib import PurePosixPath

from plankton_data.ingest.adapters.base import AdapterInfo, RawRecord, Scan, match_images
from plankton_data.ingest.sources import RawTree

_IMAGE = re.compile(r"(?:^|/)images/SYKE-plankton_ZooScan_2024/([^/]+)/[^/]+$")
_SPLITS = re.compile(r"(?:^|/)class_splits/SYKE-plankton_ZooScan_2024/splits\.json$")
_META = re.compile(r"(?:^|/)(class_splits/|readme\.md$)")
_SPLIT_NAMES = {"train": "train", "valid": "val", "val": "val", "test": "test"}


class SykeZooScan:
    info = AdapterInfo(
        id="syke_zooscan",
        title="SYKE-plankton_ZooScan_2024",
        homepage="https://doi.org/10.23729/fa115087-2698-4aa5-aedd-11e260b9694d",
        license="CC-BY-4.0",
        raw_hint="the Fairdata package zip as downloaded (zip inside zip), or the unpacked folder",
        layout="SYKE-plankton_ZooScan_2024/images/SYKE-plankton_ZooScan_2024/<Class>/<Class>_<idx>.jpg|png",
        instrument="ZooScan",
        expected="22,753 images in 20 classes",
    )

    def scan(self, tree: RawTree) -> Scan:
        scan = Scan()
        split_of: dict[str, str] = {}  # image stem -> split (splits.json lists .jpg; files may be .png)
        for m in tree.members:
            if _SPLITS.search(m.path):
                data = json.loads(tree.read(m))
                for per_split in data.get("images", {}).values():
                    for split, names in per_split.items():
                        for name in names:
                            split_of[PurePosixPath(name).stem] = _SPLIT_NAMES.get(split, split)
        for member, hit in match_images(tree, _IMAGE, scan, _META):
            stem = PurePosixPath(member.path).stem
            scan.records.append(
                RawRecord(
                    member.path,
                    member,
                    hit.group(1),
                    split=split_of.get(stem, ""),
                    instrument=self.info.instrument,
                    step="zooprocess_legend",
                )
            )
        return scan
