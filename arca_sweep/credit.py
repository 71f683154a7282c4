"""Per-token credit: raw salience signals, within-trajectory normalization, weight diagnostics.

Pure functions, tensors in and tensors out. Every per-token tensor is ``[B, T]`` (one row per
trajectory) and index ``t`` is response token ``y_t``, computed at the forward position that
predicts it. ``mask`` is True on response tokens (EOS included); a row's T is its number of valid
tokens. Values at masked positions are ignored on input and are 0 on output.

Token advantage (SPEC "Credit signals"): ``A_(i,t) = A_i * w_(i,t)`` with ``w = normalize(s)`` and
``s = salience(name, stats)``. A sixth signal is one function decorated with :func:`register_signal`.

Credit methods (the section at the end) widen this: a function decorated with :func:`register_method`
returns a :class:`TokenCredit` (a salience, an advantage bonus, per-token clip ranges, KL and ratio
penalties, a gradient mask) and sees a :class:`GroupContext` (advantages, rewards, the group's other
rollouts): ``entropy_mask``, ``clip_cov``, ``kl_cov``, ``archer``, ``entropy_advantage``, ``ktae``.
"""

from __future__ import annotations

import inspect
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
        raise ValueError(f"unknown credit signal {name!r}; choose one of: {'|'.join(method_names())}")
    return SIGNALS[name]


def needed_stats(names: Iterable[str], options: Mapping[str, object] | None = None) -> set[str]:
    """Union of the TokenStats fields the named signals or methods read under ``options`` (mode,
    estimator)."""
    options = options or {}
    return set().union(*(METHODS[n].needs if n in METHODS else _lookup(n).needs_for(options) for n in names))


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

NORMALIZE_METHODS = ("mean", "softmax", "rank", "none")


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
    - ``none``: ``w_t = s_t`` as given (a 0/1 mask stays a mask; the mean is not 1); ``clip_max``
      then only clamps, without renormalizing.

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
    elif method == "rank":
        ranks = _average_ranks(torch.where(nonfinite, 0.0, s), mask)
        w = (ranks / ((mask.sum(dim=-1, keepdim=True).double() + 1) / 2)).to(s.dtype)
    else:
        w = s
    if mix != 1.0:
        w = torch.where(mask, 1 + mix * (w - 1), 0.0)
    if clip_max is not None:
        w = w.clamp(max=clip_max) if method == "none" else _mean_one(w.clamp(max=clip_max), mask)
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


# ------------------------------------------------------------------------------------------------
# Credit methods: token weights, an advantage bonus and per-token loss modifiers, with group context
# ------------------------------------------------------------------------------------------------
#
# A method is one registered function ``fn(stats, ctx, **options) -> TokenCredit``. The five signals
# above are methods too (``TokenCredit(salience=s)``, normalized by ``credit.normalize``). The learner
# computes a method once per rollout batch, from the scoring pass (SPEC "Multi-update PPO"), then
# uses it in every update:
#
#     A_(i,t) = A_i * w_(i,t) + bonus_(i,t),   w = normalize(salience)
#     loss_t  = grad_mask_t * [ PPO-clip(rho_t, A_(i,t); eps_low_t, eps_high_t)
#                               + ref_kl_coef_t * k3(pi_ref, pi_theta)_t + ratio_penalty_t * |log rho_t| ]
#
# with loss.clip_low/high and loss.beta where a modifier is None.


@dataclass
class GroupContext:
    """What a method may see beyond one trajectory: rows aligned with :class:`TokenStats` (prompt-major,
    rows ``g*G .. g*G+G-1`` share a prompt)."""

    advantages: torch.Tensor  # [B] sequence advantages A_i
    group_size: int  # G
    rewards: torch.Tensor | None = None  # [B]
    response_ids: torch.Tensor | None = None  # [B, T] the sampled tokens
    generator: torch.Generator | None = None  # CPU generator seeded by (run seed, step): a method's draws

    def rows(self, rows: torch.Tensor) -> GroupContext:
        pick = lambda x: None if x is None else x[rows.to(x.device)]  # noqa: E731
        return GroupContext(
            pick(self.advantages),
            self.group_size,
            pick(self.rewards),
            pick(self.response_ids),
            self.generator,
        )


@dataclass
class TokenCredit:
    """A method's per-token output, every tensor ``[B, T]``; None leaves the loss's default."""

    salience: torch.Tensor  # >= 0, normalized by credit.normalize into the weights w
    bonus: torch.Tensor | None = None  # added to A_i * w_t (detached)
    clip_low: torch.Tensor | None = None  # per-token eps_low (inf: no lower clip)
    clip_high: torch.Tensor | None = None  # per-token eps_high (inf: no upper clip)
    ref_kl_coef: torch.Tensor | None = None  # per-token beta of the k3 penalty to pi_ref, replacing loss.beta
    ratio_penalty: torch.Tensor | None = None  # coefficient of |log rho_t| added to the token loss
    grad_mask: torch.Tensor | None = None  # bool; False: the token's loss (and gradient) is zeroed

    def rows(self, rows: torch.Tensor, width: int | None = None) -> TokenCredit:
        """These rows (and the first ``width`` positions)."""
        return TokenCredit(
            **{
                f.name: None if (x := getattr(self, f.name)) is None else x[rows.to(x.device)][:, :width]
                for f in fields(self)
            }
        )

    @staticmethod
    def cat(parts: list[TokenCredit]) -> TokenCredit:
        """Row-wise concatenation, right-padded with 0 (False) to the widest part."""
        out = {}
        for f in fields(TokenCredit):
            values = [getattr(p, f.name) for p in parts]
            out[f.name] = None if values[0] is None else pad_cat(values)
        return TokenCredit(**out)


def pad_cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat`` over rows of ``[b_i, T_i, ...]`` tensors, right-padded with zeros to the widest T."""
    width = max(p.shape[1] for p in parts)
    return torch.cat(
        [torch.nn.functional.pad(p, (0, 0) * (p.dim() - 2) + (0, width - p.shape[1])) for p in parts]
    )


MethodFn = Callable[..., TokenCredit]


@dataclass(frozen=True)
class Method:
    """A registered credit method.

    ``scope``: ``row`` when each trajectory's output depends on its own tokens only (the learner may
    compute it per micro-batch), ``batch`` when it needs the whole rollout batch (a batch quantile, a
    batch covariance). ``defines_weights``: its salience is a token weighting worth the shadow
    diagnostics; ``normalize``: the normalization its shadow weights use (None: ``credit.normalize``).
    """

    name: str
    fn: MethodFn
    needs: frozenset[str]
    scope: str = "row"
    defines_weights: bool = False
    normalize: str | None = None


METHODS: dict[str, Method] = {}


def register_method(
    name: str,
    needs: Iterable[str] = frozenset(),
    *,
    scope: str = "row",
    defines_weights: bool = False,
    normalize: str | None = None,
) -> Callable[[MethodFn], MethodFn]:
    """Decorator adding ``fn(stats, ctx, **options) -> TokenCredit`` to :data:`METHODS` under ``name``."""
    needs = frozenset(needs)
    if unknown := needs - STAT_FIELDS:
        raise ValueError(f"method {name!r} needs unknown TokenStats fields {sorted(unknown)}")
    if name in METHODS or name in SIGNALS:
        raise ValueError(f"credit method {name!r} is already registered")
    _check_choice("scope", scope, ("row", "batch"))

    def add(fn: MethodFn) -> MethodFn:
        METHODS[name] = Method(name, fn, needs, scope, defines_weights, normalize)
        return fn

    return add


def method_names() -> list[str]:
    """Every credit name ``credit.name`` accepts (signals and methods), sorted."""
    return sorted(set(SIGNALS) | set(METHODS))


def shadow_names() -> list[str]:
    """The names the shadow diagnostics weigh: the five signals, then methods that define weights."""
    return sorted(SIGNALS) + sorted(n for n, m in METHODS.items() if m.defines_weights)


def method_options(name: str) -> dict[str, object]:
    """The keyword options of method ``name`` with their defaults ({} for a signal)."""
    if name not in METHODS:
        return {}
    params = inspect.signature(METHODS[name].fn).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def as_method(name: str) -> Method:
    """The method ``name``; a signal becomes a row-scope method whose salience is the signal."""
    if name in METHODS:
        return METHODS[name]
    signal = _lookup(name)

    def from_signal(stats: TokenStats, ctx: GroupContext, **options) -> TokenCredit:
        return TokenCredit(salience=signal.fn(stats, **options))

    return Method(name, from_signal, signal.needs, "row", True, None)


def custom_method(fn: Callable, needs: Iterable[str] | None = None) -> Method:
    """A user's method (``credit=custom credit.target=pkg.mod:fn``): ``fn(stats, ctx, **options)``
    returns a salience ``[B, T]`` or a :class:`TokenCredit`. Batch scope (it sees the whole batch) and
    in the shadow diagnostics. ``needs``: ``fn.needs`` if set, else every ``[B, T]`` field."""
    if needs is None:
        needs = getattr(fn, "needs", STAT_FIELDS - {"hidden", "ref_hidden"})
    needs = frozenset(needs)
    if unknown := needs - STAT_FIELDS:
        raise ValueError(f"credit.target's needs name unknown TokenStats fields {sorted(unknown)}")

    def wrapped(stats: TokenStats, ctx: GroupContext, **options) -> TokenCredit:
        out = fn(stats, ctx, **options)
        if isinstance(out, torch.Tensor):
            out = TokenCredit(salience=out)
        if not isinstance(out, TokenCredit) or out.salience.shape != stats.mask.shape:
            got = out.salience.shape if isinstance(out, TokenCredit) else type(out).__name__
            raise TypeError(
                f"credit.target {getattr(fn, '__module__', '?')}:{getattr(fn, '__name__', '?')} must return a "
                f"[B, T] = {tuple(stats.mask.shape)} salience tensor or a TokenCredit; got {got}"
            )
        out.salience = _finish(out.salience, stats.mask)
        return out

    return Method("custom", wrapped, needs, "batch", True, None)


def _ones(stats: TokenStats) -> torch.Tensor:
    return _finish(torch.ones_like(stats.mask, dtype=torch.float32), stats.mask)


def _token_advantages(stats: TokenStats, ctx: GroupContext) -> torch.Tensor:
    """``A_i`` broadcast over each row's tokens (0 off the response)."""
    adv = ctx.advantages.to(stats.mask.device)[:, None].expand(stats.mask.shape)
    return torch.where(stats.mask.bool(), _float(adv), 0.0)


# ---- Wang et al. 2025: high-entropy minority tokens ---------------------------------------------


def high_entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, rho: float) -> torch.Tensor:
    """``[B, T]`` bool: response tokens whose entropy is at or above the batch's ``(1 - rho)`` quantile,
    ``H_t >= quantile({H_s : s valid}, 1 - rho)`` (``torch.quantile``, linear, over float32 values).
    All False when the batch has no response token."""
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"entropy_mask rho={rho} must be in (0, 1]")
    mask = mask.bool()
    values = entropy[mask].float()
    if values.numel() == 0:
        return torch.zeros_like(mask)
    threshold = torch.quantile(values, 1.0 - rho)
    return ((entropy * mask) >= threshold) & mask


@register_method("entropy_mask", needs={"entropy"}, scope="batch", defines_weights=True, normalize="none")
def entropy_mask_method(stats: TokenStats, ctx: GroupContext, *, rho: float = 0.2) -> TokenCredit:
    """Only the high-entropy minority gets gradient (Wang et al. 2025, "Beyond the 80/20 Rule",
    arXiv 2506.01939): ``w_t = 1[H_t >= q_(1-rho)]``, the quantile over every response token of the
    batch, rho = 0.2 as in the paper. ``credit.normalize: none`` keeps the 0/1 mask (masked tokens
    still count in the loss's denominator, as in TRL).

    Checked against TRL 1.16 ``GRPOTrainer.get_high_entropy_mask`` (``top_entropy_quantile`` = rho,
    threshold ``torch.quantile(entropies, 1 - rho)``, ``>=``): equal on identical inputs
    (tests/test_credit_methods.py). Differences: TRL recomputes the mask from each micro-batch's current
    entropies; here it is computed once per rollout batch from the scoring pass.
    """
    return TokenCredit(
        salience=_finish(high_entropy_mask(_field(stats, "entropy"), stats.mask, rho), stats.mask)
    )


# ---- Cui et al. 2025: Clip-Cov and KL-Cov --------------------------------------------------------


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / (mask.sum() + 1e-8)


def token_covariance(token_adv: torch.Tensor, logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``Cov_t = (A_t - mean(A)) * (log pi(y_t) - mean(log pi))``, means over every response token of the
    batch (``sum(x * mask) / (sum(mask) + 1e-8)``, as verl); -inf off the response."""
    mask = mask.bool()
    cov = (token_adv - _masked_mean(token_adv, mask)) * (logp - _masked_mean(logp, mask))
    return torch.where(mask, cov, -torch.inf)


def clip_cov_selection(
    token_adv: torch.Tensor,
    logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    ratio: float,
    lb: float,
    ub: float,
    generator: torch.Generator | None = None,
    excluded: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[B, T]`` bool, the tokens Clip-Cov detaches: ``k = max(floor(ratio * N), 1)`` (N response tokens)
    drawn uniformly without replacement (``torch.randperm``) among the tokens with ``lb < Cov_t < ub``
    (:func:`token_covariance`) that are not ``excluded`` (verl excludes tokens the PPO clip already
    clips; none are at the first update)."""
    mask = mask.bool()
    cov = token_covariance(token_adv, logp, mask)
    if excluded is not None:
        cov = torch.where(excluded.bool(), -torch.inf, cov)
    candidates = torch.nonzero((cov < ub) & (cov > lb) & mask)
    k = max(int(ratio * mask.sum().item()), 1)
    chosen = torch.zeros_like(mask)
    if len(candidates):
        perm = torch.randperm(len(candidates), generator=generator).to(candidates.device)
        picked = candidates[perm[: min(k, len(candidates))]]
        chosen[picked[:, 0], picked[:, 1]] = True
    return chosen


@register_method("clip_cov", needs={"logp"}, scope="batch")
def clip_cov_method(
    stats: TokenStats, ctx: GroupContext, *, ratio: float = 2e-4, lb: float = 1.0, ub: float = 5.0
) -> TokenCredit:
    """Clip-Cov (Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning LMs", arXiv 2505.22617):
    PPO-clip, with the loss and gradient of a random ``ratio`` fraction of the tokens whose covariance
    ``(A_t - mean A)(log pi_t - mean log pi)`` lies in ``(lb, ub)`` zeroed (:func:`clip_cov_selection`).
    Defaults are verl's (clip_cov_ratio 2e-4, lb 1, ub 5), which the paper's recipe uses.

    Checked against verl 0.9.1 ``core_algos.compute_policy_loss_clip_cov`` (the paper's authors' code,
    adapted): loss equal on identical inputs (tests/test_credit_methods.py). Differences: verl reselects
    per micro-batch at every update from the current log-probs, excluding already-clipped tokens; here
    the selection is made once per rollout batch from the scoring pass (logp_old, where nothing is
    clipped yet), so it does not depend on the micro-batch size. Draws come from ``ctx.generator``.
    """
    chosen = clip_cov_selection(
        _token_advantages(stats, ctx),
        _float(_field(stats, "logp")),
        stats.mask,
        ratio=ratio,
        lb=lb,
        ub=ub,
        generator=ctx.generator,
    )
    return TokenCredit(salience=_ones(stats), grad_mask=~chosen)


def kl_cov_selection(
    token_adv: torch.Tensor, logp: torch.Tensor, mask: torch.Tensor, ratio: float
) -> torch.Tensor:
    """``[B, T]`` bool: the ``max(1, floor(ratio * N))`` response tokens of largest covariance
    ``(A_t - mean A)(log pi_t - mean log pi)`` (plain means over the N response tokens; ``torch.topk``)."""
    mask = mask.bool()
    chosen = torch.zeros_like(mask)
    flat = torch.nonzero(mask.reshape(-1), as_tuple=True)[0]
    if flat.numel() == 0:
        return chosen
    adv, lp = token_adv[mask].detach(), logp[mask].detach()
    cov = (adv - adv.mean()) * (lp - lp.mean())
    top = torch.topk(cov, max(1, int(cov.numel() * ratio)), largest=True).indices
    chosen.view(-1)[flat[top]] = True
    return chosen


@register_method("kl_cov", needs={"logp"}, scope="batch")
def kl_cov_method(
    stats: TokenStats, ctx: GroupContext, *, ratio: float = 2e-4, coef: float = 1.0
) -> TokenCredit:
    """KL-Cov (Cui et al. 2025, arXiv 2505.22617): no clip; the top ``ratio`` fraction of tokens by
    covariance (:func:`kl_cov_selection`) get ``coef * |log rho_t|`` added to their loss
    ``-A_t rho_t``. Defaults are verl's (kl_cov_ratio 2e-4, ppo_kl_coef 1).

    Checked against verl 0.9.1 ``core_algos.compute_policy_loss_kl_cov``: equal on identical inputs
    (tests/test_credit_methods.py). As in verl the surrogate of every token is unclipped. Difference:
    verl selects per micro-batch and update from the current log-probs; here once per rollout batch
    from the scoring pass. |log rho| is 0 (and so is its gradient) at the first update: the penalty
    acts from the second update on (``learner.ppo_epochs`` / ``mini_batches`` > 1).
    """
    chosen = kl_cov_selection(_token_advantages(stats, ctx), _float(_field(stats, "logp")), stats.mask, ratio)
    inf = torch.full(stats.mask.shape, torch.inf, device=stats.mask.device)
    return TokenCredit(
        salience=_ones(stats),
        clip_low=inf,
        clip_high=inf,
        ratio_penalty=torch.where(chosen, float(coef), 0.0),
    )


# ---- Wang et al. 2025 (ARCHER): dual-token constraints -------------------------------------------


def response_entropy_split(entropy: torch.Tensor, mask: torch.Tensor, quantile: float) -> torch.Tensor:
    """``[B, T]`` bool: the high-entropy tokens of each response, ``H_t > q_i`` with ``q_i`` the
    ``quantile`` of that response's entropies (``torch.nanquantile``, linear); False off the response."""
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"archer quantile={quantile} must be in [0, 1]")
    mask = mask.bool()
    h = torch.where(mask, _float(entropy), torch.nan)
    q = torch.nanquantile(h, quantile, dim=-1, keepdim=True)
    return (h > q) & mask


@register_method("archer", needs={"entropy", "ref_logp"})
def archer_method(
    stats: TokenStats,
    ctx: GroupContext,
    *,
    quantile: float = 0.8,
    low_entropy_clip: float = 0.2,
    high_entropy_clip: float = 0.5,
    low_entropy_kl: float = 0.001,
    high_entropy_kl: float = 0.0,
) -> TokenCredit:
    """ARCHER (Wang et al. 2025, "Stabilizing Knowledge, Promoting Reasoning: Dual-Token Constraints for
    RLVR", arXiv 2507.15778): per response, tokens above its ``quantile`` (0.8) entropy percentile
    (:func:`response_entropy_split`) are reasoning tokens: clip range ``high_entropy_clip`` (0.5) and KL
    coefficient ``high_entropy_kl`` (0); the others are knowledge tokens: ``low_entropy_clip`` (0.2) and
    ``low_entropy_kl`` (0.001) times the k3 KL to pi_ref. These replace loss.clip_low/high and loss.beta.

    Checked against the authors' ArcherCodeR code (dp_actor ``use_token_entropy_separate``:
    ``torch.nanquantile(entropy, 0.8, dim=-1)``, ``H <= q`` low / ``H > q`` high; run scripts: clip 0.2 /
    0.5, ``high_entropy_kl_loss_scale_coef`` 0; kl_loss_type low_var_kl = k3). Difference: ArcherCodeR
    averages each group's KL over that group's tokens; here both share the loss's one aggregation.
    """
    high = response_entropy_split(_field(stats, "entropy"), stats.mask, quantile)
    clip = torch.where(high, float(high_entropy_clip), float(low_entropy_clip))
    kl = torch.where(high, float(high_entropy_kl), float(low_entropy_kl))
    return TokenCredit(
        salience=_ones(stats), clip_low=clip, clip_high=clip, ref_kl_coef=torch.where(stats.mask, kl, 0.0)
    )


# ---- Cheng et al. 2025: entropy-based advantage ---------------------------------------------------


@register_method("entropy_advantage", needs={"entropy"})
def entropy_advantage_method(
    stats: TokenStats, ctx: GroupContext, *, alpha: float = 0.4, kappa: float = 2.0
) -> TokenCredit:
    """Entropy advantage (Cheng et al. 2025, "Reasoning with Exploration: An Entropy Perspective",
    arXiv 2506.14758): ``A_(i,t) = A_i + psi_t`` with ``psi_t = min(alpha * H_t, |A_i| / kappa)``,
    ``H_t`` detached; the clip at ``|A_i| / kappa`` (kappa > 1) keeps the bonus from flipping the sign
    of a negative advantage, and a zero-advantage group gets none. alpha 0.4 and kappa 2 as the paper.

    Checked against the paper's formula (no peer library implements it).
    """
    if not alpha >= 0 or not kappa > 1:
        raise ValueError(f"entropy_advantage needs alpha >= 0 and kappa > 1, got {alpha}, {kappa}")
    entropy = _float(_field(stats, "entropy"))
    psi = torch.minimum(alpha * entropy, _token_advantages(stats, ctx).abs() / kappa)
    return TokenCredit(salience=_ones(stats), bonus=_finish(psi, stats.mask))


# ---- Sun et al. 2025 (KTAE): key-token advantage from a group's token statistics -----------------


def _fisher_two_sided(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Fisher's exact test of the 2x2 tables ``[[a, b], [c, d]]`` (float64 counts, any shape): the sum
    of the hypergeometric probabilities ``P(k) <= P(a)`` over the support of ``k`` (rows a + b, columns
    a + c fixed), with scipy's relative tolerance 1e-7 on the comparison."""
    row, col, n = a + b, a + c, a + b + c + d
    k = torch.arange(int(n.max().item()) + 1, dtype=torch.float64, device=a.device)
    k = k.view(*([1] * a.dim()), -1)

    def log_comb(m, j):
        return torch.lgamma(m + 1) - torch.lgamma(j + 1) - torch.lgamma(m - j + 1)

    row_, col_, n_ = row[..., None], col[..., None], n[..., None]
    support = (k >= torch.clamp(row_ + col_ - n_, min=0)) & (k <= torch.minimum(row_, col_))
    safe = torch.where(support, k, 0.0)
    log_p = log_comb(col_, safe) + log_comb(n_ - col_, row_ - safe) - log_comb(n_, row_)
    p = torch.where(support, torch.exp(log_p), 0.0)
    p_obs = torch.exp(log_comb(col, a) + log_comb(n - col, row - a) - log_comb(n, row))
    return torch.where(support & (p <= p_obs[..., None] * (1 + 1e-7)), p, 0.0).sum(-1).clamp(max=1.0)


def _binary_entropy_bits(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """H of the two-outcome distribution (x, y) / (x + y) in bits; 0 when x + y = 0."""
    total = x + y

    def h(p):
        return torch.where(p > 0, -p * torch.log2(torch.where(p > 0, p, 1.0)), 0.0)

    safe = torch.where(total > 0, total, 1.0)
    return torch.where(total > 0, h(x / safe) + h(y / safe), 0.0)


def key_token_scores(
    response_ids: torch.Tensor,
    mask: torch.Tensor,
    correct: torch.Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    tf: bool = True,
    scale: float = 1.0,
    k1: float = 2.0,
    b: float = 0.5,
) -> torch.Tensor:
    """KTAE's score of each response token of one group of G rollouts, ``[G, T]`` float64 (0 off the
    response, and everywhere when the group is all correct or all wrong).

    Per token id v, the table over rollouts: a (b) = correct (wrong) rollouts containing v, c = n_c - a,
    d = n_w - b. With p = Fisher's exact two-sided p-value, ``F = exp(-2 p)`` (0 when p = 1 within
    1e-6: the sum of the probabilities may round below 1), IG the
    information gain in bits of "contains v" about correctness, Cohen's
    ``h = asin sqrt(a / n_c) - asin sqrt(b / n_w)`` and, with ``tf``, the BM25 term frequencies
    ``tf_c = f_c (k1 + 1) / (f_c + k1 (1 - b + b N_c / N_avg))`` (f_c: v's share of the N_c response
    tokens of the correct rollouts; the same for wrong) adding ``tf_c / (tf_w + 1e-5) - tf_w / (tf_c +
    1e-5)`` to h: ``score_v = scale * (2 sigmoid((alpha F + beta IG) h / (alpha + beta)) - 1)``.
    """
    mask = mask.bool()
    correct = correct.bool()
    out = torch.zeros(mask.shape, dtype=torch.float64, device=mask.device)
    n_c, n_w = int(correct.sum()), int((~correct).sum())
    if n_c == 0 or n_w == 0 or not mask.any():
        return out
    values, inverse = torch.unique(response_ids[mask], return_inverse=True)
    rows = torch.arange(mask.shape[0], device=mask.device)[:, None].expand(mask.shape)[mask]
    counts = torch.zeros(mask.shape[0], len(values), dtype=torch.float64, device=mask.device)
    counts.index_put_((rows, inverse), torch.ones_like(inverse, dtype=torch.float64), accumulate=True)
    present = (counts > 0).double()
    a, bb = present[correct].sum(0), present[~correct].sum(0)
    c, d = n_c - a, n_w - bb
    p = _fisher_two_sided(a, bb, c, d)
    fisher = torch.where(p < 1.0 - 1e-6, torch.exp(-2 * p), 0.0)  # p = 1 up to round-off: no evidence
    n = float(n_c + n_w)
    info_gain = _binary_entropy_bits(a + c, bb + d) - (
        (a + bb) / n * _binary_entropy_bits(a, bb) + (c + d) / n * _binary_entropy_bits(c, d)
    )
    h = torch.asin(torch.sqrt(a / n_c)) - torch.asin(torch.sqrt(bb / n_w))
    if tf:
        tokens_c, tokens_w = mask[correct].sum().double(), mask[~correct].sum().double()
        average = (tokens_c + tokens_w) / 2
        f_c, f_w = counts[correct].sum(0) / tokens_c, counts[~correct].sum(0) / tokens_w
        tf_c = f_c * (k1 + 1) / (f_c + k1 * (1 - b + b * tokens_c / average))
        tf_w = f_w * (k1 + 1) / (f_w + k1 * (1 - b + b * tokens_w / average))
        h = h + tf_c / (tf_w + 1e-5) - tf_w / (tf_c + 1e-5)
    score = scale * (2 * torch.sigmoid((alpha * fisher + beta * info_gain) * h / (alpha + beta)) - 1)
    out[mask] = score[inverse]
    return out


@register_method("ktae", scope="batch")
def ktae_method(
    stats: TokenStats,
    ctx: GroupContext,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    tf: bool = True,
    scale: float = 1.0,
) -> TokenCredit:
    """KTAE (Sun et al. 2025, "KTAE: A Model-Free Algorithm to Key-Tokens Advantage Estimation in
    Mathematical Reasoning", arXiv 2505.16826): ``A_(i,t) = A_i + score(y_t)``, the token's key-ness
    from its group's rollouts and rewards alone (:func:`key_token_scores`; correct = reward > 0). No
    model quantity is read: it needs only ``ctx.response_ids`` and ``ctx.rewards``.

    Checked against the authors' code (xiaolizh1/KTAE ``verl/workers/actor/compute_key_tokens.py`` and
    its advantage estimator: alpha = beta_ig = gamma_tf = top = 1, BM25 k1 = 2, b = 0.5, the score
    added to the GRPO advantage). Differences: the Fisher test runs in float64 with scipy's tolerance
    and reads p = 1 within 1e-6 (upstream float32, exact ``<=`` and ``!= 1.0``, which round-off can
    flip), and no token id is special (upstream zeroes Qwen's
    ``<|endoftext|>``, id 151643).
    """
    if ctx.response_ids is None or ctx.rewards is None:
        raise ValueError("ktae needs the group context's response_ids and rewards")
    mask = stats.mask.bool()
    bonus = torch.zeros(mask.shape, dtype=torch.float64, device=mask.device)
    ids = ctx.response_ids.to(mask.device)[:, : mask.shape[1]]
    rewards = ctx.rewards.to(mask.device)
    for start in range(0, mask.shape[0], ctx.group_size):
        g = slice(start, start + ctx.group_size)
        bonus[g] = key_token_scores(
            ids[g], mask[g], rewards[g] > 0, alpha=alpha, beta=beta, tf=tf, scale=scale
        )
    return TokenCredit(salience=_ones(stats), bonus=_finish(bonus.float(), mask))
