"""Backports for the oldest Python the toolkit supports (3.10)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def batched(items: Iterable[T], n: int) -> Iterator[list[T]]:
    """Successive lists of ``n`` items (the last may be shorter): :func:`itertools.batched` of Python 3.12."""
    it = iter(items)
    while batch := list(itertools.islice(it, n)):
        yield batch
