"""Test helpers for dataset sources."""

from __future__ import annotations

import copy

from mmrerank.datasets.sources import ImageTextSource


def other_split(source: ImageTextSource, split: str) -> ImageTextSource:
    """The same source object with another split, every other setting kept (what a source built for one split and
    then asked for another does)."""
    other = copy.copy(source)
    ImageTextSource.__init__(other, split)
    return other
