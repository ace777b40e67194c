"""``ingest csv``: a CSV/TSV table that lists image files and, optionally, their labels.

``--raw`` is the table. ``--path-column`` names the files: relative to the table's folder, or to ``--root``, or
absolute. ``--label-column`` gives the label (an empty cell: unlabelled); without it every image is unlabelled.
The other columns are kept in the manifest's ``meta`` (``meta.table``). A row whose file is missing, or that
names a file already listed, is a reject with the reason and its row number. The separator is a tab for
``.tsv``/``.tab`` files or when the header line has tabs and no commas, else a comma.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from plankton_data.errors import PlanktonDataError
from plankton_data.ingest.adapters.base import RawRecord, Scan, SourceInfo
from plankton_data.ingest.adapters.own import own_info
from plankton_data.ingest.sources import Member, RawTree, is_image

KIND = SourceInfo(
    kind="csv",
    title="Table of image paths",
    raw_hint="a CSV or TSV file naming one image per row",
    labels="--label-column (an empty cell: unlabelled); without it, unlabelled",
    options="--path-column NAME (default path), --label-column NAME, --root DIR, --instrument TEXT",
)


def read_table(data: bytes, name: str) -> tuple[list[str], list[list[str]]]:
    """``(header, rows)`` of a CSV/TSV file's bytes (UTF-8, BOM allowed); blank lines dropped."""
    text = data.decode("utf-8-sig", errors="replace")
    first = text.split("\n", 1)[0]
    tab = Path(name).suffix.lower() in (".tsv", ".tab") or ("\t" in first and "," not in first)
    rows = [r for r in csv.reader(io.StringIO(text), delimiter="\t" if tab else ",") if any(c.strip() for c in r)]
    if not rows:
        raise PlanktonDataError(f"table {name} is empty")
    return [c.strip() for c in rows[0]], rows[1:]


def column(header: list[str], wanted: str, table: str, option: str) -> int:
    """Index of column ``wanted``; one line naming the table's columns when it has none of that name."""
    if wanted in header:
        return header.index(wanted)
    raise PlanktonDataError(f"{table} has no column {wanted!r} ({option}); its columns are: {', '.join(header)}")


class TableSource:
    kind = KIND

    def __init__(
        self,
        name: str,
        *,
        path_column: str = "path",
        label_column: str | None = None,
        root: Path | str | None = None,
        instrument: str = "",
    ) -> None:
        self.path_column, self.label_column = path_column, label_column
        self.root = Path(root).resolve() if root is not None else None
        self.info = own_info(name, KIND, instrument)

    @property
    def options(self) -> dict:
        return {"path_column": self.path_column, "label_column": self.label_column, "root": str(self.root or "")}

    def open_tree(self, raw: Path, max_member_bytes: int) -> RawTree:
        """The table alone: the images it names are made :class:`Member` objects by :meth:`scan`."""
        return RawTree.of_files([raw], max_member_bytes=max_member_bytes)

    def scan(self, tree: RawTree) -> Scan:
        scan = Scan()
        (table,) = tree.members
        header, rows = read_table(tree.read(table), table.path)
        pcol = column(header, self.path_column, table.path, "--path-column")
        lcol = column(header, self.label_column, table.path, "--label-column") if self.label_column else None
        base = self.root or Path(table.name).parent
        seen: dict[str, int] = {}
        for number, row in enumerate(rows, start=2):  # row 1 is the header
            cells = row + [""] * (len(header) - len(row))
            rel = cells[pcol].strip()
            label = cells[lcol].strip() if lcol is not None else ""
            where = f"{table.path}:{number}"
            if not rel:
                scan.reject(where, f"row {number} has an empty {self.path_column!r} cell", label)
                continue
            if rel in seen:
                scan.reject(f"{rel}@{number}", f"row {number} lists {rel} again (first at row {seen[rel]})", label)
                continue
            seen[rel] = number
            path = base / rel
            try:
                st = os.stat(path)
            except OSError as exc:
                scan.reject(rel, f"row {number}: file not found or unreadable ({exc.strerror or exc})", label)
                continue
            if not is_image(rel):
                scan.reject(rel, f"row {number}: not an image file (by its extension)", label)
                continue
            extra = {h: c for i, (h, c) in enumerate(zip(header, cells, strict=False)) if i not in (pcol, lcol) and c}
            scan.records.append(
                RawRecord(
                    rel,
                    Member(rel, st.st_size, -1, str(path)),
                    label,
                    instrument=self.info.instrument,
                    meta={"table": extra, "row": number} if extra else {"row": number},
                )
            )
        return scan
