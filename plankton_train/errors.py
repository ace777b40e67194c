"""Every error ``plankton_train`` raises for a problem the user can fix, explained in one line.

All derive from :class:`PlanktonTrainError`, itself a :class:`~plankton_data.errors.PlanktonError` (the base the
two packages share), so ``plankton-train`` turns any of them, and any ``plankton_data`` error met on the way
(a bad manifest or shard index), into one red line and exit status 1. This module imports nothing heavy: every
layer of the package may use it.
"""

from __future__ import annotations

from plankton_data.errors import PlanktonError


class PlanktonTrainError(PlanktonError):
    """Base class of ``plankton_train``'s errors."""


class StreamError(PlanktonTrainError):
    """A shard folder the loader cannot use, or a loader state that does not fit the stream."""


class CorruptSample(PlanktonTrainError):
    """Bytes that cannot be read or decoded into an image."""


class LabelledDataError(PlanktonTrainError):
    """Keys missing from the manifest, an empty set, an unreadable image..."""


class CheckpointError(PlanktonTrainError):
    """A checkpoint or encoder folder that is missing, foreign or does not fit the requested model."""


class ModelInitError(PlanktonTrainError):
    """An initialisation that cannot be resolved or loaded."""


class PretrainError(PlanktonTrainError):
    """A configuration or run folder that cannot be trained as asked (explained in one line)."""


class FinetuneError(PlanktonTrainError):
    """A fine-tuning request that cannot run (bad cell, missing data, unknown device...)."""


class SplitError(PlanktonTrainError):
    """A splits request that cannot be met (no labelled rows, unknown group, bad fraction...)."""


class ExperimentError(PlanktonTrainError):
    """A config file that cannot be used."""


class ReportError(PlanktonTrainError):
    """Missing or malformed results."""


class PredictError(PlanktonTrainError):
    """Bad input or output path, or nothing to classify."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (torch's state-dict errors name the keys on later lines)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
