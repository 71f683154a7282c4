"""Statistics of a sweep comparison: pure functions of numbers (no arms, no files)."""

from __future__ import annotations

import statistics


def as_number(value) -> float | None:
    """A finite float, or None (a null, a missing key, a string)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None


def mean(values) -> float | None:
    """Mean of the non-null values; None if there are none."""
    values = [v for v in (as_number(v) for v in values) if v is not None]
    return statistics.fmean(values) if values else None


def mean_std(values) -> tuple[float | None, float | None, int]:
    """Mean, sample standard deviation (None with fewer than 2 values) and count of the non-null values."""
    values = [v for v in (as_number(v) for v in values) if v is not None]
    if not values:
        return None, None, 0
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values)
