"""Errors that the CLI turns into a one-line message and a non-zero exit (never a traceback)."""

from __future__ import annotations


class PlanktonDataError(Exception):
    """Base class: a problem with the user's input or environment, explained in one line."""


class UnknownDataset(PlanktonDataError):
    """A dataset id that is not in the registry."""


class MissingRawData(PlanktonDataError):
    """``--raw`` does not exist, or does not hold the layout the dataset is published in."""


class CorruptArchive(PlanktonDataError):
    """An archive that cannot be opened (truncated or not a zip)."""


class SchemaError(PlanktonDataError):
    """A manifest or shard index that does not match the schema this version writes."""
