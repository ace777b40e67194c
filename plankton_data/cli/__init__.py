"""The ``plankton-data`` command line: thin Typer commands over the library (:mod:`.main` is the entry point)."""
