"""How concentrated token weights are (SPEC "Diagnostics"): Gini, effective token ratio, top and edge
mass, the share on selected tokens, the uniform/middle/concentrated regimes and the Spearman correlation
of two weightings; per row ``[B]`` float32, computed in float64, and their batch summary.

Pure functions of ``weights [B, T]`` and ``mask [B, T]``; only torch.
"""

from __future__ import annotations

import math

import torch

from arca_sweep.diagnostics import REGIMES


def average_ranks(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """float64 rank of each valid ``x_t`` among its row's valid entries, 1..T, ties given their
    average rank: ``rank_t = #{j: x_j < x_t} + (#{j: x_j = x_t} + 1) / 2``. Valid entries must not
    be NaN or +inf; masked positions get 0."""
    key = torch.where(mask, x, torch.inf).contiguous()
    ordered = key.sort(dim=-1).values
    below = torch.searchsorted(ordered, key, right=False)
    at_or_below = torch.searchsorted(ordered, key, right=True)
    return torch.where(mask, (below + at_or_below + 1).double() / 2, 0.0)


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
    da = torch.where(mask, average_ranks(a, mask) - center, 0.0)
    db = torch.where(mask, average_ranks(b, mask) - center, 0.0)
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
