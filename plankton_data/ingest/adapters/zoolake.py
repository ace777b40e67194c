"""Lake Zooplankton / ZooLake v1 (Kyathanahally et al. 2021; Eawag DSPC, Lake Greifensee)."""

from __future__ import annotations

import csv
import io
import re
from pathlib import PurePosixPath

from plankton_data.ingest.adapters.base import AdapterInfo, RawRecord, Scan, match_images
from plankton_data.ingest.sources import RawTree

_IMAGE = re.compile(r"(?:^|/)zooplankton_0p5x/([^/]+)/training_data/[^/]+$")
_FEATURES = re.compile(r"(?:^|/)zooplankton_0p5x/([^/]+)/features\.tsv$")
_SPLIT = re.compile(r"(?:^|/)zoolake_train_test_val_separated/(train|val|test)_filenames\.txt$")
_META = re.compile(r"(?:^|/)(zoolake_train_test_val_separated/|Fig_All_plankton_images\.png$|[^/]+\.tsv$)")
#: features.tsv columns worth keeping in the manifest (the other 57 are intensity moments).
KEPT_FEATURES = (
    "timestamp",
    "file_size",
    "area",
    "estimated_volume",
    "aspect_ratio",
    "maj_axis_len",
    "min_axis_len",
    "orientation",
    "eccentricity",
    "solidity",
)


class ZooLake:
    info = AdapterInfo(
        id="zoolake",
        title="Lake Zooplankton (ZooLake v1, Eawag)",
        homepage="https://doi.org/10.25678/0004DY",
        license="CC0-1.0 (per Eawag)",
        raw_hint="data.zip as downloaded, or the unpacked data/ folder",
        layout="data/zooplankton_0p5x/<class>/training_data/*.jpeg with <class>/features.tsv",
        instrument="DSPC",
        expected="about 17,900 images in 35 classes",
    )

    def scan(self, tree: RawTree) -> Scan:
        scan = Scan()
        features: dict[tuple[str, str], dict] = {}
        splits: dict[tuple[str, str], str] = {}
        for m in tree.members:
            if hit := _FEATURES.search(m.path):
                for row in csv.DictReader(io.StringIO(tree.read(m).decode("utf-8", "replace")), delimiter="\t"):
                    name = PurePosixPath(row.get("url") or "").name
                    features[(hit.group(1), name)] = {k: row[k] for k in KEPT_FEATURES if row.get(k) not in (None, "")}
            elif hit := _SPLIT.search(m.path):
                for line in tree.read(m).decode("utf-8", "replace").splitlines():
                    # Lines carry an author-machine prefix; the last 4 components are stable.
                    parts = PurePosixPath(line.strip().replace("\\", "/")).parts[-4:]
                    if len(parts) == 4:
                        splits[(parts[1], parts[3])] = hit.group(1)
        for member, hit in match_images(tree, _IMAGE, scan, _META):
            cls, name = hit.group(1), PurePosixPath(member.path).name
            scan.records.append(
                RawRecord(
                    member.path,
                    member,
                    cls,
                    split=splits.get((cls, name), ""),
                    instrument=self.info.instrument,
                    meta={"features": features[(cls, name)]} if (cls, name) in features else {},
                )
            )
        return scan
