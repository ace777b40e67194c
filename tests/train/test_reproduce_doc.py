"""docs/reproduce.md stays runnable: its experiment config parses, and every command it names exists."""

from __future__ import annotations

import re
from pathlib import Path

from plankton_train.protocol.experiment import load_experiment

DOC = Path(__file__).resolve().parents[2] / "docs" / "reproduce.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_paper_config_parses_into_the_three_initialisations(tmp_path):
    (toml,) = _blocks("toml")
    config = tmp_path / "configs" / "paper.toml"
    config.parent.mkdir()
    config.write_text(toml)
    exp = load_experiment(config)
    assert {name: spec.init for name, spec in exp.models.items()} == {
        "imagenet": "imagenet",
        "no_daplankton": "hf-hub:Jookare/no_daplankton_vit_large_patch16_224.mae",
        "plankton": "hf-hub:Jookare/plankton_vit_large_patch16_224.mae",
    }
    assert all(spec.arch == "vit_large_patch16_224" and spec.drop_path == 0.2 for spec in exp.models.values())
    assert exp.folds == (0, 1, 2, 3, 4) and exp.fractions == (0.01, 0.05, 0.1, 1.0) and not exp.groups
    assert exp.manifest == tmp_path / "manifests" / "daplankton.parquet"
    assert exp.recipe.epochs == 50 and exp.recipe.lr == 2e-3  # the paper's recipe is the default


def test_every_command_in_the_doc_is_a_real_subcommand():
    from plankton_data.cli.main import app as data_app
    from plankton_train.cli.main import app as train_app

    known = {
        "plankton-data": {c.name or c.callback.__name__ for c in data_app.registered_commands},
        "plankton-train": {c.name or c.callback.__name__ for c in train_app.registered_commands},
    }
    used = re.findall(r"(plankton-(?:data|train)) ([a-z]+)", "\n".join(_blocks("bash")))
    assert len(used) >= 10
    for cli, command in used:
        assert command in known[cli], f"{cli} {command}"
