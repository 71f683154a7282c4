"""Within-trajectory normalization (SPEC "Within-trajectory normalization"): a salience ``s [B, T]``
into token weights ``w`` with mean 1 over each row's valid tokens."""

from __future__ import annotations

import torch

from arca_sweep.credit.registry import check_choice
from arca_sweep.diagnostics.concentration import average_ranks

NORMALIZE_METHODS = ("mean", "softmax", "rank", "none")


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
    check_choice("method", method, NORMALIZE_METHODS)
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
        ranks = average_ranks(torch.where(nonfinite, 0.0, s), mask)
        w = (ranks / ((mask.sum(dim=-1, keepdim=True).double() + 1) / 2)).to(s.dtype)
    else:
        w = s
    if mix != 1.0:
        w = torch.where(mask, 1 + mix * (w - 1), 0.0)
    if clip_max is not None:
        w = w.clamp(max=clip_max) if method == "none" else _mean_one(w.clamp(max=clip_max), mask)
    return w
