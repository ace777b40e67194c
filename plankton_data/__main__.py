"""``python -m plankton_data`` runs the CLI."""

from plankton_data.cli.main import main

main()
