"""Statistics of a sweep comparison (SPEC "Statistics of a comparison"): pure functions of numbers,
no arms and no files.

A cell's results are a matrix ``[seeds, units]``: units are eval problems (0/1 correct) or training
steps (the step's mean reward). Across seeds the bootstrap resamples both axes: ``S`` seeds with
replacement, then ``N`` units with replacement, and takes the mean over the resampled grid; the
interval is the 2.5 and 97.5 percentiles of :data:`N_RESAMPLES` such means, drawn from
``numpy.random.default_rng(BOOTSTRAP_SEED)``. A paired comparison resamples the difference matrix
``d = x - b`` (cell minus baseline, same seed, same unit), so problem difficulty cancels.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
N_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
_CHUNK = 256  # resamples per vectorized block: [chunk, S, N] floats at a time


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


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion p = k / n:
    (p + z^2 / 2n +- z sqrt(p (1 - p) / n + z^2 / 4n^2)) / (1 + z^2 / n)."""
    if n <= 0:
        raise ValueError(f"n = {n}: a proportion needs at least one trial")
    p = successes / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def bootstrap_draws(n_seeds: int, n_units: int, n_resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The resampled indices: seeds ``[B, S]`` then units ``[B, N]``, with replacement, in this order
    from ``default_rng(seed)`` (a slow reference can replay them)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_seeds, (n_resamples, n_seeds)), rng.integers(0, n_units, (n_resamples, n_units))


def bootstrap_means(values, n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """``[B]`` means of ``values`` ``[S, N]`` over grids resampled by :func:`bootstrap_draws`:
    mean_b = (1 / S N) sum_i sum_j values[s_bi, u_bj]."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or 0 in values.shape:
        raise ValueError(f"values must be a non-empty [seeds, units] matrix, got shape {values.shape}")
    seeds, units = bootstrap_draws(*values.shape, n_resamples, seed)
    out = np.empty(n_resamples)
    for lo in range(0, n_resamples, _CHUNK):
        s, u = seeds[lo : lo + _CHUNK], units[lo : lo + _CHUNK]
        out[lo : lo + _CHUNK] = values[s[:, :, None], u[:, None, :]].mean(axis=(1, 2))
    return out


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` interval of ``samples`` (numpy's linear percentile)."""
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return float(lo), float(hi)


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float
    high: float
    n_seeds: int
    n_units: int


def bootstrap_interval(values, n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> Estimate:
    """The mean of ``values`` ``[S, N]`` and its bootstrap 95% interval over seeds and units."""
    values = np.asarray(values, dtype=float)
    low, high = percentile_interval(bootstrap_means(values, n_resamples, seed))
    return Estimate(float(values.mean()), low, high, *values.shape)


def mcnemar_exact(x, b) -> float:
    """Two-sided exact McNemar test of paired 0/1 outcomes: with n01 = #(x=1, b=0), n10 = #(x=0, b=1)
    and n = n01 + n10, p = min(1, 2 P(Binomial(n, 1/2) <= min(n01, n10))); 1 when n = 0."""
    x, b = np.asarray(x).astype(bool).ravel(), np.asarray(b).astype(bool).ravel()
    n01, n10 = int(np.sum(x & ~b)), int(np.sum(~x & b))
    n = n01 + n10
    if n == 0:
        return 1.0
    tail = Fraction(sum(math.comb(n, i) for i in range(min(n01, n10) + 1)), 2**n)
    return float(min(Fraction(1), 2 * tail))


@dataclass(frozen=True)
class PairedDifference:
    diff: float  # mean of x - b
    low: float
    high: float
    p_value: float
    test: str  # how p_value was computed
    n_seeds: int
    n_units: int

    @property
    def shown(self) -> bool:
        """False when the 95% interval holds 0: "no difference shown"."""
        return not (self.low <= 0 <= self.high)


def paired_difference(
    x, b, binary: bool, n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> PairedDifference:
    """Mean paired difference of ``x`` and ``b`` (both ``[S, N]``, same seed and unit at each entry),
    its paired bootstrap 95% interval, and a two-sided p-value: McNemar's exact test for one seed of
    0/1 outcomes (``binary``), else the bootstrap's, p = (1 + #{|m_b - m| >= |m|}) / (B + 1) with
    m the observed mean difference and m_b the resampled ones (the null shifted to 0)."""
    x, b = np.asarray(x, dtype=float), np.asarray(b, dtype=float)
    if x.shape != b.shape:
        raise ValueError(f"paired results must have the same shape, got {x.shape} and {b.shape}")
    d = x - b
    means = bootstrap_means(d, n_resamples, seed)
    low, high = percentile_interval(means)
    m = float(d.mean())
    if binary and d.shape[0] == 1:
        p, test = mcnemar_exact(x, b), "McNemar exact"
    else:
        extreme = int(np.sum(np.abs(means - m) >= abs(m) - 1e-12))
        p, test = (1 + extreme) / (n_resamples + 1), "paired bootstrap"
    return PairedDifference(m, low, high, min(1.0, p), test, *d.shape)


def last_quarter(values: list) -> list:
    """The last ceil(n / 4) of ``values`` (at least one when there are any)."""
    return values[len(values) - math.ceil(len(values) / 4) :] if values else []
