"""The ``plankton-train`` command line (:mod:`plankton_train.cli.main`); nothing here imports torch."""
