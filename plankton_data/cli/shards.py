"""``plankton-data shard | verify | stats | preview``: thin Typer commands over the shard-set library.

Each command makes one library call and renders its result. ``register(app)`` adds them to the main app;
errors are :class:`~plankton_data.errors.PlanktonDataError`, which the app's ``main()`` prints as one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from plankton_data.audit.preview import contact_sheet
from plankton_data.audit.stats import summarize
from plankton_data.audit.verify import verify
from plankton_data.cli._options import ManifestsOpt, RichProgress, ShardsOpt, console, out
from plankton_data.format.index import read_index
from plankton_data.format.remote import is_remote, localize, upload
from plankton_data.shardset import REASONS, ShardSetReport, build_shard_set


def register(app: typer.Typer) -> None:
    """Add the ``shard``, ``verify``, ``stats`` and ``preview`` commands to ``app``."""
    app.command("shard")(shard_cmd)
    app.command("verify")(verify_cmd)
    app.command("stats")(stats_cmd)
    app.command("preview")(preview_cmd)
    app.command("upload")(upload_cmd)


#: ``--shards`` of the reading commands: a local root or a URL (docs/object_storage.md); a str, as a Path drops "//".
RemoteShardsOpt = Annotated[
    str, typer.Option("--shards", help="Root folder of shard folders, or its URL (s3://, gs://, https://).")
]


def shard_cmd(
    name: Annotated[str, typer.Option("--name", help="Shard-set name: writes shards/NAME/, manifests/NAME.parquet.")],
    include: Annotated[
        list[str] | None,
        typer.Option("--include", "-i", help="Dataset to mix in (repeat). Default: every ingested built-in dataset."),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option("--exclude", "-x", help="Dataset to leave out (repeat); daplankton gives the no-daplankton set."),
    ] = None,
    add: Annotated[
        list[str] | None,
        typer.Option(
            "--add",
            "-a",
            help="Your own dataset (ingest folder|csv|ecotaxa|ifcb) to mix in on top of the selection (repeat).",
        ),
    ] = None,
    samples_per_shard: Annotated[int, typer.Option(min=1, help="Samples in every tar (all hold exactly this).")] = 2000,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the global shuffle.")] = 0,
    keep_shared_taxa: Annotated[
        bool, typer.Option("--keep-shared-taxa", help="With daplankton excluded, keep the taxa it shares with SYKE.")
    ] = False,
    keep_uncertain_taxon: Annotated[
        bool, typer.Option("--keep-uncertain-taxon", help="Do not treat Peridiniella catenata (probable) as shared.")
    ] = False,
    drop_duplicates: Annotated[
        bool, typer.Option("--drop-duplicates", help="Drop images whose pixels equal an image of another dataset.")
    ] = False,
    all_splits: Annotated[
        bool,
        typer.Option(
            "--all-splits",
            help="Also take the rows the paper leaves out of pretraining (Kaggle's labelled train images).",
        ),
    ] = False,
    shards: ShardsOpt = Path("shards"),
    manifests: ManifestsOpt = Path("manifests"),
) -> None:
    """Mix ingested datasets into one shuffled shard set of equally sized tars.

    Example: plankton-data shard --name no_daplankton --exclude daplankton
    """
    with RichProgress(f"shard {name}") as progress:
        report = build_shard_set(
            name,
            include=include or (),
            exclude=exclude or (),
            add=add or (),
            shards_root=shards,
            manifests_root=manifests,
            samples_per_shard=samples_per_shard,
            seed=seed,
            drop_class_overlap=not keep_shared_taxa,
            drop_duplicates=drop_duplicates,
            progress=progress,
            uncertain_taxa=not keep_uncertain_taxon,
            all_splits=all_splits,
        )
    render_shard_report(report)


def render_shard_report(r: ShardSetReport) -> None:
    """Per-dataset table of inputs, kept and removed rows by reason, then what was removed and why."""
    table = Table(title=escape(f"{r.name}: {r.total:,} samples in {r.shards} shards of {r.samples_per_shard:,}"))
    table.add_column("dataset", no_wrap=True, min_width=max(map(len, r.included)))
    for col in ("input", "kept", *(reason.replace("_", " ") for reason in REASONS)):
        table.add_column(col, justify="right")
    for d in r.included:
        table.add_row(
            escape(d), f"{r.inputs[d]:,}", f"{r.kept[d]:,}", *(f"{r.removed[x].get(d, 0):,}" for x in REASONS)
        )
    table.add_section()
    table.add_row(
        "[bold]total",
        f"[bold]{sum(r.inputs.values()):,}",
        f"[bold]{r.total:,}",
        *(f"[bold]{sum(r.removed[x].values()):,}" for x in REASONS),
    )
    out.print(table)
    for d in r.excluded:
        compared = f"; the leak guard compared {r.excluded_rows[d]:,} of its images" if d in r.excluded_rows else ""
        out.print(escape(f"  excluded dataset: {d}{compared}"))
    for d, why in r.split_rules.items():
        n = r.removed["split_rule"][d]
        out.print(escape(f"  split rule: {d} {why}; {n:,} rows left out (--all-splits keeps them)"), highlight=False)
    if r.shared_taxa:
        out.print(
            f"  shared taxon: the {len(r.shared_taxa)} taxa DAPlankton shares with SYKE-plankton_IFCB_2022 are"
            " removed from every dataset (--keep-shared-taxa keeps them)"
        )
        for d, labels in r.taxa_removed.items():
            out.print(
                escape(f"    {d}: " + ", ".join(f"{label} {n:,}" for label, n in labels.items())), highlight=False
            )
    if r.leaks:
        out.print(
            f"  leak: {len(r.leaks):,} images have the pixels of an excluded image, e.g. "
            f"{escape(r.leaks[0][0])} = {escape(r.leaks[0][1])}",
            highlight=False,
        )
    if r.duplicates:
        fate = "dropped" if sum(r.removed["duplicate"].values()) else "kept (--drop-duplicates drops them)"
        out.print(
            f"  duplicate: {len(r.duplicates):,} images have the pixels of an image of another dataset, "
            f"e.g. {escape(r.duplicates[0][0])} = {escape(r.duplicates[0][1])}; {fate}",
            highlight=False,
        )
    if r.remainder:
        out.print(
            f"  remainder: {len(r.remainder):,} samples after the last full shard are left out, so every "
            f"shard holds exactly {r.samples_per_shard:,}"
        )
    out.print(escape(f"  every removed sample is listed with its reason in {r.removed_path}"))
    for note in r.notes:
        out.print(f"  [yellow]note:[/] {escape(note)}")
    rate = r.bytes / 1e6 / r.seconds if r.seconds else 0.0
    resumed = f", {r.resumed_shards} shards resumed" if r.resumed_shards else ""
    out.print(
        f"[green]✓[/] {r.total:,} samples → {r.shards} shards ({r.bytes / 1e6:,.1f} MB) in {escape(str(r.shard_dir))}"
        f"  [dim]{r.seconds:.1f} s, {rate:,.0f} MB/s{resumed}[/]"
    )
    out.print(escape(f"  manifest {r.manifest}  mean {r.mean:.4f} std {r.std:.4f}"))


def verify_cmd(
    path: Annotated[
        str, typer.Argument(help="A shard folder: shards/<dataset>/ or shards/<shard set>/, or its URL (s3://...).")
    ],
    manifest: Annotated[Path | None, typer.Option(help="Manifest to check against (default: from index.json).")] = None,
) -> None:
    """Check every tar against index.json and the manifest (sha256, sizes, counts, members, sample hashes).

    Example: plankton-data verify shards/no_daplankton
    """
    folder = localize(path)  # a URL: its cached copy, fetched and sha256-checked
    problems = verify(folder, manifest)
    for p in problems:
        out.print(f"[red]✗[/] {escape(str(p))}", highlight=False, soft_wrap=True)  # one unbroken line each, for grep
    if problems:
        console.print(f"[red]error:[/] {len(problems)} problem(s) in {escape(str(path))}", soft_wrap=True)
        raise typer.Exit(1)
    index = read_index(folder)
    out.print(f"[green]✓[/] {escape(str(path))}: {len(index.shards)} shards, {index.total:,} samples intact")


def stats_cmd(
    target: Annotated[str, typer.Argument(help="A manifest, a shard folder, or an ingested dataset / shard-set name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the full summary as JSON.")] = False,
    top: Annotated[int, typer.Option(min=0, help="Classes listed per dataset in the table.")] = 10,
    shards: RemoteShardsOpt = "shards",
    manifests: ManifestsOpt = Path("manifests"),
) -> None:
    """Samples per dataset and class, and the distribution of published image sizes.

    Example: plankton-data stats no_daplankton --json
    """
    if remote := is_remote(target) or (is_remote(shards) and not target.endswith(".parquet")):  # a set on a store
        target = str(localize(target if is_remote(target) else f"{shards.rstrip('/')}/{target}"))
    summary = summarize(target, "shards" if remote else shards, manifests)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    sizes = Table(title=escape(f"{summary['manifest']}: {summary['total']:,} samples"))
    for col in ("dataset", "samples", "classes", "width p10/median/p90", "height p10/median/p90", "longer side"):
        sizes.add_column(col, justify="left" if col == "dataset" else "right")
    for d, s in summary["datasets"].items():
        w, h = s["orig_width"], s["orig_height"]
        hist = " ".join(f"{k}:{v:,}" for k, v in s["longer_side"].items() if v)
        sizes.add_row(
            escape(d),
            f"{s['samples']:,}",
            f"{len(s['classes']):,}",
            f"{w['p10']}/{w['median']}/{w['p90']}",
            f"{h['p10']}/{h['median']}/{h['p90']}",
            hist,
        )
    out.print(sizes)
    if top:
        classes = Table(title=f"most common classes (top {top} per dataset)")
        for col in ("dataset", "label (as published)", "samples"):
            classes.add_column(col, justify="right" if col == "samples" else "left")
        for d, s in summary["datasets"].items():
            for label, n in list(s["classes"].items())[:top]:
                classes.add_row(escape(d), escape(label) if label else "(unlabelled)", f"{n:,}")
            classes.add_section()
        out.print(classes)


def preview_cmd(
    path: Annotated[str, typer.Argument(help="A shard folder, a manifest, or an ingested dataset / shard-set name.")],
    out_file: Annotated[Path, typer.Option("--out", help="PNG to write.")],
    per_dataset: Annotated[int, typer.Option(min=1, help="Samples per dataset row.")] = 8,
    tile: Annotated[int, typer.Option(min=16, help="Tile side in pixels.")] = 128,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the sample choice.")] = 0,
    shards: ShardsOpt = Path("shards"),
    manifests: ManifestsOpt = Path("manifests"),
) -> None:
    """Write a contact sheet PNG of stored samples, one row per dataset.

    Example: plankton-data preview shards/no_daplankton --out preview.png
    """
    written = contact_sheet(path, out_file, per_dataset, tile, seed, shards, manifests)
    out.print(f"[green]✓[/] {escape(str(written))}")


def upload_cmd(
    name: Annotated[str, typer.Argument(help="Shard folder to upload: SHARDS/NAME/ and its manifest.")],
    root: Annotated[str, typer.Argument(help="Store root: writes ROOT/shards/NAME/ and ROOT/manifests/NAME.parquet.")],
    shards: ShardsOpt = Path("shards"),
    manifests: ManifestsOpt = Path("manifests"),
) -> None:
    """Upload a built shard folder to object storage: tars, then the manifest, index.json last.

    Example: plankton-data upload no_daplankton s3://my-bucket/plankton
    """
    found = manifests / f"{name}.parquet"
    with RichProgress(f"upload {name}", unit="B") as progress:
        r = upload(shards / name, root, manifest=found if found.is_file() else None, progress=progress)
    rate = r.bytes / 1e6 / r.seconds if r.seconds else 0.0
    out.print(f"[green]✓[/] {r.tars} tars ({r.bytes / 1e6:,.1f} MB) → {escape(r.url)}  [dim]{rate:,.0f} MB/s[/]")
    if r.manifest:
        out.print(escape(f"  manifest {r.manifest}"))
