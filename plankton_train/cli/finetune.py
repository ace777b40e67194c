"""``splits``, ``finetune``, ``experiment``, ``report`` and ``predict``: thin Typer wrappers over the library.

Each command parses options, calls one library function and prints a short summary. Errors are handled once
for all commands (:mod:`plankton_train.cli.main`). Library imports are deferred to the command functions so
``--help`` does not load torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from plankton_train.cli._options import DeviceOpt, floats, out
from plankton_train.cli.pretrain import AUTO_PRECISION, CompileOpt, Precision, PrecisionOpt
from plankton_train.errors import FinetuneError
from plankton_train.models.registry import check_init


def splits(
    manifest: Annotated[Path, typer.Argument(help="Manifest Parquet of a labelled ingested dataset.")],
    output: Annotated[Path, typer.Option("--out", "-o", help="Splits Parquet file to write.")],
    by: Annotated[str, typer.Option(help="Manifest columns that define a group (split separately).")] = (
        "dataset,subset,instrument"
    ),
    folds: Annotated[int, typer.Option(min=2, help="Test folds (20 % each for 5).")] = 5,
    val_share: Annotated[float, typer.Option(help="Share of each fold's train part used for validation.")] = 0.15,
    fractions: Annotated[str, typer.Option(help="Labelled fractions of the training pool.")] = "0.01,0.05,0.1,1",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Draw the paper's splits: stratified folds, validation, nested labelled fractions (>= 1 per class).

    Example: plankton-train splits manifests/daplankton.parquet --out splits/daplankton.parquet
    """
    from plankton_train.protocol.splits import SplitConfig, per_class_ranges, splits_from_manifest, write_splits

    cfg = SplitConfig(folds=folds, val_share=val_share, fractions=floats(fractions), seed=seed)
    table = splits_from_manifest(manifest, cfg=cfg, group_by=tuple(c.strip() for c in by.split(",") if c.strip()))
    write_splits(table, output, cfg=cfg)
    view = Table("group", "fraction", "classes", "train images", "per class (min-max)", title=str(output))
    for r in per_class_ranges(table).itertuples(index=False):
        view.add_row(r.group, f"{r.fraction * 100:g}%", str(r.classes), f"{r.train_images:.0f}", f"{r.min}-{r.max}")
    out.print(view)


def finetune(
    manifest: Annotated[Path, typer.Option(help="Manifest Parquet of the labelled dataset.")],
    shards_root: Annotated[
        str,
        typer.Option(
            "--shards",
            help="Shards root, as in plankton-data (manifest `shard` paths are relative to it), or its URL (s3://...).",
        ),
    ],
    splits_file: Annotated[Path, typer.Option("--splits", help="Splits Parquet from `plankton-train splits`.")],
    output: Annotated[Path, typer.Option("--out", "-o", help="Run folder to write.")],
    group: Annotated[str, typer.Option(help="Group to train on (default: the only one in the splits file).")] = "",
    fold: Annotated[int, typer.Option(min=0)] = 0,
    fraction: Annotated[float, typer.Option(help="Labelled fraction of the training pool.")] = 1.0,
    init: Annotated[
        str,
        typer.Option(
            help="random | imagenet (MAE ImageNet-1k, the paper's baseline) | imagenet-supervised | timm:NAME | "
            "hf-hub:ORG/NAME | folder | file."
        ),
    ] = ("imagenet"),
    weights_file: Annotated[
        str, typer.Option(help="Local weights for imagenet, imagenet-supervised and timm: inits (no hub).")
    ] = "",
    arch: Annotated[str, typer.Option(help="timm architecture for random / weights-file inits.")] = (
        "vit_large_patch16_224"
    ),
    epochs: Annotated[int, typer.Option(min=1)] = 50,
    warmup_epochs: Annotated[int, typer.Option(min=0)] = 5,
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 2e-3,
    weight_decay: Annotated[float, typer.Option()] = 0.01,
    layer_decay: Annotated[float, typer.Option(help="Layer-wise lr decay.")] = 0.75,
    label_smoothing: Annotated[float, typer.Option()] = 0.1,
    drop_path: Annotated[float, typer.Option()] = 0.2,
    img_size: Annotated[int, typer.Option(help="Network input side in px.")] = 224,
    resize: Annotated[int, typer.Option(help="Eval resize side before the centre crop.")] = 256,
    normalization: Annotated[
        str, typer.Option(help="Input mean/std: dataset (target's) or encoder (pretraining's).")
    ] = ("dataset"),
    workers: Annotated[int, typer.Option(min=0, help="DataLoader worker processes.")] = 4,
    device: DeviceOpt = "auto",
    seed: Annotated[int, typer.Option()] = 0,
    precision: PrecisionOpt = AUTO_PRECISION,
    compile_model: CompileOpt = False,
) -> None:
    """Fine-tune one cell (group, fold, fraction) with the paper's recipe; best epoch chosen on validation.

    Example: plankton-train finetune --manifest manifests/daplankton.parquet --shards shards
    --splits splits/daplankton.parquet --group daplankton/lab/CS --fraction 0.01 --init imagenet
    --out runs/cs1
    """
    check_init(init)  # before torch loads: a mistyped --init fails at once
    from plankton_train.finetune import Cell, Recipe
    from plankton_train.finetune import finetune as run
    from plankton_train.models.classifier import EncoderSpec
    from plankton_train.protocol.splits import read_splits

    if not group:
        groups = sorted(read_splits(splits_file)[0]["group"].unique())
        if len(groups) != 1:
            raise FinetuneError(f"the splits file has groups {groups}: choose one with --group")
        group = groups[0]
    recipe = Recipe(
        epochs=epochs,
        warmup_epochs=warmup_epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        layer_decay=layer_decay,
        label_smoothing=label_smoothing,
        img_size=img_size,
        resize=resize,
        normalization=normalization,
        num_workers=workers,
        seed=seed,
        device=device,
        precision=Precision(precision).value,
        compile=compile_model,
    )
    spec = EncoderSpec(arch=arch, init=init, weights_file=weights_file, drop_path=drop_path)
    from plankton_data.format.remote import localize_for_manifest  # a URL: the sets the manifest names, cached

    root = localize_for_manifest(shards_root, manifest)
    res = run(Cell(manifest, root, splits_file, group, fold, fraction), encoder=spec, recipe=recipe, out=output)
    out.print(
        f"test accuracy {res.accuracy:.4f}  balanced {res.balanced_accuracy:.4f}  macro-F1 "
        f"{res.macro_f1:.4f}  ECE {res.ece:.4f}  (best epoch {res.best_epoch}, {res.n_train} training "
        f"images) -> {output}"
    )


def experiment(
    config: Annotated[Path, typer.Argument(help="Experiment config (.toml or .yaml).")],
    output: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (overrides `out`).")] = None,
    dry_run: Annotated[bool, typer.Option(help="List the cells and exit.")] = False,
) -> None:
    """Run a grid of models x groups x fractions x folds; rerunning skips finished cells.

    Example: plankton-train experiment configs/daplankton.toml --out runs/daplankton
    """
    from plankton_train.protocol.experiment import grid, load_experiment, run_experiment

    exp = load_experiment(config)
    if dry_run:
        cells = grid(exp)
        for model, group, fraction, fold in cells:
            out.print(f"{model}\t{group}\t{fraction * 100:g}%\tfold {fold}")
        out.print(f"{len(cells)} cells")
        return
    results = run_experiment(exp, out=output)
    out.print(f"{len(results)} result rows in {Path(output or exp.out or '.') / 'results.csv'}")


def report(
    results: Annotated[
        Path,
        typer.Argument(
            help="results.csv of `plankton-train experiment` (or its folder), or one `plankton-train finetune` "
            "run folder."
        ),
    ],
    output: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")],
    confusion_fractions: Annotated[str, typer.Option(help="Fractions with confusion PNGs (default: all).")] = "",
) -> None:
    """Tables (mean ± std over folds), accuracy-vs-fraction plot, confusion matrices, per-class metrics, ECE.

    Example: plankton-train report runs/daplankton/results.csv --out reports/daplankton

    Example (one run): plankton-train report runs/cs1 --out reports/cs1
    """
    from plankton_train.protocol.experiment import RESULTS_NAME, run_results
    from plankton_train.protocol.report import write_report

    if results.is_dir() and (results / RESULTS_NAME).is_file():
        results = results / RESULTS_NAME  # an experiment folder
    elif results.is_dir():  # one finetune run folder: a one-row results table beside the report
        output.mkdir(parents=True, exist_ok=True)
        run_results(results).to_csv(output / RESULTS_NAME, index=False)
        results = output / RESULTS_NAME
    files = write_report(results, out=output, confusion_fractions=floats(confusion_fractions) or None)
    out.print((output / "accuracy.md").read_text())
    out.print(f"{len(files)} files in {output}")


def predict(
    model: Annotated[Path, typer.Argument(help="Run folder of a fine-tuned model.")],
    images: Annotated[
        str, typer.Argument(help="Folder of images, a zip archive, a shard folder, or raw IFCB bins (folder/zip).")
    ],
    output: Annotated[Path, typer.Option("--out", "-o", help="Output .parquet or .csv.")],
    top_k: Annotated[int, typer.Option(min=1)] = 3,
    min_confidence: Annotated[
        float, typer.Option(min=0, max=1, help="Below this top-1 probability: `unassigned`.")
    ] = 0.0,
    thresholds: Annotated[
        Path | None,
        typer.Option(
            help="CSV with columns class,threshold: per-class top-1 probability needed (others: --min-confidence)."
        ),
    ] = None,
    embeddings: Annotated[bool, typer.Option(help="Also write the encoder embeddings.")] = False,
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
    device: DeviceOpt = "auto",
) -> None:
    """Classify images: top-k labels, all class probabilities, optional embeddings.

    Raw IFCB bins (.hdr/.adc/.roi in a folder tree or zip) are classified ROI by ROI; besides the table,
    <out stem>_bins/ gets <bin>.csv (per-ROI class scores), counts.csv (counts and counts per mL analysed per
    bin and class) and bins.csv (ROIs, empty triggers and skips per bin).

    Warns when the images' pixel statistics are far from the training images' (the check is recorded in the
    output's metadata, or in <out>.json for CSV).

    Example: plankton-train predict runs/cs1 new_images.zip --out predictions.csv --min-confidence 0.7
    """
    from plankton_train.protocol.predict import UNASSIGNED, PredictOptions, read_thresholds
    from plankton_train.protocol.predict import predict as run

    opts = PredictOptions(
        top_k=top_k,
        min_confidence=min_confidence,
        thresholds=read_thresholds(thresholds) if thresholds else None,
        embeddings=embeddings,
        batch_size=batch_size,
        device=device,
    )
    meta = run(model, source=images, out=output, opts=opts).attrs["predict"]
    far = " [yellow](far from the training images: see the warning)[/]" if meta["warning"] else ""
    out.print(f"{meta['images']} images, {meta['unassigned']} {UNASSIGNED} -> {output}{far}")
    if "bins" in meta:
        skipped = f", {len(meta['bins_skipped'])} skipped (see bins.csv)" if meta["bins_skipped"] else ""
        out.print(f"{meta['bins']} IFCB bins{skipped} -> {meta['bins_folder']}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    for command in (splits, finetune, experiment, report, predict):
        app.command()(command)
