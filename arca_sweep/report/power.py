"""Power of a sweep comparison: the smallest difference the report's rule detects with this sweep's
seeds and problems, and how many seeds (or problems) a given difference would need. Pure functions
of numbers, no numpy.

The paired difference matrix ``d = x - b`` ``[S seeds, N units]`` is modelled as two-way random
effects, d[s, j] = mu + a_s + c_j + e_sj, with variances s2_seed, s2_prob and s2_res, estimated by
the ANOVA method of moments (:func:`variance_components`). The report's estimate is the grid mean
dbar; its variance across sweeps is

    V_true(S, N) = s2_seed / S + s2_prob / N + s2_res / (S N).

The report's interval is the two-way percentile bootstrap of :func:`arca_sweep.report.stats.
paired_difference`. Writing d = dbar + r_s + c_j + e_sj (row, column and interaction parts of the
sample, each summing to 0), its resampled mean has variance exactly v_r / S + v_c / N + v_e / (S N)
with v_r = mean r_s^2, v_c = mean c_j^2, v_e = mean e_sj^2; in expectation under the model

    V_boot(S, N) = (S - 1) / S^2 (s2_seed + s2_res / N) + (N - 1) / N^2 (s2_prob + s2_res / S)
                   + (S - 1)(N - 1) / (S^2 N^2) s2_res.

It misses a factor (S - 1) / S of the seed term (with few seeds the interval is too narrow when
seeds vary) and counts the residual term up to three times (too wide when they do not). With one
seed it is (N - 1) / N^2 (s2_prob + s2_res), the units-only bootstrap the report also uses there.

The rule says "shown" when the 95% interval excludes 0. In the normal approximation, with the
interval's half-width at its expectation z sqrt(V_boot), z = Phi^-1(1 - alpha / 2), a true
difference delta is shown with probability

    P(delta) = Phi((|delta| - z sqrt(V_boot)) / sqrt(V_true)) + Phi((-|delta| - z sqrt(V_boot)) / sqrt(V_true)).

The minimum detectable effect (MDE) at power pi is the delta > 0 with P(delta) = pi, found by
bisection (close to z sqrt(V_boot) + Phi^-1(pi) sqrt(V_true)). The approximation ignores that with few
seeds the interval's width is itself random (its seed part has S - 1 degrees of freedom) and skewed,
which costs the rule power: in simulated binary evals on 300 problems the rule showed the stated 80%
MDE in 78-79% of sweeps at 2 to 5 seeds, 80% at 10 (and 76-77% with 3 seeds, 200 problems and little
seed variance); with one seed in 79-80%. It falls with S (from S = 2) and with
N (from N = 2) towards floors set by the other axis: s2_prob / N as S grows, s2_seed / S as N grows.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

_NORMAL = statistics.NormalDist()
MAX_SEEDS = 10_000
MAX_UNITS = 10_000_000


@dataclass(frozen=True)
class Components:
    """Variances of the two-way random-effects model of d: seed, problem (unit) and residual."""

    s2_seed: float
    s2_prob: float
    s2_res: float


@dataclass(frozen=True)
class Power:
    components: Components
    n_seeds: int
    n_units: int
    mde: float  # smallest |difference| shown with probability `power` at (n_seeds, n_units)
    delta: float
    seeds_needed: int | None  # at n_units, for delta; None: unreachable or seed variance unknown
    units_needed: int | None  # at n_seeds, for delta; None: unreachable or unit variance unknown
    seed_variance_known: bool  # False with one seed: s2_seed is taken as 0, so the MDE is optimistic
    power: float
    alpha: float


def _matrix(d) -> list[list[float]]:
    rows = [[float(v) for v in row] for row in d]
    if not rows or not rows[0] or any(len(row) != len(rows[0]) for row in rows):
        raise ValueError("d must be a non-empty rectangular [seeds, units] matrix")
    if not all(math.isfinite(v) for row in rows for v in row):
        raise ValueError("d must hold finite numbers")
    return rows


def variance_components(d) -> Components:
    """ANOVA (method of moments) estimates from d ``[S, N]`` with row means dbar_s, column means
    dbar_j and grand mean dbar:
    MS_seed = N sum_s (dbar_s - dbar)^2 / (S - 1), MS_prob = S sum_j (dbar_j - dbar)^2 / (N - 1),
    MS_res = sum_sj (d_sj - dbar_s - dbar_j + dbar)^2 / ((S - 1)(N - 1));
    s2_res = MS_res, s2_seed = max(0, (MS_seed - MS_res) / N), s2_prob = max(0, (MS_prob - MS_res) / S).
    One seed: s2_seed = s2_res = 0 and s2_prob = the sample variance over units. One unit: likewise
    with seeds and units swapped. One entry: all 0."""
    rows = _matrix(d)
    n_seeds, n_units = len(rows), len(rows[0])
    if n_seeds == 1 or n_units == 1:
        values = [v for row in rows for v in row]
        var = statistics.variance(values) if len(values) > 1 else 0.0
        return Components(var if n_units == 1 and n_seeds > 1 else 0.0, var if n_seeds == 1 else 0.0, 0.0)
    row_means = [statistics.fmean(row) for row in rows]
    col_means = [statistics.fmean(col) for col in zip(*rows, strict=True)]
    grand = statistics.fmean(row_means)
    ms_seed = n_units * sum((m - grand) ** 2 for m in row_means) / (n_seeds - 1)
    ms_prob = n_seeds * sum((m - grand) ** 2 for m in col_means) / (n_units - 1)
    ss_res = sum(
        (v - rm - cm + grand) ** 2
        for row, rm in zip(rows, row_means, strict=True)
        for v, cm in zip(row, col_means, strict=True)
    )
    ms_res = ss_res / ((n_seeds - 1) * (n_units - 1))
    return Components(max(0.0, (ms_seed - ms_res) / n_units), max(0.0, (ms_prob - ms_res) / n_seeds), ms_res)


def true_variance(c: Components, n_seeds: int, n_units: int) -> float:
    """V_true = s2_seed / S + s2_prob / N + s2_res / (S N): the variance of the grid mean across sweeps."""
    return c.s2_seed / n_seeds + c.s2_prob / n_units + c.s2_res / (n_seeds * n_units)


def bootstrap_variance(c: Components, n_seeds: int, n_units: int) -> float:
    """V_boot = (S-1)/S^2 (s2_seed + s2_res/N) + (N-1)/N^2 (s2_prob + s2_res/S) + (S-1)(N-1)/(S^2 N^2) s2_res:
    the expected variance of the report's two-way bootstrap mean."""
    s, n = n_seeds, n_units
    return (
        (s - 1) / s**2 * (c.s2_seed + c.s2_res / n)
        + (n - 1) / n**2 * (c.s2_prob + c.s2_res / s)
        + (s - 1) * (n - 1) / (s * n) ** 2 * c.s2_res
    )


def detection_probability(
    delta: float, c: Components, n_seeds: int, n_units: int, alpha: float = 0.05
) -> float:
    """P(delta) = Phi((|delta| - z sqrt(V_boot)) / sqrt(V_true)) + Phi((-|delta| - z sqrt(V_boot)) / sqrt(V_true)),
    z = Phi^-1(1 - alpha / 2): the chance the report's interval excludes 0 at a true difference delta
    (normal approximation, interval half-width at its expectation). With no variance: 1 if delta != 0."""
    spread = math.sqrt(true_variance(c, n_seeds, n_units))
    if spread == 0:
        return 1.0 if delta != 0 else 0.0
    threshold = _NORMAL.inv_cdf(1 - alpha / 2) * math.sqrt(bootstrap_variance(c, n_seeds, n_units))
    return _NORMAL.cdf((abs(delta) - threshold) / spread) + _NORMAL.cdf((-abs(delta) - threshold) / spread)


def minimum_detectable(
    c: Components, n_seeds: int, n_units: int, power: float = 0.8, alpha: float = 0.05
) -> float:
    """The delta > 0 with P(delta) = power, by bisection (P rises with |delta|) between 0 and
    z sqrt(V_boot) + Phi^-1(power) sqrt(V_true), where P >= power already; 0 when P(0) >= power."""
    if not 0 < power < 1:
        raise ValueError(f"power = {power}: must lie in (0, 1)")
    if detection_probability(0.0, c, n_seeds, n_units, alpha) >= power:
        return 0.0
    z = _NORMAL.inv_cdf(1 - alpha / 2)
    lo = 0.0
    hi = z * math.sqrt(bootstrap_variance(c, n_seeds, n_units)) + max(
        0.0, _NORMAL.inv_cdf(power)
    ) * math.sqrt(true_variance(c, n_seeds, n_units))
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if detection_probability(mid, c, n_seeds, n_units, alpha) < power else (lo, mid)
    return hi


def _smallest(fits, start: int, cap: int) -> int | None:
    """The smallest n in [start, cap] with fits(n), for fits monotone (False then True): doubling,
    then bisection; None if fits(cap) is False."""
    if not fits(cap):
        return None
    lo, hi = start - 1, start  # invariant: fits(hi) or hi unchecked; lo < start or not fits(lo)
    while hi < cap and not fits(hi):
        lo, hi = hi, min(cap, 2 * hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def seeds_needed(
    c: Components, delta: float, n_units: int, power: float = 0.8, alpha: float = 0.05, cap: int = MAX_SEEDS
) -> int | None:
    """The smallest S >= 2 with MDE(S, n_units) <= |delta|; None if delta = 0 or not by ``cap`` seeds
    (the MDE's floor as S grows is set by s2_prob / N: more problems are needed)."""
    if delta == 0:
        return None
    return _smallest(lambda s: minimum_detectable(c, s, n_units, power, alpha) <= abs(delta), 2, cap)


def units_needed(
    c: Components, delta: float, n_seeds: int, power: float = 0.8, alpha: float = 0.05, cap: int = MAX_UNITS
) -> int | None:
    """The smallest N >= 2 with MDE(n_seeds, N) <= |delta|; None if delta = 0 or not by ``cap`` units
    (the MDE's floor as N grows is set by s2_seed / S: more seeds are needed)."""
    if delta == 0:
        return None
    return _smallest(lambda n: minimum_detectable(c, n_seeds, n, power, alpha) <= abs(delta), 2, cap)


def power_analysis(d, delta: float = 0.02, power: float = 0.8, alpha: float = 0.05) -> Power:
    """The power section of one comparison: the components of d ``[S, N]``, the MDE at (S, N), and the
    seeds (at N units) and units (at S seeds) that ``delta`` would need. With one seed the seed
    variance is unknown (taken as 0: the MDE is optimistic, seeds_needed is None); with one unit
    likewise the unit variance (units_needed is None)."""
    rows = _matrix(d)
    n_seeds, n_units = len(rows), len(rows[0])
    c = variance_components(rows)
    return Power(
        components=c,
        n_seeds=n_seeds,
        n_units=n_units,
        mde=minimum_detectable(c, n_seeds, n_units, power, alpha),
        delta=delta,
        seeds_needed=seeds_needed(c, delta, n_units, power, alpha) if n_seeds > 1 else None,
        units_needed=units_needed(c, delta, n_seeds, power, alpha) if n_units > 1 else None,
        seed_variance_known=n_seeds > 1,
        power=power,
        alpha=alpha,
    )
