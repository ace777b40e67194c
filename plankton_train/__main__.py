"""``python -m plankton_train`` runs the CLI."""

from plankton_train.cli.main import main

main()
