"""Per-token credit: raw salience signals, within-trajectory normalization, weight diagnostics.

Pure functions, tensors in and tensors out. Every per-token tensor is ``[B, T]`` (one row per
trajectory) and index ``t`` is response token ``y_t``, computed at the forward position that
predicts it. ``mask`` is True on response tokens (EOS included); a row's T is its number of valid
tokens. Values at masked positions are ignored on input and are 0 on output.

Token advantage (SPEC "Credit signals"): ``A_(i,t) = A_i * w_(i,t)`` with ``w = normalize(s)`` and
``s = salience(name, stats)``. A sixth signal is one function decorated with :func:`register_signal`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields

import torch

# ------------------------------------------------------------------------------------------------
# Token quantities
# ------------------------------------------------------------------------------------------------


@dataclass
class TokenStats:
    """Detached per-response-token quantities from the policy pass and the adapter-disabled pass.

    Shapes ``[B, T]`` unless noted; anything may sit at masked positions.
    """

    mask: torch.Tensor  # [B, T] bool, True on response tokens (EOS included)
    logp: torch.Tensor  # log pi_theta(y_t | context)
    entropy: torch.Tensor | None = None  # H(pi_theta(.)) at t, full vocabulary
    ref_logp: torch.Tensor | None = None  # log pi_ref(y_t | context)
    ref_entropy: torch.Tensor | None = None  # H(pi_ref(.)) at t
    kl: torch.Tensor | None = None  # exact KL(pi_theta || pi_ref) at t
    hidden: torch.Tensor | None = None  # [B, T, D] policy hidden state at credit.layer
    ref_hidden: torch.Tensor | None = None  # [B, T, D] same with the adapter disabled


STAT_FIELDS = frozenset(f.name for f in fields(TokenStats)) - {"mask"}

# ------------------------------------------------------------------------------------------------
# Signal registry
# ------------------------------------------------------------------------------------------------

SignalFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Signal:
    """A registered salience signal.

    ``fn(stats, *, mode="clamp", estimator="exact") -> [B, T]`` float32 (float64 in, float64 out), >= 0, 0 at masked positions,
    detached. ``needs`` are the :class:`TokenStats` fields it reads; ``needs_by_option`` entries
    ``(option, value, needs)`` replace them when that option has that value.
    """

    name: str
    fn: SignalFn
    needs: frozenset[str]
    needs_by_option: tuple[tuple[str, str, frozenset[str]], ...] = ()

    def needs_for(self, options: Mapping[str, object]) -> frozenset[str]:
        """The fields read under ``options`` (missing options take the function's defaults)."""
        for option, value, needs in self.needs_by_option:
            if options.get(option) == value:
                return needs
        return self.needs


SIGNALS: dict[str, Signal] = {}


def register_signal(
    name: str,
    needs: Iterable[str] = frozenset(),
    needs_by_option: Iterable[tuple[str, str, Iterable[str]]] = (),
) -> Callable[[SignalFn], SignalFn]:
    """Decorator adding ``fn`` to :data:`SIGNALS` under ``name``; ``needs`` name TokenStats fields."""
    needs = frozenset(needs)
    by_option = tuple((option, value, frozenset(n)) for option, value, n in needs_by_option)
    unknown = needs.union(*(n for _, _, n in by_option)) - STAT_FIELDS
    if unknown:
        raise ValueError(f"signal {name!r} needs unknown TokenStats fields {sorted(unknown)}")
    if name in SIGNALS:
        raise ValueError(f"signal {name!r} is already registered")

    def add(fn: SignalFn) -> SignalFn:
        SIGNALS[name] = Signal(name, fn, needs, by_option)
        return fn

    return add


def _lookup(name: str) -> Signal:
    if name not in SIGNALS:
        raise ValueError(f"unknown credit signal {name!r}; choose one of: {'|'.join(sorted(SIGNALS))}")
    return SIGNALS[name]


def needed_stats(names: Iterable[str], options: Mapping[str, object] | None = None) -> set[str]:
    """Union of the TokenStats fields the named signals read under ``options`` (mode, estimator)."""
    options = options or {}
    return set().union(*(_lookup(name).needs_for(options) for name in names))


def salience(name: str, stats: TokenStats, **options) -> torch.Tensor:
    """Raw salience ``s [B, T]`` of the registered signal ``name``."""
    return _lookup(name).fn(stats, **options)


def _float(x: torch.Tensor) -> torch.Tensor:
    """At least float32, keeping float64 (so float64 reference runs stay exact)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _field(stats: TokenStats, name: str) -> torch.Tensor:
    value = getattr(stats, name)
    if value is None:
        raise ValueError(f"this credit signal needs TokenStats.{name}, which was not computed")
    return value.detach()


def _finish(s: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """At least float32, 0 at masked positions (whatever sat there, NaN included), detached."""
    return torch.where(mask.bool(), _float(s.detach()), 0.0)


def _check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{option}={value!r} is not valid; choose one of: {'|'.join(choices)}")


# ------------------------------------------------------------------------------------------------
# The five signals (SPEC "Credit signals"), raw salience s_t >= 0
# ------------------------------------------------------------------------------------------------


@register_signal("uniform")
def uniform_salience(stats: TokenStats, *, mode: str = "clamp", estimator: str = "exact") -> torch.Tensor:
    """Plain GRPO: ``s_t = 1``."""
    return _finish(torch.ones_like(stats.mask, dtype=torch.float32), stats.mask)


@register_signal("surprisal", needs={"logp"})
def surprisal_salience(stats: TokenStats, *, mode: str = "clamp", estimator: str = "exact") -> torch.Tensor:
    """``s_t = -log pi_theta(y_t | context)``, clamped at 0 against round-off."""
    return _finish((-_float(_field(stats, "logp"))).clamp(min=0), stats.mask)


@register_signal("entropy", needs={"entropy", "ref_entropy"})
def entropy_salience(stats: TokenStats, *, mode: str = "clamp", estimator: str = "exact") -> torch.Tensor:
    """Entropy reduction ``s_t = max(H(pi_ref)_t - H(pi_theta)_t, 0)``;
    ``mode="abs"``: ``s_t = |H(pi_ref)_t - H(pi_theta)_t|``."""
    _check_choice("mode", mode, ("clamp", "abs"))
    reduction = _float(_field(stats, "ref_entropy")) - _float(_field(stats, "entropy"))
    s = reduction.abs() if mode == "abs" else reduction.clamp(min=0)
    return _finish(s, stats.mask)


@register_signal("divergence", needs={"kl"}, needs_by_option=[("estimator", "k3", {"logp", "ref_logp"})])
def divergence_salience(stats: TokenStats, *, mode: str = "clamp", estimator: str = "exact") -> torch.Tensor:
    """Policy divergence ``s_t = KL(pi_theta(.) || pi_ref(.))`` at t, exact over the vocabulary
    (``stats.kl``, clamped at 0 against round-off).

    ``estimator="k3"``: with ``d_t = log pi_ref(y_t) - log pi_theta(y_t)``,
    ``s_t = exp(d_t) - d_t - 1`` (computed as ``expm1(d_t) - d_t``, clamped at 0).
    """
    _check_choice("estimator", estimator, ("exact", "k3"))
    if estimator == "k3":
        d = _float(_field(stats, "ref_logp")) - _float(_field(stats, "logp"))
        s = torch.expm1(d) - d
    else:
        s = _float(_field(stats, "kl"))
    return _finish(s.clamp(min=0), stats.mask)


@register_signal("arca", needs={"hidden", "ref_hidden"})
def arca_salience(stats: TokenStats, *, mode: str = "clamp", estimator: str = "exact") -> torch.Tensor:
    """Adapter-residual credit: ``s_t = ||h_adapted_t - h_base_t||_2`` over the hidden dimension,
    differenced in float32."""
    residual = _float(_field(stats, "hidden")) - _float(_field(stats, "ref_hidden"))
    return _finish(torch.linalg.vector_norm(residual, dim=-1), stats.mask)


# ------------------------------------------------------------------------------------------------
# Within-trajectory normalization (SPEC "Within-trajectory normalization")
# ------------------------------------------------------------------------------------------------

NORMALIZE_METHODS = ("mean", "softmax", "rank")


def _average_ranks(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """float64 rank of each valid ``x_t`` among its row's valid entries, 1..T, ties given their
    average rank: ``rank_t = #{j: x_j < x_t} + (#{j: x_j = x_t} + 1) / 2``. Valid entries must not
    be NaN or +inf; masked positions get 0."""
    key = torch.where(mask, x, torch.inf).contiguous()
    ordered = key.sort(dim=-1).values
    below = torch.searchsorted(ordered, key, right=False)
    at_or_below = torch.searchsorted(ordered, key, right=True)
    return torch.where(mask, (below + at_or_below + 1).double() / 2, 0.0)


def _mean_one(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x_t / mean(x)`` over each row's valid entries (x >= 0 with a positive entry per nonempty row).

    The row is first divided by its max, so a row of tiny values cannot underflow its mean; a
    constant row comes out exactly 1.
    """
    x = torch.where(mask, x, 0.0)
    top = x.amax(dim=-1, keepdim=True)
    x = x / torch.where(top > 0, top, 1.0)
    mean = x.sum(dim=-1, keepdim=True) / mask.sum(dim=-1, keepdim=True).clamp(min=1)
    return torch.where(mask, x / mean, 0.0)


def fallback_rows(salience: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B]`` bool: nonempty rows where the ``mean`` method falls back to ``w = 1``, i.e. where the
    valid ``sum s`` is 0 or not finite (for s >= 0: not a positive finite number).

    The sum is taken in float64: finite float32 saliences near float32's max (a k3 divergence of
    ~80 nats is e^80 = 5.5e34) would overflow a float32 sum to inf and fall back silently, although
    :func:`_mean_one` normalizes them fine (it divides by the row max first)."""
    mask = mask.bool()
    total = torch.where(mask, salience.detach().double(), 0).sum(dim=-1)
    return mask.any(dim=-1) & ~(torch.isfinite(total) & (total > 0))


def normalize(
    salience: torch.Tensor,
    mask: torch.Tensor,
    method: str = "mean",
    temperature: float = 1.0,
    mix: float = 1.0,
    clip_max: float | None = None,
) -> torch.Tensor:
    """Weights ``w [B, T]`` with mean 1 over each row's T valid tokens (0 at masked positions).

    - ``mean``: ``w_t = s_t / mean(s)``; a row whose ``sum s`` is 0 or not finite gets ``w = 1``
      (see :func:`fallback_rows`).
    - ``softmax``: ``w_t = T * softmax(s / temperature)_t`` over the valid tokens.
    - ``rank``: ``w_t = rank(s_t) / mean(rank) = rank(s_t) / ((T + 1) / 2)``, ranks 1..T with ties
      given their average rank; a constant row gives all ones.

    ``softmax`` and ``rank`` also give ``w = 1`` on a row holding a non-finite s. Then, if
    ``mix != 1``: ``w <- (1 - mix) + mix * w`` (computed as ``1 + mix * (w - 1)``, which keeps the
    mean at 1); if ``clip_max`` is set: ``w <- min(w, clip_max)``, then renormalized once to mean 1,
    so the final max can exceed ``clip_max`` slightly. A constant salience row (the ``uniform``
    signal) gives exactly ``w = 1`` under every method. Rows with no valid token are all 0.
    Requires ``temperature > 0``, ``0 <= mix <= 1`` and ``clip_max >= 1`` (weights have mean 1).
    """
    _check_choice("method", method, NORMALIZE_METHODS)
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix={mix} must be in [0, 1]")
    if clip_max is not None and not clip_max >= 1.0:
        raise ValueError(f"clip_max={clip_max} must be >= 1 (weights have mean 1) or None")

    mask = mask.bool()
    s = salience.detach()
    s = torch.where(mask, s if s.is_floating_point() else s.float(), 0.0)
    nonfinite = (~torch.isfinite(s)).any(dim=-1, keepdim=True)
    if method == "mean":
        w = _mean_one(torch.where(fallback_rows(s, mask)[:, None], 1.0, s), mask)
    elif method == "softmax":
        s = torch.where(nonfinite, 0.0, s)
        top = torch.where(mask, s, -torch.inf).amax(dim=-1, keepdim=True)
        w = _mean_one(torch.exp((s - torch.where(mask.any(-1, keepdim=True), top, 0.0)) / temperature), mask)
    else:
        ranks = _average_ranks(torch.where(nonfinite, 0.0, s), mask)
        w = (ranks / ((mask.sum(dim=-1, keepdim=True).double() + 1) / 2)).to(s.dtype)
    if mix != 1.0:
        w = torch.where(mask, 1 + mix * (w - 1), 0.0)
    if clip_max is not None:
        w = _mean_one(w.clamp(max=clip_max), mask)
    return w


# ------------------------------------------------------------------------------------------------
# Diagnostics (SPEC "Diagnostics"): per row [B] float32, computed in float64
# ------------------------------------------------------------------------------------------------

REGIMES = ("uniform", "middle", "concentrated")


def _valid(weights: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(float64 weights with 0 at masked positions, bool mask, T per row)."""
    mask = mask.bool()
    return torch.where(mask, weights.detach().double(), 0.0), mask, mask.sum(dim=-1)


def _uniform_if_zero(w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Rows whose weights sum to 0 read as uniform (the convention behind Gini 0 and ETR 1 there)."""
    return torch.where((w.sum(dim=-1, keepdim=True) == 0) & mask, 1.0, w)


def _top_count(frac: float, n: torch.Tensor) -> torch.Tensor:
    """``ceil(frac * T)`` per row, at least 1 on nonempty rows; tolerant of binary round-off
    (0.07 * 100 is 7, not 8)."""
    if not 0.0 < frac <= 1.0:
        raise ValueError(f"frac={frac} must be in (0, 1]")
    k = torch.ceil(frac * n.double() - 1e-9).long()
    return torch.minimum(k.clamp(min=1), n)


def _descending(w: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(valid weights sorted descending, left-aligned with 0 after them; 1-based positions i)."""
    ordered = torch.where(mask, w, -torch.inf).sort(dim=-1, descending=True).values
    i = torch.arange(1, w.shape[-1] + 1, device=w.device)
    return torch.where(i <= mask.sum(dim=-1, keepdim=True), ordered, 0.0), i


def _share(w: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    total = w.sum(dim=-1)
    share = torch.where(selected, w, 0.0).sum(dim=-1) / torch.where(total != 0, total, 1.0)
    return share.float()


def gini(weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Gini of each row's valid weights: ``G = sum_i sum_j |w_i - w_j| / (2 T^2 mean(w))``.

    Computed from the sorted form: with ``w_(1) >= ... >= w_(T)`` sorted descending,
    ``sum_i sum_j |w_i - w_j| = 2 sum_i (T + 1 - 2i) w_(i)``, so
    ``G = sum_i (T + 1 - 2i) w_(i) / (T * sum w)``. 0 when uniform, ``(T-1)/T`` when one token holds
    all the weight; 0 when ``sum w == 0`` or T == 0.
    """
    w, mask, n = _valid(weights, mask)
    ordered, i = _descending(w, mask)
    numerator = ((n[:, None] + 1 - 2 * i) * ordered).sum(dim=-1)
    denominator = n * w.sum(dim=-1)
    defined = denominator != 0
    return torch.where(defined, numerator / torch.where(defined, denominator, 1.0), 0.0).float()


def effective_token_ratio(weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``ETR = (sum w)^2 / (T * sum w^2)`` per row, in ``[1/T, 1]``; 1 when ``sum w^2 == 0``."""
    w, _, n = _valid(weights, mask)
    squares = (w * w).sum(dim=-1)
    etr = w.sum(dim=-1) ** 2 / (n * torch.where(squares > 0, squares, 1.0))
    return torch.where(squares > 0, etr, 1.0).float()


def top_mass(weights: torch.Tensor, mask: torch.Tensor, frac: float = 0.05) -> torch.Tensor:
    """Share of ``sum w`` held by the ``ceil(frac * T)`` largest valid weights of each row.

    A row whose weights sum to 0 reads as uniform (``ceil(frac * T) / T``); T == 0 gives 0.
    """
    w, mask, n = _valid(weights, mask)
    ordered, i = _descending(_uniform_if_zero(w, mask), mask)
    return _share(ordered, i <= _top_count(frac, n)[:, None])


def edge_mass(
    weights: torch.Tensor, mask: torch.Tensor, frac: float = 0.05
) -> tuple[torch.Tensor, torch.Tensor]:
    """(share of ``sum w`` on the first ``k``, on the last ``k`` valid positions), ``k = ceil(frac*T)``.

    Positions count valid tokens in order, so the mask need not be a left-aligned prefix. A row whose
    weights sum to 0 reads as uniform; T == 0 gives 0.
    """
    w, mask, n = _valid(weights, mask)
    w = _uniform_if_zero(w, mask)
    position = mask.long().cumsum(dim=-1) - 1
    k = _top_count(frac, n)[:, None]
    first = mask & (position < k)
    last = mask & (position >= n[:, None] - k)
    return _share(w, first), _share(w, last)


def masked_share(weights: torch.Tensor, mask: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """Share of ``sum w`` on valid positions where ``selected`` (e.g. format tokens) is True.

    A row whose weights sum to 0 reads as uniform; T == 0 gives 0.
    """
    w, mask, _ = _valid(weights, mask)
    return _share(_uniform_if_zero(w, mask), mask & selected.bool())


def regimes(etr: torch.Tensor, uniform_at: float = 0.95, concentrated_at: float = 0.25) -> torch.Tensor:
    """``[B]`` long regime codes indexing :data:`REGIMES`: 0 ``uniform`` if ETR >= uniform_at,
    2 ``concentrated`` if ETR <= concentrated_at, else 1 ``middle`` (NaN ETR included)."""
    if not 0.0 <= concentrated_at < uniform_at <= 1.0:
        raise ValueError(f"need 0 <= concentrated_at < uniform_at <= 1, got {concentrated_at}, {uniform_at}")
    code = torch.ones_like(etr, dtype=torch.long)
    code = torch.where(etr <= concentrated_at, 2, code)
    return torch.where(etr >= uniform_at, 0, code)


def spearman(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of ``a`` and ``b`` over each row's valid tokens: average ranks
    (ties averaged), then Pearson ``rho = sum (ra - m)(rb - m) / sqrt(sum (ra - m)^2 sum (rb - m)^2)``
    with ``m = (T + 1) / 2``. NaN when either row is constant, T < 2, or a value is not finite."""
    mask = mask.bool()
    a, b = a.detach().double(), b.detach().double()
    finite = ((torch.isfinite(a) & torch.isfinite(b)) | ~mask).all(dim=-1)
    center = (mask.sum(dim=-1, keepdim=True) + 1) / 2
    da = torch.where(mask, _average_ranks(a, mask) - center, 0.0)
    db = torch.where(mask, _average_ranks(b, mask) - center, 0.0)
    spread = (da * da).sum(dim=-1) * (db * db).sum(dim=-1)
    rho = (da * db).sum(dim=-1) / spread.sqrt()
    return torch.where(finite & (spread > 0), rho.clamp(-1.0, 1.0), torch.nan).float()


def summarize_weights(
    weights: torch.Tensor,
    mask: torch.Tensor,
    *,
    format_mask: torch.Tensor | None = None,
    uniform_at: float = 0.95,
    concentrated_at: float = 0.25,
) -> dict[str, float]:
    """Batch summary of per-row diagnostics over rows with at least one valid token.

    Keys: ``gini/{mean,p10,p50,p90}``, ``etr/{mean,p10,p50,p90}``, ``top5_mass/mean`` (frac 0.05),
    ``regime/{uniform,middle,concentrated}`` (fractions of rows, summing to 1),
    ``position/first5``, ``position/last5`` (mean edge shares, frac 0.05) and, with ``format_mask``,
    ``position/format``. Percentiles are ``torch.quantile`` (linear). Every value is NaN when no row
    has a valid token.
    """
    mask = mask.bool()
    rows = mask.any(dim=-1)
    etr = effective_token_ratio(weights, mask)
    first, last = edge_mass(weights, mask)
    per_row = {"gini": gini(weights, mask), "etr": etr, "top5_mass": top_mass(weights, mask)}
    positions = {"position/first5": first, "position/last5": last}
    if format_mask is not None:
        positions["position/format"] = masked_share(weights, mask, format_mask)
    counts = torch.bincount(regimes(etr, uniform_at, concentrated_at)[rows], minlength=len(REGIMES))
    n_rows = int(rows.sum())

    out: dict[str, float] = {}
    for name, values in per_row.items():
        values = values[rows].double()
        out[f"{name}/mean"] = values.mean().item() if n_rows else math.nan
        if name == "top5_mass":
            continue
        quantiles = torch.quantile(values, values.new_tensor([0.1, 0.5, 0.9])) if n_rows else [math.nan] * 3
        for p, q in zip(("p10", "p50", "p90"), quantiles, strict=True):
            out[f"{name}/{p}"] = float(q)
    for code, regime in enumerate(REGIMES):
        out[f"regime/{regime}"] = counts[code].item() / n_rows if n_rows else math.nan
    for key, values in positions.items():
        out[key] = values[rows].double().mean().item() if n_rows else math.nan
    return out
