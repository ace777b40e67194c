"""``ingest folder``: a folder (or zip) of images at any depth, labelled by the folder they are in.

The most common way people keep labelled plankton images (``<class>/<image>``, what torchvision's
``ImageFolder`` and most peer tools read). JPEG, PNG (8/16-bit, gray, RGB, RGBA, palette), TIFF and BMP, any case
of extension. Files that are not images (notes, tables, ``.DS_Store``) are skipped with the reason; images that
cannot be decoded become rejects in the shared decode stage.
"""

from __future__ import annotations

from plankton_data.ingest.adapters.base import RawRecord, Scan, SourceInfo
from plankton_data.ingest.adapters.own import folder_parts, own_info, skip_junk
from plankton_data.ingest.sources import RawTree, is_image

KIND = SourceInfo(
    kind="folder",
    title="Folder of images",
    raw_hint="a folder or a zip of images at any depth (folder symlinks followed once)",
    labels="the image's parent folder name (--label-level 2: the folder above it), or none with --unlabelled",
    options="--label-level N, --unlabelled, --strip-legend (ZooProcess vignettes), --instrument TEXT",
)


class FolderSource:
    kind = KIND

    def __init__(
        self,
        name: str,
        *,
        label_level: int = 1,
        unlabelled: bool = False,
        strip_legend: bool = False,
        instrument: str = "",
    ) -> None:
        if label_level < 1:
            raise ValueError(f"label level must be 1 (the parent folder) or more, not {label_level}")
        self.label_level, self.unlabelled, self.strip_legend = label_level, unlabelled, strip_legend
        self.info = own_info(name, KIND, instrument)

    @property
    def options(self) -> dict:
        options = {"label_level": self.label_level, "unlabelled": self.unlabelled}
        return options | ({"strip_legend": True} if self.strip_legend else {})  # older plans stay the same

    def label_of(self, path: str) -> str:
        """The label of the image at virtual path ``path``: the folder ``label_level`` up, or ``""`` (unlabelled)
        when there is none (an image at the top of --raw) or with ``--unlabelled``."""
        folders = folder_parts(path)
        if self.unlabelled or len(folders) < self.label_level:
            return ""
        return folders[-self.label_level]

    def scan(self, tree: RawTree) -> Scan:
        scan = Scan()
        skip_junk(tree, scan)
        for m in tree.members:
            if not is_image(m.path):
                scan.skip(m.path, "not an image (by its extension: jpg, jpeg, png, tif, tiff, bmp)")
                continue
            step = "zooprocess_legend" if self.strip_legend else ""
            scan.records.append(RawRecord(m.path, m, self.label_of(m.path), instrument=self.info.instrument, step=step))
        return scan
