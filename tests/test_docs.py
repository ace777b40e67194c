"""Docs stay in step with the code: every manifest column and every CLI command is documented."""

from pathlib import Path

import pytest

from plankton_data.format.manifest import COLUMNS, REJECT_COLUMNS, SHARDSET_COLUMNS
from plankton_data.ingest.adapters import DATASET_IDS

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.parametrize("column", [c[0] for c in COLUMNS + SHARDSET_COLUMNS + REJECT_COLUMNS])
def test_manifest_column_is_documented(column):
    assert f"| `{column}` |" in (DOCS / "manifest.md").read_text()


@pytest.mark.parametrize("dataset", DATASET_IDS)
def test_dataset_is_documented(dataset):
    assert f"`{dataset}`" in (DOCS / "datasets.md").read_text()


def test_every_cli_command_is_in_the_cli_reference():
    from plankton_data.cli.main import app

    text = (DOCS / "cli.md").read_text()
    for command in app.registered_commands:
        name = command.name or command.callback.__name__
        assert f"plankton-data {name}" in text, name


def test_generated_docs_are_current():
    import sys

    sys.path.insert(0, str(DOCS.parent / "scripts"))
    import gen_docs

    assert (DOCS / "manifest.md").read_text() == gen_docs.manifest_md(), "run python scripts/gen_docs.py"
    assert (DOCS / "cli.md").read_text() == gen_docs.cli_md(), "run python scripts/gen_docs.py"
