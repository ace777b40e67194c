"""DAPlankton (Batrakhanov et al., ICIP 2024): LAB and SEA subsets from CytoSense, FlowCam and IFCB."""

from __future__ import annotations

import re

from plankton_data.ingest.adapters.base import AdapterInfo, RawRecord, Scan, match_images
from plankton_data.ingest.sources import RawTree

# Identical basenames occur in up to five folders: subset and instrument are part of the source path.
_IMAGE = re.compile(r"(?:^|/)DAPlankton_(lab|sea)/(CS|FC|IFCB)/([^/]+)/[^/]+$", re.IGNORECASE)
_META = re.compile(r"(?i)readme\.md$")


class DAPlankton:
    info = AdapterInfo(
        id="daplankton",
        title="DAPlankton (LAB and SEA)",
        homepage="https://doi.org/10.23729/32583bd0-38cd-4532-a8d6-fc9dc5967dce",
        license="CC-BY-4.0",
        raw_hint="the Fairdata package zip as downloaded (zip inside zip), or the unpacked folder",
        layout="DAPlankton/DAPlankton_{lab,sea}/{CS,FC,IFCB}/<class>/<image> (CS .jpg, IFCB/FC .png)",
        instrument="",
        expected="111,924 images: LAB 47,471 (15 classes), SEA 64,453 (31 classes)",
    )

    def scan(self, tree: RawTree) -> Scan:
        scan = Scan()
        for member, hit in match_images(tree, _IMAGE, scan, _META):
            subset, instrument, cls = hit.group(1).lower(), hit.group(2).upper(), hit.group(3)
            scan.records.append(RawRecord(member.path, member, cls, subset=subset, instrument=instrument))
        return scan
