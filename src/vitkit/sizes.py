"""Image sizes as (height, width) pairs: the one place an int-or-pair size is normalized."""

from __future__ import annotations

from collections.abc import Sequence


def hw(size: int | Sequence[int]) -> tuple[int, int]:
    """(H, W) of a size given as one side or as a pair."""
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)
