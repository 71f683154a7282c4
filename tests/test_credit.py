"""Credit signals, normalization and diagnostics against slow, loop-by-loop reference implementations."""

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arca_sweep import credit
from arca_sweep.credit import (
    REGIMES,
    SIGNALS,
    TokenStats,
    edge_mass,
    effective_token_ratio,
    fallback_rows,
    gini,
    masked_share,
    needed_stats,
    normalize,
    regimes,
    register_signal,
    salience,
    spearman,
    summarize_weights,
    top_mass,
)

FAST = settings(max_examples=50, deadline=None)
METHODS = ("mean", "softmax", "rank")
NAN = float("nan")

# ------------------------------------------------------------------------------------------------
# Reference implementations: one row (a list of its valid values) at a time, plain loops
# ------------------------------------------------------------------------------------------------


def ref_ranks(xs):
    return [sum(y < x for y in xs) + (sum(y == x for y in xs) + 1) / 2 for x in xs]


def ref_normalize(xs, method, temperature=1.0, mix=1.0, clip_max=None):
    n = len(xs)
    if n == 0:
        return []
    finite = all(math.isfinite(x) for x in xs)
    if method == "mean":
        total = sum(xs)
        w = [x / (total / n) for x in xs] if math.isfinite(total) and total > 0 else [1.0] * n
    elif not finite:
        w = [1.0] * n
    elif method == "softmax":
        top = max(xs)
        e = [math.exp((x - top) / temperature) for x in xs]
        w = [n * v / sum(e) for v in e]
    else:
        w = [r / ((n + 1) / 2) for r in ref_ranks(xs)]
    if mix != 1:
        w = [(1 - mix) + mix * v for v in w]
    if clip_max is not None:
        w = [min(v, clip_max) for v in w]
        mean = sum(w) / n
        w = [v / mean for v in w]
    return w


def ref_gini(ws):
    n, total = len(ws), sum(ws)
    if n == 0 or total == 0:
        return 0.0
    pairs = sum(abs(a - b) for a in ws for b in ws)
    return pairs / (2 * n * n * (total / n))


def ref_etr(ws):
    squares = sum(w * w for w in ws)
    return 1.0 if squares == 0 else sum(ws) ** 2 / (len(ws) * squares)


def ref_count(frac, n):
    return math.ceil(Fraction(str(frac)) * n)  # the decimal reading of frac: 0.05 * 60 = 3


def as_uniform_if_zero(ws):
    return [1.0] * len(ws) if sum(ws) == 0 else ws


def ref_top_mass(ws, frac):
    if not ws:
        return 0.0
    ws = as_uniform_if_zero(ws)
    return sum(sorted(ws, reverse=True)[: ref_count(frac, len(ws))]) / sum(ws)


def ref_edge_mass(ws, frac):
    if not ws:
        return 0.0, 0.0
    ws = as_uniform_if_zero(ws)
    k = ref_count(frac, len(ws))
    return sum(ws[:k]) / sum(ws), sum(ws[-k:]) / sum(ws)


def ref_share(ws, selected):
    if not ws:
        return 0.0
    ws = as_uniform_if_zero(ws)
    return sum(w for w, s in zip(ws, selected, strict=True) if s) / sum(ws)


def ref_spearman(xs, ys):
    n = len(xs)
    if n < 2:
        return math.nan
    rx, ry = ref_ranks(xs), ref_ranks(ys)
    mx, my = sum(rx) / n, sum(ry) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    return math.nan if vx == 0 or vy == 0 else cov / math.sqrt(vx * vy)


def rows_of(x, mask):
    """The valid values of each row as Python lists."""
    return [
        [float(v) for v, m in zip(row, mrow, strict=True) if m] for row, mrow in zip(x, mask, strict=True)
    ]


# ------------------------------------------------------------------------------------------------
# Batches
# ------------------------------------------------------------------------------------------------


def random_batch(seed, dtype, batch=12, width=60):
    """Ragged prefix masks (lengths 0, 1, width, 20 and random), NaN garbage at masked positions;
    rows of ties, a zero row and a one-hot row among exponential ones."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, width + 1, (batch,), generator=g)
    lengths[:4] = torch.tensor([0, 1, width, 20])
    mask = torch.arange(width)[None, :] < lengths[:, None]
    x = torch.empty(batch, width, dtype=torch.float64).exponential_(generator=g)
    x[4] = torch.randint(0, 4, (width,), generator=g)  # many ties
    x[5] = 0.0
    x[6] = 0.0
    x[6, 0] = 2.5  # one-hot
    x[7] = x[7] ** 4  # heavy tail
    x = torch.where(mask, x, torch.nan).to(dtype)
    return x, mask


def pad(rows, value=0.0):
    """A [B, T] tensor and mask from lists of valid values, padded with value."""
    width = max(len(r) for r in rows)
    x = torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.float64)
    mask = torch.tensor([[True] * len(r) + [False] * (width - len(r)) for r in rows])
    return x, mask


def close(got, want, atol=1e-5, rtol=1e-5):
    torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64), atol=atol, rtol=rtol)


weights_row = st.lists(st.floats(0.0, 100.0, width=32), min_size=1, max_size=16)
positive_row = weights_row.filter(lambda r: sum(r) > 0)

# ------------------------------------------------------------------------------------------------
# Diagnostics
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 1])
def test_diagnostics_match_loop_references(seed, dtype):
    w, mask = random_batch(seed, dtype)
    rows = rows_of(w, mask)
    selected = torch.rand(w.shape, generator=torch.Generator().manual_seed(seed)) < 0.3
    first, last = edge_mass(w, mask, frac=0.05)
    close(gini(w, mask), [ref_gini(r) for r in rows])
    close(effective_token_ratio(w, mask), [ref_etr(r) for r in rows])
    close(top_mass(w, mask, frac=0.05), [ref_top_mass(r, 0.05) for r in rows])
    close(top_mass(w, mask, frac=0.3), [ref_top_mass(r, 0.3) for r in rows])
    close(first, [ref_edge_mass(r, 0.05)[0] for r in rows])
    close(last, [ref_edge_mass(r, 0.05)[1] for r in rows])
    want_share = [
        ref_share(r, [bool(s) for s, m in zip(srow, mrow, strict=True) if m])
        for r, srow, mrow in zip(rows, selected, mask, strict=True)
    ]
    close(masked_share(w, mask, selected), want_share)
    for out in (gini(w, mask), effective_token_ratio(w, mask), first, masked_share(w, mask, selected)):
        assert out.dtype == torch.float32 and out.shape == (w.shape[0],)


def test_top_count_reads_frac_as_a_decimal():
    # in binary 0.07 * 100 = 7.000000000000001; the count is still 7 tokens, not 8
    w = torch.arange(100, 0, -1, dtype=torch.float32)[None]  # 100, 99, ..., 1; sum 5050
    mask = torch.ones_like(w, dtype=torch.bool)
    close(top_mass(w, mask, frac=0.07), [sum(range(94, 101)) / 5050])
    first, last = edge_mass(w, mask, frac=0.07)
    close(first, [sum(range(94, 101)) / 5050])
    close(last, [sum(range(1, 8)) / 5050])


@pytest.mark.parametrize("n", [1, 2, 7, 40])
def test_closed_forms_uniform_and_one_hot(n):
    uniform = torch.full((1, n), 0.7)
    one_hot = torch.zeros(1, n)
    one_hot[0, n // 2] = 3.0
    mask = torch.ones(1, n, dtype=torch.bool)
    close(gini(uniform, mask), [0.0])
    close(effective_token_ratio(uniform, mask), [1.0])
    close(gini(one_hot, mask), [(n - 1) / n])
    close(effective_token_ratio(one_hot, mask), [1 / n])
    close(top_mass(one_hot, mask), [1.0])


def test_two_level_case_by_hand():
    # w = 3, 3, 1, 1: pairs across levels differ by 2; there are 2 * 2 such ordered pairs each way,
    # so sum_i sum_j |w_i - w_j| = 16; T = 4, mean 2: G = 16 / (2 * 16 * 2) = 1/4.
    # ETR = 8^2 / (4 * (9 + 9 + 1 + 1)) = 64 / 80. Top quarter (1 token): 3/8. First/last quarter: 3/8, 1/8.
    w = torch.tensor([[3.0, 3.0, 1.0, 1.0, NAN], [1.0, 1.0, 1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    close(gini(w, mask), [0.25, 0.0])
    close(effective_token_ratio(w, mask), [0.8, 1.0])
    close(top_mass(w, mask, frac=0.25), [3 / 8, 0.0])
    first, last = edge_mass(w, mask, frac=0.25)
    close(first, [3 / 8, 0.0])
    close(last, [1 / 8, 0.0])


def test_zero_weight_rows_read_as_uniform():
    w = torch.zeros(1, 4)
    mask = torch.ones(1, 4, dtype=torch.bool)
    close(gini(w, mask), [0.0])
    close(effective_token_ratio(w, mask), [1.0])
    close(top_mass(w, mask, frac=0.5), [0.5])
    close(masked_share(w, mask, torch.tensor([[True, False, False, False]])), [0.25])


@FAST
@given(row=positive_row, scale=st.floats(1e-3, 1e3), data=st.data())
def test_gini_and_etr_invariant_to_scaling_permutation_and_padding(row, scale, data):
    w, mask = pad([row, [v * scale for v in row], data.draw(st.permutations(row))])
    w = torch.cat([w, torch.full((3, 3), 5.0, dtype=w.dtype)], dim=1)  # masked garbage must not count
    mask = torch.cat([mask, torch.zeros(3, 3, dtype=torch.bool)], dim=1)
    g, e = gini(w, mask), effective_token_ratio(w, mask)
    torch.testing.assert_close(g, g[:1].expand(3), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(e, e[:1].expand(3), atol=1e-5, rtol=1e-4)


@FAST
@given(rows=st.lists(weights_row, min_size=1, max_size=5))
def test_gini_and_etr_bounds(rows):
    w, mask = pad(rows)
    w = w.float()
    n = mask.sum(-1).double()
    g, e = gini(w, mask).double(), effective_token_ratio(w, mask).double()
    assert ((g >= -1e-6) & (g <= (n - 1) / n + 1e-6)).all()
    assert ((e >= 1 / n - 1e-6) & (e <= 1 + 1e-6)).all()


def test_regimes_thresholds():
    etr = torch.tensor([1.0, 0.95, 0.94, 0.5, 0.26, 0.25, 0.01, NAN])
    assert regimes(etr).tolist() == [0, 0, 1, 1, 1, 2, 2, 1]
    assert regimes(etr, uniform_at=0.5, concentrated_at=0.4).tolist() == [0, 0, 0, 0, 2, 2, 2, 1]
    assert REGIMES[0] == "uniform" and REGIMES[2] == "concentrated"
    with pytest.raises(ValueError, match="concentrated_at < uniform_at"):
        regimes(etr, uniform_at=0.3, concentrated_at=0.3)


# ------------------------------------------------------------------------------------------------
# Spearman
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spearman_matches_reference(dtype):
    a, mask = random_batch(3, dtype)
    b = torch.where(mask, a + torch.randn(a.shape, generator=torch.Generator().manual_seed(4)).to(dtype), 0)
    b[4] = torch.randint(0, 3, (b.shape[1],), generator=torch.Generator().manual_seed(5)).to(dtype)
    want = [ref_spearman(x, y) for x, y in zip(rows_of(a, mask), rows_of(b, mask), strict=True)]
    got = spearman(a, b, mask)
    assert got.dtype == torch.float32
    torch.testing.assert_close(
        got.double(), torch.tensor(want, dtype=torch.float64), atol=1e-5, rtol=0, equal_nan=True
    )
    assert math.isnan(got[0]) and math.isnan(got[1])  # T = 0 and T = 1
    assert math.isnan(got[5])  # a constant (all-zero) row


@FAST
@given(pairs=st.lists(st.tuples(st.integers(0, 4), st.floats(-10, 10, width=32)), min_size=2, max_size=12))
def test_spearman_with_ties_matches_reference(pairs):
    xs, ys = [float(p[0]) for p in pairs], [p[1] for p in pairs]
    a, mask = pad([xs])
    b, _ = pad([ys])
    want = ref_spearman(xs, ys)
    got = float(spearman(a, b, mask)[0])
    assert (math.isnan(want) and math.isnan(got)) or abs(got - want) < 1e-5


def test_spearman_monotone_and_nonfinite():
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, NAN, 4.0]])
    b = torch.tensor([[2.0, 20.0, 30.0, 400.0], [4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    mask = torch.ones_like(a, dtype=torch.bool)
    got = spearman(a, b, mask)
    assert got[0] == 1.0 and got[1] == -1.0 and math.isnan(got[2])


# ------------------------------------------------------------------------------------------------
# Normalization
# ------------------------------------------------------------------------------------------------


def random_salience(seed, dtype):
    s, mask = random_batch(seed, dtype)
    s[8, 3] = NAN  # non-finite rows: every method falls back to w = 1
    s[9, 0] = float("inf")
    return s, mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "temperature,mix,clip_max", [(1.0, 1.0, None), (0.5, 0.7, None), (2.0, 1.0, 1.5), (1.0, 0.3, 1.2)]
)
def test_normalize_matches_loop_reference(method, dtype, temperature, mix, clip_max):
    s, mask = random_salience(7, dtype)
    got = normalize(s, mask, method, temperature=temperature, mix=mix, clip_max=clip_max)
    assert got.dtype == dtype and got.shape == s.shape
    assert (got[~mask] == 0).all()
    for row, want, m in zip(
        got,
        [ref_normalize(r, method, temperature, mix, clip_max) for r in rows_of(s, mask)],
        mask,
        strict=True,
    ):
        torch.testing.assert_close(
            row[m].double(), torch.tensor(want, dtype=torch.float64), atol=1e-5, rtol=1e-5
        )


@FAST
@given(
    rows=st.lists(weights_row, min_size=1, max_size=4),
    method=st.sampled_from(METHODS),
    temperature=st.floats(0.05, 10.0),
    mix=st.floats(0.0, 1.0),
    clip_max=st.none() | st.floats(1.0, 5.0),
)
def test_normalize_has_mean_one_on_valid_tokens(rows, method, temperature, mix, clip_max):
    s, mask = pad(rows, value=NAN)
    w = normalize(s.float(), mask, method, temperature=temperature, mix=mix, clip_max=clip_max)
    assert torch.isfinite(w).all() and (w >= 0).all() and (w[~mask] == 0).all()
    mean = w.double().sum(-1) / mask.sum(-1)
    torch.testing.assert_close(mean, torch.ones_like(mean), atol=1e-5, rtol=1e-5)


@FAST
@given(
    lengths=st.lists(st.integers(0, 50), min_size=1, max_size=5),
    method=st.sampled_from(METHODS),
    temperature=st.floats(0.05, 10.0),
    mix=st.floats(0.0, 1.0),
    clip_max=st.none() | st.floats(1.0, 5.0),
)
def test_uniform_signal_gives_exactly_one(lengths, method, temperature, mix, clip_max):
    mask = torch.arange(max(lengths) + 1)[None, :] < torch.tensor(lengths)[:, None]
    stats = TokenStats(mask=mask, logp=torch.full(mask.shape, NAN))
    w = normalize(
        salience("uniform", stats), mask, method, temperature=temperature, mix=mix, clip_max=clip_max
    )
    assert torch.equal(w, mask.float())


def test_fallback_on_zero_and_non_finite_rows():
    s = torch.tensor(
        [
            [0.0, 0.0, 0.0, 9.0],  # all-zero valid part (masked 9 must not count)
            [1.0, NAN, 2.0, 0.0],
            [1.0, float("inf"), 2.0, 0.0],
            [1.0, 0.0, 3.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],  # empty row
        ]
    )
    mask = torch.tensor(
        [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool
    )
    assert fallback_rows(s, mask).tolist() == [True, True, True, False, False]
    for method in METHODS:
        w = normalize(s, mask, method)
        assert torch.equal(w[:3], mask[:3].float()), method
        assert torch.equal(w[4], torch.zeros(4)), method
        assert not torch.equal(w[3], mask[3].float()), method
    close(normalize(s, mask)[3], [0.75, 0.0, 2.25, 0.0])


def test_tiny_salience_does_not_underflow_the_mean():
    s = torch.tensor([[1e-45, 0.0, 0.0]])  # a float32 subnormal
    mask = torch.ones_like(s, dtype=torch.bool)
    close(normalize(s, mask), [[3.0, 0.0, 0.0]])


def test_rank_averages_ties():
    s = torch.tensor([[5.0, 1.0, 5.0, 3.0, 7.0], [2.0, 2.0, 2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    # ranks 3.5, 1, 3.5, 2 (mean 2.5); a constant row ranks 2, 2, 2
    close(normalize(s, mask, "rank"), [[1.4, 0.4, 1.4, 0.8, 0.0], [1.0, 1.0, 1.0, 0.0, 0.0]])


@FAST
@given(row=st.lists(st.integers(0, 3), min_size=1, max_size=20))
def test_rank_matches_reference_ranks(row):
    s, mask = pad([[float(v) for v in row]])
    want = [r / ((len(row) + 1) / 2) for r in ref_ranks(row)]
    torch.testing.assert_close(
        normalize(s, mask, "rank")[0].double(), torch.tensor(want, dtype=torch.float64)
    )


def test_softmax_formula():
    s = torch.tensor([[0.0, 1.0, 2.0, 100.0]])
    mask = torch.tensor([[True, True, True, False]])
    want = 3 * torch.softmax(torch.tensor([0.0, 1.0, 2.0]) / 0.5, dim=0)
    torch.testing.assert_close(normalize(s, mask, "softmax", temperature=0.5)[0, :3], want)


def test_normalize_rejects_bad_options():
    s, mask = torch.ones(1, 3), torch.ones(1, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"mean\|softmax\|rank"):
        normalize(s, mask, "max")
    for kwargs in ({"temperature": 0.0}, {"mix": 1.5}, {"mix": -0.1}, {"clip_max": 0.9}):
        with pytest.raises(ValueError):
            normalize(s, mask, **kwargs)


# ------------------------------------------------------------------------------------------------
# Signals
# ------------------------------------------------------------------------------------------------

MASK = torch.tensor([[True, True, True, False]])


def handmade_stats(**fields):
    return TokenStats(mask=MASK, logp=torch.tensor([[math.log(0.5), math.log(0.25), 1e-7, NAN]]), **fields)


def test_uniform_and_surprisal():
    stats = handmade_stats()
    assert torch.equal(salience("uniform", stats), torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    close(salience("surprisal", stats), [[math.log(2), 2 * math.log(2), 0.0, 0.0]])  # round-off clamped


def test_entropy_clamp_and_abs():
    stats = handmade_stats(
        entropy=torch.tensor([[1.0, 1.5, 0.5, NAN]]), ref_entropy=torch.tensor([[2.0, 1.0, 0.5, NAN]])
    )
    close(salience("entropy", stats), [[1.0, 0.0, 0.0, 0.0]])
    close(salience("entropy", stats, mode="abs"), [[1.0, 0.5, 0.0, 0.0]])
    with pytest.raises(ValueError, match=r"clamp\|abs"):
        salience("entropy", stats, mode="square")


def test_divergence_exact_and_k3():
    logp = torch.log(torch.tensor([[0.5, 0.2, 0.9, 0.3]]))
    ref_logp = torch.log(torch.tensor([[0.25, 0.4, 0.9, 0.3]]))
    stats = TokenStats(mask=MASK, logp=logp, ref_logp=ref_logp, kl=torch.tensor([[0.3, -1e-8, 0.0, NAN]]))
    close(salience("divergence", stats), [[0.3, 0.0, 0.0, 0.0]])
    # d = log(ref / pol) = -log 2, log 2, 0: exp(d) - d - 1
    want = [[0.5 + math.log(2) - 1, 2 - math.log(2) - 1, 0.0, 0.0]]
    close(salience("divergence", stats, estimator="k3"), want)
    with pytest.raises(ValueError, match=r"exact\|k3"):
        salience("divergence", stats, estimator="k2")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_arca_is_the_hidden_residual_norm(dtype):
    ref_hidden = torch.tensor([[[1.0, 1.0], [2.0, -2.0], [0.0, 0.0], [NAN, NAN]]])
    residual = torch.tensor([[[3.0, 4.0], [0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]])
    stats = handmade_stats(hidden=(ref_hidden + residual).to(dtype), ref_hidden=ref_hidden.to(dtype))
    close(salience("arca", stats), [[5.0, 0.0, math.sqrt(2), 0.0]])


def full_stats(seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(6)[None, :] < torch.tensor([[6], [2], [0]])
    rand = lambda *shape: torch.randn(*shape, generator=g).requires_grad_()  # noqa: E731
    return TokenStats(
        mask=mask,
        logp=-rand(3, 6).abs(),
        entropy=rand(3, 6).abs(),
        ref_logp=-rand(3, 6).abs(),
        ref_entropy=rand(3, 6).abs(),
        kl=rand(3, 6).abs(),
        hidden=rand(3, 6, 4),
        ref_hidden=rand(3, 6, 4),
    )


@pytest.mark.parametrize("name", sorted(SIGNALS))
@pytest.mark.parametrize("options", [{}, {"mode": "abs"}, {"estimator": "k3"}])
def test_every_signal_reads_only_what_it_needs_and_keeps_the_contract(name, options):
    full = full_stats(0)
    fields = {f: getattr(full, f) for f in needed_stats([name], options)}
    fields.setdefault("logp", torch.full(full.mask.shape, NAN))  # logp is required; NaN if unread
    s = salience(name, TokenStats(mask=full.mask, **fields), **options)
    assert s.dtype == torch.float32 and s.shape == full.mask.shape and not s.requires_grad
    assert torch.isfinite(s).all() and (s >= 0).all() and (s[~full.mask] == 0).all()
    assert (s[full.mask] > 0).any()


def test_needed_stats_and_unknown_names():
    assert needed_stats(["uniform"]) == set()
    assert needed_stats(["divergence"]) == {"kl"}
    assert needed_stats(["divergence"], {"estimator": "k3"}) == {"logp", "ref_logp"}
    assert needed_stats(["surprisal", "entropy", "arca"]) == {
        "logp",
        "entropy",
        "ref_entropy",
        "hidden",
        "ref_hidden",
    }
    with pytest.raises(ValueError, match="arca.*divergence.*entropy.*surprisal.*uniform"):
        needed_stats(["uniform", "entropi"])
    with pytest.raises(ValueError, match="entropi.*arca"):
        salience("entropi", handmade_stats())
    with pytest.raises(ValueError, match="ref_entropy"):
        salience("entropy", handmade_stats(entropy=torch.zeros(1, 4)))


def test_register_a_sixth_signal():
    @register_signal("test_position", needs={"logp"})
    def position(stats, *, mode="clamp", estimator="exact"):
        return torch.where(stats.mask, torch.arange(stats.mask.shape[1], dtype=torch.float32), 0.0)

    try:
        assert SIGNALS["test_position"].needs == {"logp"} and SIGNALS["test_position"].fn is position
        assert needed_stats(["test_position"]) == {"logp"}
        close(salience("test_position", handmade_stats()), [[0.0, 1.0, 2.0, 0.0]])
        with pytest.raises(ValueError, match="already registered"):
            register_signal("test_position")
        with pytest.raises(ValueError, match="unknown TokenStats fields"):
            register_signal("test_other", needs={"logits"})
    finally:
        del SIGNALS["test_position"]
    assert "test_other" not in SIGNALS


# ------------------------------------------------------------------------------------------------
# Summary
# ------------------------------------------------------------------------------------------------

KEYS = [
    "gini/mean",
    "gini/p10",
    "gini/p50",
    "gini/p90",
    "etr/mean",
    "etr/p10",
    "etr/p50",
    "etr/p90",
    "top5_mass/mean",
    "regime/uniform",
    "regime/middle",
    "regime/concentrated",
    "position/first5",
    "position/last5",
]


def test_summarize_weights_by_hand():
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0], [NAN, NAN, NAN, NAN]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    fmt = torch.tensor([[False, True, False, False]]).expand(3, 4)
    out = summarize_weights(w, mask, format_mask=fmt)
    assert list(out) == KEYS + ["position/format"]
    assert all(type(v) is float for v in out.values())
    want = {
        "gini/mean": 0.375,
        "gini/p10": 0.075,
        "gini/p50": 0.375,
        "gini/p90": 0.675,  # rows 0 and 3/4
        "etr/mean": 0.625,
        "etr/p10": 0.325,
        "etr/p50": 0.625,
        "etr/p90": 0.925,  # rows 1 and 1/4
        "top5_mass/mean": 0.625,  # 1 token of 4: 1/4 and 1
        "regime/uniform": 0.5,
        "regime/middle": 0.0,
        "regime/concentrated": 0.5,
        "position/first5": 0.625,
        "position/last5": 0.125,
        "position/format": 0.125,
    }
    assert out == pytest.approx(want, abs=1e-6)
    assert list(summarize_weights(w, mask)) == KEYS
    shifted = summarize_weights(w, mask, uniform_at=0.99, concentrated_at=0.1)
    assert (shifted["regime/uniform"], shifted["regime/middle"]) == (0.5, 0.5)


def test_summarize_weights_of_a_batch_without_tokens_is_nan():
    out = summarize_weights(torch.ones(2, 3), torch.zeros(2, 3, dtype=torch.bool))
    assert list(out) == KEYS and all(math.isnan(v) for v in out.values())


def test_module_exports_the_registry_defaults():
    assert set(SIGNALS) == {"uniform", "surprisal", "entropy", "divergence", "arca"}
    assert credit.NORMALIZE_METHODS == (*METHODS, "none")
