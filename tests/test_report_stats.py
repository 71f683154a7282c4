"""The report's statistics (``arca_sweep.report.stats``) against slow, obviously-correct references and
against synthetic results whose true values are known (arms at 60% and 70% on 500 problems)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from arca_sweep.report.stats import (
    Z95,
    bootstrap_interval,
    bootstrap_means,
    last_quarter,
    mcnemar_exact,
    paired_difference,
    wilson_interval,
)

# ------------------------------------------------------------------------------------------------
# Slow references
# ------------------------------------------------------------------------------------------------


def wilson_by_search(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson interval from its definition: every p with |k/n - p| <= z sqrt(p (1 - p) / n),
    its end points found by bisection on each side of k/n."""
    phat = k / n

    def inside(p: float) -> bool:
        return (phat - p) ** 2 <= z * z * p * (1 - p) / n

    def edge(lo: float, hi: float) -> float:  # inside(lo) != inside(hi)
        for _ in range(100):
            mid = (lo + hi) / 2
            if inside(mid) == inside(lo):
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    low = 0.0 if inside(0.0) else edge(0.0, phat)
    high = 1.0 if inside(1.0) else edge(phat, 1.0)
    return low, high


def binomial_test_two_sided(k: int, n: int) -> float:
    """Two-sided exact binomial test of k successes in n at p = 1/2: the total probability of every
    outcome no more likely than the observed one (scipy.stats.binomtest's definition)."""
    if n == 0:
        return 1.0
    probs = [math.comb(n, i) / 2**n for i in range(n + 1)]
    return min(1.0, sum(q for q in probs if q <= probs[k] * (1 + 1e-9)))


def mcnemar_by_loops(x, b) -> float:
    n01 = n10 = 0
    for xi, bi in zip(np.ravel(x), np.ravel(b), strict=True):
        if xi and not bi:
            n01 += 1
        elif bi and not xi:
            n10 += 1
    return binomial_test_two_sided(n01, n01 + n10)


def bootstrap_means_by_loops(values, n_resamples: int, seed: int) -> list[float]:
    """The documented resampling, replayed draw by draw: seeds [B, S] then units [B, N] from
    default_rng(seed); each mean an explicit double loop over the resampled grid."""
    values = np.asarray(values, dtype=float)
    n_seeds, n_units = values.shape
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(0, n_seeds, (n_resamples, n_seeds))
    unit_draws = rng.integers(0, n_units, (n_resamples, n_units))
    out = []
    for b in range(n_resamples):
        total = 0.0
        for s in seed_draws[b]:
            for u in unit_draws[b]:
                total += values[s, u]
        out.append(total / (n_seeds * n_units))
    return out


def percentile(samples: list[float], q: float) -> float:
    """numpy's default (linear) percentile, by hand."""
    xs = sorted(samples)
    pos = q / 100 * (len(xs) - 1)
    lo = math.floor(pos)
    return xs[lo] + (pos - lo) * (xs[min(lo + 1, len(xs) - 1)] - xs[lo])


def exact_results(n: int, n_correct: int, rng) -> np.ndarray:
    """0/1 results of an arm with exactly ``n_correct`` of ``n`` right, in a random order."""
    out = np.zeros(n)
    out[rng.choice(n, n_correct, replace=False)] = 1
    return out


# ------------------------------------------------------------------------------------------------
# Against the references
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k,n", [(0, 10), (1, 10), (7, 10), (10, 10), (300, 500), (350, 500), (3, 16)])
def test_wilson_matches_its_definition(k, n):
    assert wilson_interval(k, n) == pytest.approx(wilson_by_search(k, n), abs=1e-9)


def test_wilson_covers_the_true_proportion():
    rng = np.random.default_rng(7)
    n, p, trials = 200, 0.6, 2000
    hits = 0
    for k in rng.binomial(n, p, trials):
        lo, hi = wilson_interval(int(k), n)
        hits += lo <= p <= hi
    assert 0.93 <= hits / trials <= 0.97


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mcnemar_matches_the_binomial_test(seed):
    rng = np.random.default_rng(seed)
    for n in (0, 1, 5, 40, 500):
        x, b = rng.integers(0, 2, n), rng.integers(0, 2, n)
        if seed == 2:
            b = x.copy()  # no discordant pair
        assert mcnemar_exact(x, b) == pytest.approx(mcnemar_by_loops(x, b), rel=1e-9)


@pytest.mark.parametrize("shape", [(1, 30), (2, 25), (3, 11)])
def test_bootstrap_matches_the_loop_reference(shape):
    values = np.random.default_rng(3).integers(0, 2, shape).astype(float)
    fast = bootstrap_means(values, n_resamples=300, seed=5)
    slow = bootstrap_means_by_loops(values, n_resamples=300, seed=5)
    assert np.allclose(fast, slow, rtol=0, atol=1e-12)
    e = bootstrap_interval(values, n_resamples=300, seed=5)
    assert (e.low, e.high) == pytest.approx((percentile(slow, 2.5), percentile(slow, 97.5)), abs=1e-12)
    assert e.mean == pytest.approx(values.mean()) and (e.n_seeds, e.n_units) == shape


# ------------------------------------------------------------------------------------------------
# Known truth: 60% against 70% on 500 problems
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_seeds", [1, 3])
def test_paired_difference_of_60_and_70_percent(n_seeds):
    rng = np.random.default_rng(11)
    base = np.stack([exact_results(500, 300, rng) for _ in range(n_seeds)])
    cell = np.stack([exact_results(500, 350, rng) for _ in range(n_seeds)])
    d = paired_difference(cell, base, binary=True)
    assert d.diff == pytest.approx(0.10)
    # the paired bootstrap interval is the normal one to Monte Carlo error: resampling S seeds with
    # replacement weights seed s by c_s / S, c ~ Multinomial(S, 1/S), and E[sum (c_s / S)^2] = (2S - 1) / S^2,
    # so var = (2S - 1) / S^2 * sigma^2 / N (sigma^2: a seed's variance of d over problems; each seed's mean is 0.10)
    sigma2 = (cell - base).var(axis=1).mean()
    half = Z95 * math.sqrt((2 * n_seeds - 1) / n_seeds**2 * sigma2 / 500)
    assert d.low == pytest.approx(0.10 - half, abs=0.01) and d.high == pytest.approx(0.10 + half, abs=0.01)
    assert d.shown and d.low > 0
    slow = bootstrap_means_by_loops(cell - base, 200, 0) if n_seeds == 1 else None
    if n_seeds == 1:
        assert d.test == "McNemar exact" and d.p_value == pytest.approx(mcnemar_by_loops(cell, base))
        assert np.allclose(bootstrap_means(cell - base, 200, 0), slow)
    else:
        assert d.test == "paired bootstrap" and d.p_value < 0.001
    # each arm's own interval holds its true accuracy
    for values, truth in ((base, 0.6), (cell, 0.7)):
        e = bootstrap_interval(values)
        assert e.low < truth < e.high and e.mean == pytest.approx(truth)
        for row in values:
            lo, hi = wilson_interval(int(row.sum()), row.size)
            assert lo < truth < hi


def test_identical_arms_show_no_difference():
    values = np.random.default_rng(4).integers(0, 2, (2, 100)).astype(float)
    d = paired_difference(values, values.copy(), binary=True)
    assert d.diff == 0 and d.low == d.high == 0 and not d.shown and d.p_value == 1.0
    one = paired_difference(values[:1], values[:1], binary=True)
    assert one.test == "McNemar exact" and one.p_value == 1.0 and not one.shown


@pytest.mark.parametrize("n_seeds,lowest,highest", [(1, 0.90, 0.985), (2, 0.93, 1.0)])
def test_paired_interval_coverage(n_seeds, lowest, highest):
    """Arms at 60% and 70% drawn at random (so the true difference is 0.10): the paired bootstrap
    interval holds it in about 95% of 200 replications with one seed; with two seeds (resampled,
    though they do not differ here) it is conservative."""
    rng = np.random.default_rng(12)
    hits = 0
    for _ in range(200):
        base = (rng.random((n_seeds, 150)) < 0.6).astype(float)
        cell = (rng.random((n_seeds, 150)) < 0.7).astype(float)
        d = paired_difference(cell, base, binary=True, n_resamples=400, seed=int(rng.integers(1 << 30)))
        hits += d.low <= 0.10 <= d.high
    assert lowest <= hits / 200 <= highest


def test_bootstrap_p_value_is_calibrated_under_the_null():
    """With no true difference the p-value is about uniform: p < 0.05 in about 5% of replications."""
    rng = np.random.default_rng(13)
    small = 0
    for _ in range(200):
        x = rng.random((2, 60))
        b = rng.random((2, 60))
        small += (
            paired_difference(x, b, binary=False, n_resamples=400, seed=int(rng.integers(1 << 30))).p_value
            < 0.05
        )
    assert small / 200 <= 0.08


def test_paired_difference_rejects_unpaired_shapes():
    with pytest.raises(ValueError, match="same shape"):
        paired_difference(np.zeros((1, 3)), np.zeros((1, 4)), binary=True)


def test_last_quarter():
    assert last_quarter(list(range(1, 61))) == list(range(46, 61))
    assert last_quarter([1, 2, 3]) == [3] and last_quarter([5]) == [5] and last_quarter([]) == []
    assert last_quarter(list(range(5))) == [3, 4]
