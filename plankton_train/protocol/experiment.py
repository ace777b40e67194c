"""The protocol grid: initialisations x groups (instruments) x labelled fractions x folds, resumable.

A small TOML (or YAML) file describes the grid; see ``docs/finetuning.md``. Every finished run appends one
row to ``<out>/results.csv``; on a rerun, cells that already have a row are skipped, so an interrupted
experiment continues where it stopped. ``<out>/experiment.json`` records the recipe and every model's encoder
spec; a rerun with another recipe, or another spec under a model name already run, is refused rather than
mixing rows of two settings in one table (adding models, fractions or folds is fine). Run folders live under
``<out>/runs/<model>/<group>/<pct>/fold<k>``.
Relative paths in the config are relative to the config file's folder.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd
import tomllib
import yaml

from plankton_data.format.atomic import atomic_path
from plankton_train.errors import ExperimentError
from plankton_train.finetune import METRICS_NAME, Cell, Recipe, finetune
from plankton_train.models.classifier import INFO_NAME, EncoderSpec
from plankton_train.models.registry import INIT_PREFIXES, NAMED_INITS
from plankton_train.protocol.splits import read_splits

log = logging.getLogger(__name__)

RESULTS_NAME = "results.csv"
SETTINGS_NAME = "experiment.json"
RESULT_COLUMNS = (
    "model",
    "init",
    "group",
    "fraction",
    "fold",
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "ece",
    "val_accuracy",
    "best_epoch",
    "n_train",
    "n_val",
    "n_test",
    "classes",
    "seconds",
    "run_dir",
)


@dataclass(frozen=True)
class Experiment:
    """A parsed experiment config (paths resolved)."""

    manifest: Path
    shards_root: Path
    splits: Path
    models: dict[str, EncoderSpec]  # display name -> encoder (init + architecture)
    recipe: Recipe
    out: Path | None = None
    groups: tuple[str, ...] = ()  # empty: every group of the splits file
    fractions: tuple[float, ...] = ()  # empty: every fraction of the splits file
    folds: tuple[int, ...] = ()  # empty: every fold


def _strict(section: str, data: dict, allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ExperimentError(f"unknown key(s) {unknown} in [{section}]; allowed: {sorted(allowed)}")


def _names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def _build(cls: type, section: str, data: dict) -> Any:
    _strict(section, data, _names(cls))
    if "crop_scale" in data:
        data = dict(data, crop_scale=tuple(data["crop_scale"]))
    try:
        return cls(**data)
    except TypeError as exc:
        raise ExperimentError(f"[{section}]: {exc}") from exc


def load_experiment(path: Path | str) -> Experiment:
    """Parse and check a TOML (``.toml``) or YAML (``.yaml``/``.yml``) experiment config."""
    path = Path(path)
    if not path.is_file():
        raise ExperimentError(f"no config file at {path}")
    text = path.read_text()
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ExperimentError(f"{path}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise ExperimentError(f"{path}: expected a table of settings")
    top = {
        "manifest",
        "shards_root",
        "splits",
        "out",
        "groups",
        "fractions",
        "folds",
        "models",
        "encoder",
        "recipe",
    }
    _strict("top level", data, top)
    for key in ("manifest", "shards_root", "splits", "models"):
        if key not in data:
            raise ExperimentError(f"{path}: missing `{key}`")
    base = path.parent

    def resolve(p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else (base / q).resolve()

    shared = data.get("encoder", {})
    models = {}
    for name, spec in data["models"].items():
        spec = {"init": spec} if isinstance(spec, str) else dict(spec)
        merged = {**shared, **spec}
        init = merged.get("init", "")
        if init and init not in NAMED_INITS and not init.startswith(INIT_PREFIXES):
            merged["init"] = str(resolve(init))  # a local folder or weights file
        if merged.get("weights_file"):
            merged["weights_file"] = str(resolve(merged["weights_file"]))
        models[str(name)] = _build(EncoderSpec, f"models.{name}", merged)
    return Experiment(
        manifest=resolve(data["manifest"]),
        shards_root=resolve(data["shards_root"]),
        splits=resolve(data["splits"]),
        models=models,
        recipe=_build(Recipe, "recipe", data.get("recipe", {})),
        out=resolve(data["out"]) if data.get("out") else None,
        groups=tuple(data.get("groups", ())),
        fractions=tuple(float(f) for f in data.get("fractions", ())),
        folds=tuple(int(k) for k in data.get("folds", ())),
    )


def grid(exp: Experiment) -> list[tuple[str, str, float, int]]:
    """Every (model, group, fraction, fold) cell, groups/fractions/folds defaulting to the splits file's."""
    splits, cfg = read_splits(exp.splits)
    groups = exp.groups or tuple(sorted(splits["group"].unique()))
    unknown = sorted(set(groups) - set(splits["group"]))
    if unknown:
        raise ExperimentError(f"groups {unknown} are not in {exp.splits}")
    fractions = exp.fractions or cfg.fractions
    missing = sorted(set(fractions) - set(cfg.fractions))
    if missing:
        raise ExperimentError(f"fractions {missing} are not in {exp.splits} (it has {list(cfg.fractions)})")
    folds = exp.folds or tuple(range(cfg.folds))
    if any(not 0 <= k < cfg.folds for k in folds):
        raise ExperimentError(f"folds must be in 0..{cfg.folds - 1}, got {list(folds)}")
    return [(m, g, f, k) for m in exp.models for g in groups for f in fractions for k in folds]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def _check_settings(exp: Experiment, path: Path) -> None:
    """Refuse to add rows made with other settings to ``path``'s folder; record the (merged) settings."""
    settings = {
        "recipe": asdict(exp.recipe),
        "models": {name: asdict(spec) for name, spec in exp.models.items()},
    }
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as they come back from the file
    if path.is_file():
        old = json.loads(path.read_text())
        # a recipe field added since the folder was written counts as its default (what those runs used)
        defaults = json.loads(json.dumps({f.name: f.default for f in fields(Recipe) if f.default is not MISSING}))
        old["recipe"] = {**{k: v for k, v in defaults.items() if k not in old["recipe"]}, **old["recipe"]}
        if old["recipe"] != settings["recipe"]:
            changed = sorted(k for k in settings["recipe"] if old["recipe"].get(k) != settings["recipe"][k])
            raise ExperimentError(f"{path.parent} holds results of another recipe (differs in {changed}): new --out")
        for name, spec in settings["models"].items():
            if name in old["models"] and old["models"][name] != spec:
                raise ExperimentError(f"{path.parent} holds results of another {name!r} encoder spec: rename the model")
        settings["models"] = {**old["models"], **settings["models"]}
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def run_experiment(exp: Experiment, *, out: Path | str | None = None) -> pd.DataFrame:
    """Run every cell without a row in ``<out>/results.csv``; returns the full results table."""
    out = Path(out) if out is not None else exp.out
    if out is None:
        raise ExperimentError("no output folder: set `out` in the config or pass --out")
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(exp, out / SETTINGS_NAME)
    results_path = out / RESULTS_NAME
    prev = read_results_csv(results_path)
    done = {
        (m, g, float(f), int(k)) for m, g, f, k in prev[["model", "group", "fraction", "fold"]].itertuples(index=False)
    }
    cells = grid(exp)
    todo = [c for c in cells if c not in done]
    log.info("%d cells, %d already done, %d to run", len(cells), len(cells) - len(todo), len(todo))
    for i, (model, group, fraction, fold) in enumerate(todo, 1):
        run_dir = Path("runs") / _slug(model) / _slug(group) / f"{fraction * 100:g}pct" / f"fold{fold}"
        log.info("[%d/%d] %s | %s | %g%% | fold %d", i, len(todo), model, group, fraction * 100, fold)
        cell = Cell(exp.manifest, exp.shards_root, exp.splits, group, fold, fraction)
        res = finetune(cell, encoder=exp.models[model], recipe=exp.recipe, out=out / run_dir)
        row = {
            **asdict(res),
            "model": model,
            "init": exp.models[model].init,
            "group": group,
            "fraction": fraction,
            "fold": fold,
            "run_dir": run_dir.as_posix(),
        }
        prev = pd.concat([prev, pd.DataFrame([{c: row[c] for c in RESULT_COLUMNS}])], ignore_index=True)
        with atomic_path(results_path) as tmp:  # the whole table, never a half-appended row
            prev.to_csv(tmp, index=False)
        log.info(
            "    test accuracy %.4f (val %.4f, best epoch %d, %.0f s)",
            res.accuracy,
            res.val_accuracy,
            res.best_epoch,
            res.seconds,
        )
    return prev


def read_results_csv(path: Path) -> pd.DataFrame:
    """The finished rows of an experiment's ``results.csv`` (an empty table if there is none yet).

    A row cut short (by a crash while an older version appended to the file) is dropped with a warning, so
    its cell is run again instead of counting as done with empty metrics.
    """
    if not path.is_file():
        return pd.DataFrame(columns=list(RESULT_COLUMNS))
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ExperimentError(f"{path} is not a results table ({str(exc).splitlines()[0]})") from exc
    missing = [c for c in RESULT_COLUMNS if c not in table.columns]
    if missing:
        raise ExperimentError(f"{path} lacks the columns {missing}: not written by plankton-train experiment")
    # a row cut short loses its last fields first; run_dir is the last column and never empty
    complete = table[["model", "group", "fraction", "fold", "accuracy", "run_dir"]].notna().all(axis=1)
    if not complete.all():
        log.warning("%s: %d incomplete row(s) dropped; their cells will be run again", path, int((~complete).sum()))
    return table[complete].reset_index(drop=True)


def run_results(run_dir: Path | str) -> pd.DataFrame:
    """The one-row results table (:data:`RESULT_COLUMNS`) of a single ``plankton-train finetune`` run folder.

    Built from the folder's ``metrics.json`` (the test metrics; written last, so only a finished run has it) and
    ``classifier.json`` (the cell and the init); ``run_dir`` is absolute, so the table can be written anywhere
    and the report still finds the run's ``test_predictions.parquet``.
    """
    run_dir = Path(run_dir).resolve()
    metrics_path, info_path = run_dir / METRICS_NAME, run_dir / INFO_NAME
    if not metrics_path.is_file() or not info_path.is_file():
        raise ExperimentError(
            f"{run_dir} is not a finished finetune run folder (needs {METRICS_NAME} and {INFO_NAME}) "
            f"nor an experiment folder with {RESULTS_NAME}"
        )
    metrics, info = json.loads(metrics_path.read_text()), json.loads(info_path.read_text())
    cell = info.get("cell", {})
    init = str(info.get("initialised_from", ""))
    model = init if init in NAMED_INITS or init.startswith(INIT_PREFIXES) else Path(init).name or "model"
    row = {
        **metrics,
        "model": model,
        "init": init,
        "group": cell.get("group", ""),
        "fraction": float(cell.get("fraction", 1.0)),
        "fold": int(cell.get("fold", 0)),
        "run_dir": run_dir.as_posix(),
    }
    return pd.DataFrame([{c: row.get(c) for c in RESULT_COLUMNS}])
