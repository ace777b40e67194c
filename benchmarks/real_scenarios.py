"""The paper's three initialisation scenarios on real plankton data, at CPU scale, with the console scripts only.

Target: ZooLake (``../shared/realdata/lake_zooplankton/data.zip``, 18 classes, 10,358 images). Arms:

* (a) ``random``: random initialisation of the same ViT. The paper's (a) is ImageNet weights; none can be had
  offline here, and the script records the one-line refusal of ``--init imagenet`` in the summary.
* (b) ``mae_without_target``: MAE pretrained on the other real sources only - Kaggle NDSB's unlabelled test
  images (``kaggle/test.zip``, 5,016), ZooProcess vignettes, IFCB PNGs and raw bins, diatom crops - never ZooLake.
* (c) ``mae_with_target``: the same sources plus ZooLake's images without labels (all of them, as the paper's
  "with target data" setting: pixels of every fold's test images, never a label).
* (c') ``mae_with_target_dsnorm``: (c) pretrained with ``--normalization dataset`` (each source with its own
  mean/std). Not a paper arm: it measures why (c) falls short with the set's single mean/std
  (docs/finetuning.md, "Three scenarios over label fractions").

Pipeline (each step is skipped when its output exists, so a rerun only redoes what is missing):

1. ``plankton-data ingest`` every source at ``--size`` px (``zoolake``, ``kaggle``; the small sets through
   ``ingest folder --unlabelled`` and ``ingest ifcb``).
2. ``plankton-data shard`` two pretraining sets: ``no_zoolake`` and ``with_zoolake`` (``--drop-duplicates``).
3. ``plankton-train pretrain`` the ``--model`` MAE per arm, ``--pretrain-steps`` steps of 256 images.
4. ``plankton-train splits`` on ZooLake (the paper's 5 folds, 15 % validation, nested 1/5/10/100 %).
5. ``plankton-train experiment`` per (arm, fold, column): the 1/5/10 % columns with ``--epochs``, the 100 %
   column with ``--epochs-full`` (the expensive one); ``--jobs`` experiments run side by side, each on one
   thread (two single-thread processes get more out of two contended cores than one two-thread process),
   random-init cells while the encoders are still pretraining.
6. All rows into ``<work>/results.csv``; ``plankton-train report``; per-fold paired differences
   (b-a, c-a, c-b) per fraction and metric into ``<work>/paired.csv``/``summary.md``, and
   ``<work>/scenarios.png``: a Fig. 4-style curve per metric plus the paired differences.

Run from the repository root::

    nice -n 5 .venv/bin/python benchmarks/real_scenarios.py                  # the full run, runs/scenarios (~2 h)
    .venv/bin/python benchmarks/real_scenarios.py --quick                     # the chain in a few minutes
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata"
BIN = Path(sys.executable).parent  # the venv's console scripts sit beside its python
TARGET = "zoolake"
#: (dataset name, ingest arguments) of every source; the small sets are folders of the user-data kinds.
SOURCES: dict[str, list[str]] = {
    "zoolake": ["zoolake", "--raw", str(REALDATA / "lake_zooplankton" / "data.zip")],
    "kaggle": ["kaggle", "--raw", str(REALDATA / "kaggle" / "test.zip")],  # the 5,016 unlabelled test images
    "ifcb_png": ["folder", "--name", "ifcb_png", "--unlabelled", "--raw", str(REALDATA / "ifcb")],
    "ifcb_bins": ["ifcb", "--name", "ifcb_bins", "--raw", str(REALDATA / "ifcb")],  # ROIs of the raw bins
    "zooscan": ["folder", "--name", "zooscan", "--unlabelled", "--raw", str(REALDATA / "zooscan")],
    # the extracted crops only: the folder also holds a zip of the same nine images
    "diatoms": [
        "folder",
        "--name",
        "diatoms",
        "--unlabelled",
        "--raw",
        str(REALDATA / "diatoms" / "aescobarr__diatom_classifier_ui" / "classifier" / "tests" / "fixtures")
        + "/diatoms_zip_extracted",
    ],
}
OTHERS = ["kaggle", "ifcb_png", "ifcb_bins", "zooscan", "diatoms"]
PRETRAIN_SETS = {"no_zoolake": OTHERS, "with_zoolake": [*OTHERS, TARGET]}
#: arm -> (pretraining set, ``plankton-train pretrain --normalization``); None: random init. ``c_dsnorm`` is (c)
#: with each dataset normalised by its own mean/std in pretraining (the set's single mean/std mixes Kaggle's white
#: and ZooLake's black backgrounds); it is what fine-tuning then shows the encoder.
ARMS: dict[str, tuple[str, str] | None] = {
    "random": None,
    "mae_without_target": ("no_zoolake", "set"),
    "mae_with_target": ("with_zoolake", "set"),
    "mae_with_target_dsnorm": ("with_zoolake", "dataset"),
}
LABELS = {
    "random": "(a) random init",
    "mae_without_target": "(b) MAE without ZooLake",
    "mae_with_target": "(c) MAE with ZooLake",
    "mae_with_target_dsnorm": "(c') (c), per-dataset normalisation",
}
SHORT = {"random": "(a)", "mae_without_target": "(b)", "mae_with_target": "(c)", "mae_with_target_dsnorm": "(c')"}
METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
PAIRS = (
    ("mae_without_target", "random"),
    ("mae_with_target", "random"),
    ("mae_with_target", "mae_without_target"),
    ("mae_with_target_dsnorm", "random"),
    ("mae_with_target_dsnorm", "mae_without_target"),
)
log = logging.getLogger("scenarios")


def _run(cmd: list[str], logfile: Path | None = None) -> None:
    """Run a console script; its output goes to ``logfile`` (or is dropped); a failure stops the benchmark."""
    log.info("$ %s", " ".join(cmd[:1] + [c if len(c) < 80 else "..." for c in cmd[1:]]))
    out = open(logfile, "ab") if logfile else subprocess.DEVNULL  # noqa: SIM115 - closed below
    try:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=_env()).returncode
    finally:
        if logfile:
            out.close()  # type: ignore[union-attr]
    if rc:
        sys.exit(f"failed ({rc}): {' '.join(cmd)}" + (f"; see {logfile}" if logfile else ""))


def _env(threads: int | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def _index(path: Path) -> dict | None:
    """``index.json`` of a shard folder (its commit marker), or None."""
    try:
        return json.loads((path / "index.json").read_text())
    except (OSError, ValueError):
        return None


def ingest(work: Path, size: int) -> dict[str, int]:
    """Every source at ``size`` px; returns samples per dataset."""
    counts = {}
    for name, args in SOURCES.items():
        idx = _index(work / "shards" / name)
        if idx is None or idx.get("size") != size:
            _run(
                [str(BIN / "plankton-data"), "ingest", *args, "--size", str(size), "--workers", "2"]
                + ["--shards", str(work / "shards"), "--manifests", str(work / "manifests")],
                work / "logs" / f"ingest_{name}.log",
            )
            idx = _index(work / "shards" / name)
        assert idx is not None
        counts[name] = int(idx["total"])
    return counts


def shard_sets(work: Path) -> None:
    """The two pretraining sets; rebuilt when a source was re-ingested (its index changed)."""
    for name, datasets in PRETRAIN_SETS.items():
        stamp = work / "shards" / f".{name}.sources.json"
        sources = {d: _index(work / "shards" / d) for d in datasets}
        if _index(work / "shards" / name) and stamp.is_file() and json.loads(stamp.read_text()) == sources:
            continue
        shutil.rmtree(work / "shards" / name, ignore_errors=True)
        _run(
            [str(BIN / "plankton-data"), "shard", "--name", name, *[a for d in datasets for a in ("--include", d)]]
            # small tars: every tar holds exactly this many, the rest after the last full one is left out
            + ["--samples-per-shard", "100", "--drop-duplicates"]
            + ["--shards", str(work / "shards"), "--manifests", str(work / "manifests")],
            work / "logs" / f"shard_{name}.log",
        )
        stamp.write_text(json.dumps(sources))


def variant(norm: str) -> str:
    """Folder-name suffix of a pretraining normalisation ("" for the default, the set's mean/std)."""
    return "" if norm == "set" else f"-pnorm_{norm}"


def base(arm: str) -> str:
    """The experiment's model key and folder stem of an arm: a normalisation variant shares its set's arm name."""
    pre = ARMS[arm]
    return arm if pre is None or pre[1] == "set" else next(a for a, p in ARMS.items() if p == (pre[0], "set"))


def pretrain_cmd(work: Path, name: str, norm: str, args: argparse.Namespace) -> tuple[list[str], Path, dict]:
    """The ``plankton-train pretrain`` command of one set, its run folder and the settings stamp."""
    out = work / "pretrain" / f"{name}{variant(norm)}"
    stamp = {"set": _index(work / "shards" / name), "steps": args.pretrain_steps, "model": args.model}
    stamp["batch"] = args.pretrain_batch
    if variant(norm):
        stamp["normalization"] = norm
    cmd = [str(BIN / "plankton-train"), "pretrain", "--shard-set", str(work / "shards" / name), "--out", str(out)]
    cmd += ["--model", args.model, "--batch-size", str(args.pretrain_batch), "--eff-batch", str(args.pretrain_batch)]
    cmd += [
        "--blr",
        "1.5e-3",
        "--steps",
        str(args.pretrain_steps),
        "--warmup-steps",
        str(max(1, args.pretrain_steps // 20)),
    ]
    cmd += ["--workers", "1", "--log-every", "50", "--ckpt-every", "0", "--normalization", norm]
    return cmd, out, stamp


def pretrain_done(out: Path, stamp: dict) -> bool:
    done = out / "bench_stamp.json"
    if not (out / "encoder" / "config.json").is_file() or not done.is_file():
        return False
    return {k: v for k, v in json.loads(done.read_text()).items() if k != "seconds"} == stamp


def experiment_config(work: Path, arm: str, fold: int, fractions: list[float], epochs: int, args) -> Path:
    """One ``plankton-train experiment`` TOML: one arm, one fold, some fractions, one recipe."""
    from plankton_train.models.mae import MODELS  # the architecture of the registry's MAE, for random init

    cfg = MODELS[args.model]
    kwargs = {k: v for k, v in cfg.timm_args().items() if k != "in_chans"}
    pre = ARMS[arm]
    if pre is None:
        kw = ", ".join(f"{k} = {json.dumps(v)}" for k, v in kwargs.items())
        model = f'{{ init = "random", arch = "{cfg.arch}", model_kwargs = {{ {kw} }} }}'
    else:
        model = f'{{ init = "{work / "pretrain" / f"{pre[0]}{variant(pre[1])}" / "encoder"}" }}'
    text = "\n".join(
        [
            f'manifest = "{work / "manifests" / f"{TARGET}.parquet"}"',
            f'shards_root = "{work / "shards"}"',
            f'splits = "{work / "splits" / f"{TARGET}.parquet"}"',
            f"fractions = {json.dumps(fractions)}",
            f"folds = [{fold}]",
            "[models]",
            f"{base(arm)} = {model}",
            "[recipe]",
            f"epochs = {epochs}",
            f"warmup_epochs = {max(1, epochs // 10)}",  # 5 of 50, as the paper
            "batch_size = 128",
            f"img_size = {cfg.img_size}",
            f"resize = {round(cfg.img_size * 256 / 224)}",  # the paper's 256 -> 224 centre crop, scaled
            "num_workers = 0",
            "",
        ]
    )
    stem = base(arm) + (variant(pre[1]) if pre else "")
    path = work / "configs" / f"{stem}_{'-'.join(f'{f:g}' for f in fractions)}_fold{fold}_{epochs}ep.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def run_jobs(jobs: list[dict], n_parallel: int, threads: int) -> None:
    """Run ``{"name", "cmd", "log", "after", "done"}`` jobs, ``n_parallel`` at a time, in list order once ready.

    ``after`` names jobs that must have finished first; ``done`` is a callback after a zero exit.
    """
    pending, running, finished = list(jobs), {}, set()
    while pending or running:
        for job in list(pending):
            if len(running) >= n_parallel:
                break
            if all(a in finished for a in job.get("after", ())):
                pending.remove(job)
                log.info("start %s", job["name"])
                fh = open(job["log"], "ab")  # noqa: SIM115 - closed when the job ends
                proc = subprocess.Popen(job["cmd"], stdout=fh, stderr=subprocess.STDOUT, env=_env(threads))
                running[job["name"]] = (proc, fh, job, time.perf_counter())
        time.sleep(2)
        for name, (proc, fh, job, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            fh.close()
            del running[name]
            if proc.returncode:
                for p, f, _, _ in running.values():
                    p.terminate()
                    f.close()
                sys.exit(f"{name} failed ({proc.returncode}); see {job['log']}")
            seconds = time.perf_counter() - t0
            log.info("done %s in %.0f s", name, seconds)
            finished.add(name)
            if job.get("done"):
                job["done"](seconds)


def imagenet_refusal(work: Path) -> str:
    """The one line ``--init imagenet`` answers offline (the paper's (a) cannot be run here)."""
    path = work / "imagenet_refusal.txt"
    if not path.is_file():
        cmd = [str(BIN / "plankton-train"), "finetune", "--manifest", str(work / "manifests" / f"{TARGET}.parquet")]
        cmd += ["--shards", str(work / "shards"), "--splits", str(work / "splits" / f"{TARGET}.parquet")]
        cmd += ["--fold", "0", "--fraction", "0.01", "--init", "imagenet", "--out", str(work / "imagenet_try")]
        cmd += ["--img-size", "64", "--resize", "73", "--epochs", "1"]
        res = subprocess.run(cmd, capture_output=True, text=True, env=_env())
        lines = [ln for ln in (res.stderr + res.stdout).splitlines() if ln.strip()]
        path.write_text(f"exit {res.returncode}: " + (lines[-1] if lines else "(no output)"))
    return path.read_text()


def paired(results, fractions: list[float]):
    """Per fold, fraction and metric: each arm's value and the paired differences (points of %)."""
    import pandas as pd

    rows = []
    for frac in fractions:
        sub = results[results["fraction"] == frac]
        for metric in METRICS:
            wide = sub.pivot_table(index="fold", columns="model", values=metric)
            for hi, lo in PAIRS:
                if hi in wide and lo in wide:
                    for fold, d in ((wide[hi] - wide[lo]) * 100).dropna().items():
                        rows.append(
                            {"fraction": frac, "metric": metric, "pair": f"{hi} - {lo}", "fold": fold, "diff": d}
                        )
    return pd.DataFrame(rows, columns=["fraction", "metric", "pair", "fold", "diff"])


def figure(results, diffs, out: Path, counts: dict[float, float]) -> None:
    """Fig. 4-style: each metric vs labelled fraction (top), per-fold paired differences (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7.2), sharex=True)
    colours = {"random": "#7f7f7f", "mae_without_target": "#1f77b4", "mae_with_target": "#d62728"}
    colours["mae_with_target_dsnorm"] = "#ff9f1c"
    pair_colours = ["#2ca02c", "#d62728", "#9467bd", "#ff9f1c", "#8c564b"]
    fracs = sorted(results["fraction"].unique())
    for j, metric in enumerate(METRICS):
        ax = axes[0, j]
        for arm in ARMS:
            g = results[results["model"] == arm].groupby("fraction")[metric]
            if g.ngroups:
                m, s = g.mean() * 100, g.std().fillna(0) * 100
                ax.errorbar(
                    m.index, m.values, yerr=s.values, marker="o", capsize=3, label=LABELS[arm], color=colours[arm]
                )
        ax.set_title(metric.replace("_", " "))
        ax.tick_params(labelbottom=True)
        ax.set_ylabel("test %, mean ± std over folds")
        ax.grid(alpha=0.3)
        ax = axes[1, j]
        for k, (hi, lo) in enumerate(PAIRS):
            d = diffs[(diffs["metric"] == metric) & (diffs["pair"] == f"{hi} - {lo}")]
            if len(d):
                off = 1 + (k - 2) * 0.07  # side by side on the log axis
                ax.scatter(d["fraction"] * off, d["diff"], s=14, color=pair_colours[k], alpha=0.7)
                mean = d.groupby("fraction")["diff"].mean()
                name = f"{SHORT[hi]} - {SHORT[lo]}"
                ax.plot(mean.index * off, mean.values, marker="_", ms=14, lw=1, color=pair_colours[k], label=name)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_ylabel("paired difference (points), per fold")
        ax.set_xscale("log")
        ax.set_xticks(fracs)
        ax.minorticks_off()
        ax.set_xticklabels([f"{f * 100:g} %\n({counts.get(f, 0):,.0f})" for f in fracs])
        ax.set_xlabel("labelled fraction (mean training images)")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="upper left", fontsize=8)
    axes[1, 0].legend(loc="best", fontsize=9)
    fig.suptitle("ZooLake (real, 18 classes): initialisation scenarios at CPU scale", fontsize=12)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=None, help="work folder (default runs/scenarios[-quick])")
    ap.add_argument("--quick", action="store_true", help="the whole chain on a tiny budget (minutes)")
    ap.add_argument("--model", default="mae_cpu64", help="MAE registry name (mae_cpu64: 64 px, 8 px patches)")
    ap.add_argument("--size", type=int, default=80, help="stored image side of the ingest, px")
    ap.add_argument("--pretrain-steps", type=int, default=500)
    ap.add_argument("--pretrain-batch", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=20, help="fine-tuning epochs of the 1/5/10 %% columns")
    ap.add_argument("--epochs-full", type=int, default=4, help="fine-tuning epochs of the 100 %% column")
    ap.add_argument("--fractions", default="0.01,0.05,0.1,1")
    ap.add_argument("--folds", default="0,1,2")
    ap.add_argument("--jobs", type=int, default=2, help="experiments side by side")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per job")
    ap.add_argument("--arms", default=",".join(ARMS), help="initialisations to fine-tune (a side measurement: fewer)")
    ap.add_argument("--report-only", action="store_true", help="tables and figure from the cells finished so far")
    ap.add_argument(
        "--tag", default="", help="suffix of results/summary/figure names: a side measurement in the same work folder"
    )
    args = ap.parse_args()
    if args.quick:
        args.pretrain_steps, args.pretrain_batch, args.epochs, args.epochs_full = 8, 64, 1, 1
        args.fractions, args.folds = "0.01,0.05", "0"
    work = (args.work or REPO / "runs" / ("scenarios-quick" if args.quick else "scenarios")).resolve()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    missing = [a[a.index("--raw") + 1] for a in SOURCES.values() if not Path(a[a.index("--raw") + 1]).exists()]
    if missing:
        sys.exit(f"needs the real data in {REALDATA} (missing {missing[0]})")
    fractions = [float(f) for f in args.fractions.split(",")]
    tag = f"_{args.tag}" if args.tag else ""
    folds = [int(k) for k in args.folds.split(",")]
    t_start = time.perf_counter()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    counts = ingest(work, args.size)
    shard_sets(work)
    splits = work / "splits" / f"{TARGET}.parquet"
    if not splits.is_file():
        _run(
            [str(BIN / "plankton-train"), "splits", str(work / "manifests" / f"{TARGET}.parquet"), "--out", str(splits)]
        )
    refusal = imagenet_refusal(work)

    jobs: list[dict] = []
    pre_seconds: dict[str, float] = {}
    arms = {a: ARMS[a] for a in args.arms.split(",")}
    for name, norm in sorted({p for p in arms.values() if p}):
        cmd, out, stamp = pretrain_cmd(work, name, norm, args)
        if pretrain_done(out, stamp):
            pre_seconds[out.name] = json.loads((out / "bench_stamp.json").read_text()).get("seconds", float("nan"))
            continue
        shutil.rmtree(out, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)

        def _stamp(seconds: float, out=out, stamp=stamp) -> None:
            pre_seconds[out.name] = seconds
            (out / "bench_stamp.json").write_text(json.dumps({**stamp, "seconds": seconds}))

        jobs.append(
            {
                "name": f"pretrain_{out.name}",
                "cmd": cmd,
                "log": work / "logs" / f"pretrain_{out.name}.log",
                "done": _stamp,
            }
        )
    low, full = [f for f in fractions if f < 1], [f for f in fractions if f >= 1]
    if args.quick:  # the second recipe on the largest quick fraction, so the quick run walks the same path
        low, full = fractions[:-1], fractions[-1:]
    exp_dirs = []
    # the few-label columns (the paper's main claim) first, fold by fold, so that a run cut short still has
    # whole folds; the 100 % column last. Random-init cells start as soon as a slot is free.
    for column, fracs, epochs in (("low", low, args.epochs), ("full", full, args.epochs_full)):
        for fold in folds:
            for arm, pre in arms.items():
                if not fracs:
                    continue
                cfg = experiment_config(work, arm, fold, fracs, epochs, args)
                stem = base(arm) + (variant(pre[1]) if pre else "")
                out = work / "finetune" / f"{stem}_{column}_fold{fold}_{epochs}ep"
                exp_dirs.append((arm, out))
                needs = f"pretrain_{pre[0]}{variant(pre[1])}" if pre else ""
                after = [needs] if needs in {j["name"] for j in jobs} else []
                cmd = [str(BIN / "plankton-train"), "experiment", str(cfg), "--out", str(out)]
                jobs.append({"name": out.name, "cmd": cmd, "log": work / "logs" / f"{out.name}.log", "after": after})
    if not args.report_only:
        run_jobs(jobs, args.jobs, args.threads)
    exp_dirs = [(a, d) for a, d in exp_dirs if (d / "results.csv").is_file()]

    import pandas as pd

    # the model column names the arm (a normalisation variant ran under its set's arm name, in its own folder)
    results = pd.concat([pd.read_csv(d / "results.csv").assign(model=a) for a, d in exp_dirs], ignore_index=True)
    results = results.sort_values(["model", "fraction", "fold"]).reset_index(drop=True)
    results.to_csv(work / f"results{tag}.csv", index=False)
    _run(
        [
            str(BIN / "plankton-train"),
            "report",
            str(work / f"results{tag}.csv"),
            "--out",
            str(work / f"report{tag}"),
            "--confusion-fractions",
            ",".join(f"{f:g}" for f in fractions[-1:]),
        ]
    )
    diffs = paired(results, fractions)
    diffs.to_csv(work / f"paired{tag}.csv", index=False)
    n_train = results.groupby("fraction")["n_train"].mean().to_dict()
    figure(results, diffs, work / f"scenarios{tag}.png", n_train)

    lines = [f"# ZooLake scenarios, CPU ({os.cpu_count()} cores), work {work}", ""]
    lines += ["Test metrics, % (mean ± std over folds " + ",".join(map(str, folds)) + "):", ""]
    head = "| arm | metric | " + " | ".join(f"{f * 100:g} % ({n_train[f]:,.0f} img)" for f in fractions) + " |"
    lines += [head, "|" + "---|" * (len(fractions) + 2)]
    for arm in arms:
        for metric in METRICS:
            cells = []
            for f in fractions:
                v = results[(results["model"] == arm) & (results["fraction"] == f)][metric] * 100
                cells.append(f"{v.mean():.1f} ± {v.std():.1f}" if len(v) > 1 else f"{v.mean():.1f}")
            lines.append(f"| {LABELS[arm]} | {metric} | " + " | ".join(cells) + " |")
    lines += ["", "Paired differences per fold, points (mean; per fold in fold order):", ""]
    lines += ["| pair | metric | " + " | ".join(f"{f * 100:g} %" for f in fractions) + " |"]
    lines += ["|" + "---|" * (len(fractions) + 2)]
    for hi, lo in [p for p in PAIRS if p[0] in arms and p[1] in arms]:
        for metric in METRICS:
            cells = []
            for f in fractions:
                d = diffs[(diffs["pair"] == f"{hi} - {lo}") & (diffs["metric"] == metric) & (diffs["fraction"] == f)]
                d = d.sort_values("fold")["diff"]
                wins = f"{(d > 0).sum()}/{len(d)}"
                cells.append(f"{d.mean():+.1f} ({', '.join(f'{x:+.1f}' for x in d)}; {wins})")
            lines.append(f"| {hi} - {lo} | {metric} | " + " | ".join(cells) + " |")
    secs = results.groupby(["fraction"])["seconds"].agg(["mean", "sum"])
    lines += [
        "",
        "Fine-tuning seconds per cell (mean) by fraction: "
        + ", ".join(f"{f * 100:g} %: {secs.loc[f, 'mean']:.0f}" for f in fractions),
    ]
    lines += [f"Pretraining seconds: {json.dumps({k: round(v) if v == v else None for k, v in pre_seconds.items()})}"]
    lines += [f"Samples per ingested dataset: {json.dumps(counts)}"]
    for name in PRETRAIN_SETS:
        idx = _index(work / "shards" / name) or {}
        lines += [f"Pretraining set {name}: {idx.get('total', '?')} samples"]
    lines += [f"ImageNet init (a): {refusal}"]
    lines += [f"Settings: {json.dumps({k: str(v) for k, v in vars(args).items()})}"]
    lines += [f"Wall: {time.perf_counter() - t_start:.0f} s", ""]
    (work / f"summary{tag}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
