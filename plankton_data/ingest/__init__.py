"""Ingest: a published dataset (or a user's own images) -> ``shards/<name>/`` + ``manifests/<name>.parquet``.

:mod:`~plankton_data.ingest.sources` reads archives and folders, :mod:`~plankton_data.ingest.adapters` turn a
published layout into records (the registry of datasets), :mod:`~plankton_data.ingest.preprocess` and the pure
image ops of :mod:`~plankton_data.ingest.ops` make samples, and :mod:`~plankton_data.ingest.run` drives it all.
"""

from plankton_data.ingest.run import IngestReport, ingest

__all__ = ["IngestReport", "ingest"]
