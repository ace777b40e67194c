"""Kaggle National Data Science Bowl 2015 (PlanktonSet 1.0), and its NCEI archive form."""

from __future__ import annotations

import re

from plankton_data.ingest.adapters.base import AdapterInfo, RawRecord, Scan, match_images
from plankton_data.ingest.sources import RawTree

_TRAIN = re.compile(r"(?:^|/)train/([^/]+)/[^/]+$")
_TEST = re.compile(r"(?:^|/)test/[^/]+$")
_NCEI = re.compile(r"(?:^|/)FINAL_Plankton_Segments[^/]*/([^/]+)/[^/]+$")
_ANY = re.compile(f"{_TRAIN.pattern}|{_TEST.pattern}|{_NCEI.pattern}")
_META = re.compile(r"(?i)samplesubmission\.csv$|\.pdf$")


class Kaggle:
    info = AdapterInfo(
        id="kaggle",
        title="Kaggle National Data Science Bowl 2015 (PlanktonSet 1.0)",
        homepage="https://www.kaggle.com/c/datasciencebowl/data (NCEI accession 0127422)",
        license="Kaggle competition rules; NCEI copy: NOAA public archive",
        raw_hint="the folder holding train.zip and/or test.zip, either zip, or the NCEI 0127422 folder",
        layout="train/<class>/<id>.jpg, test/<id>.jpg, or FINAL_Plankton_Segments_*/<class>/<id>.jpg",
        instrument="ISIIS",
        expected="30,336 labelled train images in 121 classes; 130,400 unlabelled test images",
        pretrain_splits=("unlabeled",),
        pretrain_why="the paper pretrains on Kaggle's 130,400 unlabelled test images only",
    )

    def scan(self, tree: RawTree) -> Scan:
        scan = Scan()
        for member, _ in match_images(tree, _ANY, scan, _META):
            if hit := _TRAIN.search(member.path):
                label, split = hit.group(1), "train"
            elif hit := _NCEI.search(member.path):
                label, split = hit.group(1), ""
            else:
                label, split = "", "unlabeled"
            scan.records.append(RawRecord(member.path, member, label, split=split, instrument=self.info.instrument))
        return scan
