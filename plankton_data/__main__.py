"""``python -m plankton_data`` runs the CLI."""

from plankton_data.cli import main

main()
