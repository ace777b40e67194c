"""SYKE-plankton_IFCB_2022 (Kraft et al. 2022; B2SHARE phytoplankton_labeled.zip)."""

from __future__ import annotations

import re

from plankton_data.ingest.adapters.base import AdapterInfo, RawRecord, Scan, match_images
from plankton_data.ingest.sources import RawTree

# The label is the class folder, never the file name (names carry legacy class names).
_IMAGE = re.compile(r"(?:^|/)labeled_[^/]*/([^/]+)/[^/]+$")


class SykeIfcb:
    info = AdapterInfo(
        id="syke_ifcb",
        title="SYKE-plankton_IFCB_2022",
        homepage="https://b2share.eudat.eu/records/xvnrp-7ga56 (phytoplankton_labeled.zip)",
        license="CC-BY-4.0",
        raw_hint="phytoplankton_labeled.zip as downloaded, or the unpacked labeled_20201020/ folder",
        layout="labeled_20201020/<class>/<name>.png",
        instrument="IFCB",
        expected="63,074 images in 50 classes",
    )

    def scan(self, tree: RawTree) -> Scan:
        scan = Scan()
        for member, hit in match_images(tree, _IMAGE, scan):
            scan.records.append(RawRecord(member.path, member, hit.group(1), instrument=self.info.instrument))
        return scan
