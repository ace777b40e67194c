"""The ``plankton-data`` command line: a thin Typer/Rich layer over the library.

Every command calls one library function and renders its result. Errors the user can fix
(:class:`~plankton_data.errors.PlanktonError`) and errors of the environment (``OSError``: disk full, read-only
or missing folders, permissions) become one red line and exit status 1; set
``PLANKTON_DEBUG=1`` to see the traceback instead. A command that ends with ``typer.Exit(n)`` (``verify``
with problems) exits with ``n``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from plankton_data import __version__
from plankton_data.cli import shards as shard_cli
from plankton_data.cli._options import ImageFormat, ManifestsOpt, RichProgress, ShardsOpt, WorkersOpt, console, out
from plankton_data.cli.own_data import own_source
from plankton_data.errors import PlanktonDataError, PlanktonError
from plankton_data.ingest import IngestReport, ingest
from plankton_data.ingest.adapters import DATASET_IDS, SOURCE_KINDS, list_adapters, list_sources, make_source
from plankton_data.ingest.limits import DEFAULT_MAX_MEGAPIXELS, DEFAULT_MAX_MEMBER_MB, Limits
from plankton_data.ingest.parts import Part, merge
from plankton_data.ingest.preprocess import PreprocessConfig

app = typer.Typer(
    name="plankton-data",
    help="Turn published plankton datasets into WebDataset shards and Parquet manifests.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"plankton-data {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Turn published plankton datasets into WebDataset shards and Parquet manifests."""


def render_report(report: IngestReport, max_classes: int = 40) -> None:
    """Summary table: counts per class (samples and rejects), totals, where the outputs are.

    Labels, reasons and paths come from the user's data: every one is escaped, so a ``[/x]`` or ``[copy]`` in
    them prints as written instead of being taken for Rich markup (a crash, or silently dropped text).
    """
    table = Table(title=escape(f"{report.dataset}: {report.samples:,} samples in {len(report.classes)} classes"))
    table.add_column("label (as published)")
    table.add_column("samples", justify="right")
    table.add_column("rejects", justify="right")
    labels = sorted(set(report.classes) | set(report.rejected_classes))
    shown = (
        labels if len(labels) <= max_classes else sorted(labels, key=lambda k: -report.classes.get(k, 0))[:max_classes]
    )
    for label in sorted(shown):
        table.add_row(
            escape(label) if label else "(unlabelled)",
            f"{report.classes.get(label, 0):,}",
            f"{report.rejected_classes.get(label, 0):,}",
        )
    if len(shown) < len(labels):
        table.add_row(f"... {len(labels) - len(shown)} more classes (see the manifest)", "", "")
    table.add_section()
    table.add_row("[bold]total", f"[bold]{report.samples:,}", f"[bold]{report.rejects:,}")
    out.print(table)
    for reason, n in report.reasons.items():
        out.print(f"  {n:>6,} × {escape(reason)}")
    rate = report.samples / report.seconds if report.seconds else 0.0
    out.print(
        f"[green]✓[/] {report.samples:,} samples, {report.rejects:,} rejects, {report.skipped:,} skipped"
        f" → {report.shards} shards ({report.bytes / 1e6:,.1f} MB) in {escape(str(report.shard_dir))}"
        f"  [dim]{report.seconds:.1f} s, {rate:,.0f} img/s"
        + (f", {report.resumed_shards} shards resumed" if report.resumed_shards else "")
        + "[/]"
    )
    out.print(
        f"  manifest {escape(str(report.manifest))}  rejects {escape(str(report.rejects_path))}"
        f"  mean {report.mean:.4f} std {report.std:.4f}"
    )


_OWN = "Your own data (ingest folder|csv|ecotaxa|ifcb --name NAME)"


@app.command("ingest")
def ingest_cmd(
    dataset: Annotated[
        str,
        typer.Argument(
            help=f"Dataset id ({', '.join(DATASET_IDS)}) or a kind of your own data ({', '.join(SOURCE_KINDS)}).",
            show_default=False,
        ),
    ],
    raw: Annotated[Path, typer.Option("--raw", help="What you downloaded: archive(s) or the unpacked folder.")],
    name: Annotated[
        str | None,
        typer.Option(help="Your dataset's name (writes shards/NAME/, manifests/NAME.parquet).", rich_help_panel=_OWN),
    ] = None,
    label_level: Annotated[
        int,
        typer.Option(min=1, help="folder: label = the folder this many levels up (1: parent).", rich_help_panel=_OWN),
    ] = 1,
    unlabelled: Annotated[
        bool, typer.Option(help="folder/ecotaxa: ingest every image without a label.", rich_help_panel=_OWN)
    ] = False,
    path_column: Annotated[str, typer.Option(help="csv: column of image paths.", rich_help_panel=_OWN)] = "path",
    label_column: Annotated[
        str | None, typer.Option(help="csv: column of labels (default: unlabelled).", rich_help_panel=_OWN)
    ] = None,
    root: Annotated[
        Path | None,
        typer.Option(help="csv: folder the paths are relative to (default: the table's).", rich_help_panel=_OWN),
    ] = None,
    status: Annotated[
        str | None, typer.Option(help="ecotaxa: 'validated' keeps only validated objects.", rich_help_panel=_OWN)
    ] = None,
    strip_legend: Annotated[
        bool, typer.Option(help="ecotaxa/folder: remove the ZooProcess '1 mm' legend.", rich_help_panel=_OWN)
    ] = False,
    labels: Annotated[
        Path | None, typer.Option(help="ifcb: CSV of file_name,class_name labelling ROIs.", rich_help_panel=_OWN)
    ] = None,
    instrument: Annotated[
        str | None, typer.Option(help="The manifest's instrument column (default per kind).", rich_help_panel=_OWN)
    ] = None,
    size: Annotated[int, typer.Option(help="Output side in pixels (0 keeps the padded native size).", min=0)] = 256,
    image_format: Annotated[
        ImageFormat, typer.Option("--format", help="Stored encoding: jpg (fast) or png (lossless).")
    ] = ImageFormat.jpg,
    quality: Annotated[int, typer.Option(help="JPEG quality.", min=50, max=100)] = 95,
    seed: Annotated[int, typer.Option(help="Seed of the padding noise.")] = 0,
    workers: WorkersOpt = 0,
    records_per_shard: Annotated[int, typer.Option(help="Input images per tar shard.", min=1)] = 2000,
    shards: ShardsOpt = Path("shards"),
    manifests: ManifestsOpt = Path("manifests"),
    max_member_mb: Annotated[
        float,
        typer.Option(
            "--max-member-mb",
            min=1,
            help="Largest archive member or file read, in MiB; a bigger one is a reject (bounds memory).",
        ),
    ] = DEFAULT_MAX_MEMBER_MB,
    max_megapixels: Annotated[
        float,
        typer.Option(
            "--max-megapixels",
            min=1,
            help="Largest image decoded, in megapixels of its padded square (longer side squared); a bigger one"
            " is a reject (bounds memory).",
        ),
    ] = DEFAULT_MAX_MEGAPIXELS,
    part: Annotated[
        str | None,
        typer.Option(
            "--part",
            metavar="I/N",
            help="Ingest only slice I of N (0 <= I < N, by a hash of each input's path) into"
            " shards/<name>.part-I-of-N/, for 'plankton-data merge' (one machine or array task per slice;"
            " see docs/scale.md).",
        ),
    ] = None,
) -> None:
    """Ingest one dataset as published, or your own data, into shards/<name>/ and manifests/<name>.parquet.

    Examples: plankton-data ingest kaggle --raw ~/Downloads/ndsb/ --workers 8;
    plankton-data ingest folder --raw my_images/ --name lab_scope;
    plankton-data ingest ifcb --raw /data/ifcb/2024/ --name utö_2024 --labels classes.csv
    """
    options = {
        "label_level": label_level,
        "unlabelled": unlabelled,
        "path_column": path_column,
        "label_column": label_column,
        "root": root,
        "status": status,
        "strip_legend": strip_legend,
        "labels": labels,
        "instrument": instrument,
    }
    source = own_source(dataset, name, options)  # None for a built-in dataset id
    slice_ = Part.parse(part) if part is not None else None
    cfg = PreprocessConfig(size=size, image_format=image_format.value, quality=quality, seed=seed)
    with RichProgress(f"ingest {name or dataset}") as progress:
        report = ingest(
            source or dataset,
            raw,
            shards_root=shards,
            manifests_root=manifests,
            config=cfg,
            workers=workers or os.cpu_count() or 1,
            records_per_shard=records_per_shard,
            progress=progress,
            limits=Limits.of(max_member_mb, max_megapixels),
            part=slice_,
        )
    render_report(report)


@app.command("merge")
def merge_cmd(
    name: Annotated[str, typer.Argument(help="Dataset id or your dataset's name, as given to ingest --part.")],
    shards: ShardsOpt = Path("shards"),
    manifests: ManifestsOpt = Path("manifests"),
    clean: Annotated[
        bool, typer.Option("--clean", help="Delete the part folders once the merge is committed.")
    ] = False,
) -> None:
    """Merge the parts of 'ingest --part I/N' into shards/<name>/ and manifests/<name>.parquet.

    The result is byte-identical to one ingest of all the inputs with the same settings. All N parts must be
    committed and of one plan (same inputs, settings and N). Example: plankton-data merge kaggle --clean
    """
    with RichProgress(f"merge {name}") as progress:
        report = merge(name, shards_root=shards, manifests_root=manifests, clean=clean, progress=progress)
    render_report(report)


@app.command("datasets")
def datasets_cmd(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the list as JSON (every AdapterInfo field), for scripts.")
    ] = False,
) -> None:
    """List the supported datasets and the sources of your own data, and what --raw accepts for each.

    One block per dataset, readable at 80 columns; each download address is printed whole on its own line.

    Example: plankton-data datasets
    """
    import json
    import re
    from dataclasses import asdict

    def wrap(text: str, width: int) -> list[str]:
        """Greedy wrap at spaces; a word wider than ``width`` (a path) breaks after its slashes, then anywhere."""
        pieces: list[tuple[str, bool]] = []  # (text, a space before it)
        for word in text.split():
            parts = re.findall(r"[^/]*/|[^/]+", word) if len(word) > width else [word]
            parts = [p[i : i + width] for p in parts for i in range(0, len(p), width)]
            pieces += [(part, i == 0) for i, part in enumerate(parts)]
        lines: list[str] = []
        for piece, spaced in pieces:
            joined = (lines[-1] + (" " if spaced else "") + piece) if lines else piece
            if lines and len(joined) <= width:
                lines[-1] = joined
            else:
                lines.append(piece)
        return lines

    infos, sources = list_adapters(), list_sources()
    if as_json:
        data = {"datasets": [asdict(info) for info in infos], "sources": [asdict(kind) for kind in sources]}
        typer.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return
    width = max(60, min(out.width, 100))
    out.print(f"[bold]{len(infos)} supported datasets[/] (plankton-data ingest <id> --raw ...)", soft_wrap=True)
    for info in infos:
        url, _, note = info.homepage.partition(" ")
        out.print(f"\n[bold cyan]{escape(info.id)}[/]  {escape(info.title)}", soft_wrap=True)
        out.print(f"  {url}", soft_wrap=True, highlight=False, markup=False)  # never folded: copy it whole
        for name, value in (
            ("source", note.strip()),
            ("--raw", info.raw_hint),
            ("layout", info.layout),
            ("published", info.expected),
            ("licence", info.license),
            ("instrument", info.instrument),
        ):
            for i, line in enumerate(wrap(value, width - 14)):
                out.print(f"  {name if i == 0 else '':<10}  {line}", soft_wrap=True, highlight=False, markup=False)
    out.print(
        f"\n[bold]Your own data[/]: {len(sources)} sources (docs/your_data.md)\n"
        "  plankton-data ingest <kind> --raw ... --name NAME",
        soft_wrap=True,
    )
    for kind in sources:
        out.print(f"\n[bold cyan]{escape(kind.kind)}[/]  {escape(kind.title)}", soft_wrap=True)
        for name, value in (("--raw", kind.raw_hint), ("labels", kind.labels), ("options", kind.options)):
            for i, line in enumerate(wrap(value, width - 14)):
                out.print(f"  {name if i == 0 else '':<10}  {line}", soft_wrap=True, highlight=False, markup=False)


@app.command("demo")
def demo_cmd(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Where to write sample raw data, shards and manifests.")
    ] = Path("sample_data"),
    workers: WorkersOpt = 0,
) -> None:
    """Generate small raw archives of all seven datasets in their published layouts and samples of the four kinds
    of your own data (raw/own/: a folder, a table, an EcoTaxa export, IFCB bins), then ingest each.

    Example: plankton-data demo --out sample_data
    """
    from plankton_data.fixtures import write_all
    from plankton_data.fixtures.own_data import OWN_FIXTURES

    raws: dict = dict(write_all(out_dir / "raw"))
    sources: dict = {}
    for kind, builder in OWN_FIXTURES.items():
        raws[f"my_{kind}"], options = builder(out_dir / "raw" / "own", 0)
        sources[f"my_{kind}"] = make_source(kind, f"my_{kind}", **options)
    for dataset, fixture in raws.items():
        report = ingest(
            sources.get(dataset, dataset),
            fixture.raw,
            shards_root=out_dir / "shards",
            manifests_root=out_dir / "manifests",
            workers=workers or os.cpu_count() or 1,
        )
        render_report(report, max_classes=12)
        if (report.samples, report.rejects) != (fixture.samples, fixture.rejects):
            raise PlanktonDataError(
                f"{dataset}: expected {fixture.samples} samples / {fixture.rejects} rejects, "
                f"got {report.samples} / {report.rejects}"
            )
    where = escape(str(out_dir))
    out.print(
        f"[green]✓[/] {len(raws) - len(sources)} datasets and {len(sources)} samples of your own data ingested into"
        f" {where}/shards and {where}/manifests"
    )


shard_cli.register(app)


def os_error_line(exc: OSError) -> str:
    """``<strerror>: <filename>`` (``-> <filename2>`` for a rename) of an OSError, without errno or traceback."""
    text = exc.strerror or str(exc) or type(exc).__name__
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    return f"{text}: {' -> '.join(names)}" if names else text


def main() -> None:
    """Console-script entry point: one-line errors, non-zero exit, no tracebacks (unless PLANKTON_DEBUG=1)."""
    try:
        code = app(standalone_mode=False)  # a command's typer.Exit(n) comes back as n, not as an exception
    except PlanktonError as exc:
        if os.environ.get("PLANKTON_DEBUG"):
            raise
        console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except OSError as exc:  # the environment: disk full, read-only, permissions, a file where a folder goes
        if os.environ.get("PLANKTON_DEBUG"):
            raise
        console.print(f"[red]error:[/] {escape(os_error_line(exc))}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        code = 130
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as exc:
        # Usage errors (missing option, bad value) from the click that Typer bundles: show the usage line.
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    if code == 130:  # Ctrl-C: during a command Typer turns it into the exit code 130 itself
        console.print("[yellow]interrupted:[/] finished shards are kept; rerun the same command to resume")
    sys.exit(code if isinstance(code, int) else 0)


__all__ = ["app", "main"]
