"""Errors that the CLIs turn into a one-line message and a non-zero exit (never a traceback).

:class:`PlanktonError` is the one base both packages share, so each CLI handles every error of the toolkit
in one place; ``plankton_train.errors`` derives its own from it.
"""

from __future__ import annotations


class PlanktonError(Exception):
    """A problem with the user's input or environment, explained in one line (both packages)."""


class PlanktonDataError(PlanktonError):
    """Base class of ``plankton_data``'s errors."""


class UnknownDataset(PlanktonDataError):
    """A dataset id that is not in the registry."""


class MissingRawData(PlanktonDataError):
    """``--raw`` does not exist, or does not hold the layout the dataset is published in."""


class CorruptArchive(PlanktonDataError):
    """An archive that cannot be opened (truncated or not a zip)."""


class SchemaError(PlanktonDataError):
    """A manifest or shard index that does not match the schema this version writes."""


class OutputLocked(PlanktonDataError):
    """Another process is writing the same output (see :func:`plankton_data.format.lock.output_lock`)."""


class MemberTooLarge(PlanktonDataError):
    """An archive member or file over the size limit of an ingest run (``--max-member-mb``)."""
