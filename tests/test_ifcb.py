"""Raw IFCB bins (``plankton_data.ingest.ifcb``) on the real bins of two instrument generations, and bad bins."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from plankton_data.ingest.ifcb import (
    BinError,
    adc_columns,
    bin_parts,
    ml_analyzed,
    parse_header,
    roi_name,
    roi_pixels,
    sample_volume_ml,
    scan_adc,
)
from tests.conftest import REALDATA

IFCB = REALDATA / "ifcb"
CLASSIPYR = IFCB / "EuropeanIFCBGroup__ClassiPyR" / "tests" / "testthat" / "test_data"
BINS = {
    "D20220522T000439_IFCB134": CLASSIPYR / "raw" / "2022" / "D20220522",
    "D20220519T124533_IFCB134": IFCB / "nodc-sweden__ifcb-pytorch-classify" / "tests" / "fixtures" / "bins",
    "D20180712T065600_IFCB114": IFCB / "sykefi__syke-pic" / "tests" / "data" / "raw" / "valid",
}
needs_real = pytest.mark.skipif(not IFCB.is_dir(), reason="../shared/realdata/ifcb absent")


def _read(bin_id: str):
    base = BINS[bin_id] / bin_id
    header = parse_header(base.with_suffix(".hdr").read_text())
    scan = scan_adc(base.with_suffix(".adc").read_text(), adc_columns(header))
    return header, scan, base.with_suffix(".roi").read_bytes()


@needs_real
@pytest.mark.realdata
@pytest.mark.parametrize("bin_id", sorted(BINS))
def test_real_bins_decode_every_roi_the_header_counts(bin_id):
    header, scan, roi = _read(bin_id)
    triggers = len(scan.rois) + len(scan.empty_triggers)
    if "roiCount" in header:  # IFCB134 headers count both
        assert len(scan.rois) == int(header["roiCount"]) and triggers == int(header["triggerCount"])
    assert scan.bad_rows == [] and scan.rois
    assert scan.rois[-1].end == len(roi)  # the images tile the .roi file exactly
    for r in scan.rois:
        img = roi_pixels(roi, r)
        assert img.shape == (r.height, r.width) and img.dtype == np.uint8
    assert ml_analyzed(header) > 0 and sample_volume_ml(header) == 5.0


@needs_real
@pytest.mark.realdata
def test_classipyr_rois_match_the_pngs_published_beside_them():
    _, scan, roi = _read("D20220522T000439_IFCB134")
    pngs = sorted((CLASSIPYR / "png" / "D20220522T000439_IFCB134").glob("*.png"))
    assert len(pngs) == len(scan.rois) == 7
    for r, png in zip(scan.rois, pngs, strict=True):
        assert png.stem == roi_name("D20220522T000439_IFCB134", r.number)
        published = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
        ours = roi_pixels(roi, r)
        assert published.shape == ours.shape
        corr = np.corrcoef(published.ravel().astype(float), ours.ravel().astype(float))[0, 1]
        assert corr > 0.99, (png.name, corr)  # the PNGs are contrast-stretched: compare by correlation


def test_column_layout_comes_from_the_header_whatever_the_spelling():
    old = parse_header("ADCFileFormat: trigger#, ADC_time, ROIx, ROIy, ROIwidth, ROIheight, start_byte\n")
    new = parse_header("ADCFileFormat: trigger#, ADCtime, RoiX, RoiY, RoiWidth, RoiHeight, StartByte\n")
    rows = "1,0.1,0,0,0,0,0\n2,0.2,5,6,3,2,0\n3,0.3,7,8,2,2,6\n"
    for header in (old, new):
        scan = scan_adc(rows, adc_columns(header))
        assert [(r.number, r.width, r.height, r.start) for r in scan.rois] == [(2, 3, 2, 0), (3, 2, 2, 6)]
        assert scan.empty_triggers == [1]
    pixels = bytes(range(10))
    assert roi_pixels(pixels, scan.rois[1]).tolist() == [[6, 7], [8, 9]]


def test_bad_bins_fail_or_reject_with_a_reason():
    with pytest.raises(BinError, match="no ADCFileFormat"):
        adc_columns(parse_header("roiCount: 3\n"))
    with pytest.raises(BinError, match="lacks startbyte"):
        adc_columns(parse_header("ADCFileFormat: trigger#, RoiX, RoiY, RoiWidth, RoiHeight\n"))
    columns = adc_columns(parse_header("ADCFileFormat: trigger#, RoiX, RoiY, RoiWidth, RoiHeight, StartByte\n"))
    scan = scan_adc("1,0,0,4,4\n2,0,0,x,4,0\n3,0,0,2,2,0\n", columns)
    assert scan.bad_rows == [
        (1, "adc row has 5 fields, the layout needs 6"),
        (2, "adc row has a non-numeric ROI field"),
    ]
    with pytest.raises(ValueError, match="runs past the end"):
        roi_pixels(b"\0\0\0", scan.rois[0])  # a truncated .roi


def test_bin_file_names():
    assert bin_parts("2022/D20220522/D20220522T000439_IFCB134.roi") == ("D20220522T000439_IFCB134", "roi")
    assert bin_parts("IFCB5_2010_180_012345.adc") == ("IFCB5_2010_180_012345", "adc")
    assert bin_parts("notes/readme.txt") is None
    assert roi_name("D20220522T000439_IFCB134", 2) == "D20220522T000439_IFCB134_00002"
