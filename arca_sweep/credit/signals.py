"""The five credit signals (SPEC "Credit signals"): raw salience ``s_t >= 0`` of each response token.

Token advantage ``A_(i,t) = A_i * w_(i,t)`` with ``w = normalize(s)``. A sixth signal is one function
here decorated with :func:`~arca_sweep.credit.registry.register_signal` (its ``needs`` the TokenStats
fields it reads) plus one ``conf/credit/<name>.yaml``.
"""

from __future__ import annotations

import torch

from arca_sweep.credit.registry import (
    TokenStats,
    as_float,
    check_choice,
    finish,
    ones,
    register_signal,
    stat_field,
)


@register_signal("uniform")
def uniform_salience(stats: TokenStats, *, mode: str = "clamp", estimator: str = "exact") -> torch.Tensor:
    """Plain GRPO: ``s_t = 1``."""
    return ones(stats)


@register_signal("surprisal", needs={"logp"})
def surprisal_salience(stats: TokenStats, *, mode: str = "clamp", estimator: str = "exact") -> torch.Tensor:
    """``s_t = -log pi_theta(y_t | context)``, clamped at 0 against round-off."""
    return finish((-as_float(stat_field(stats, "logp"))).clamp(min=0), stats.mask)


@register_signal("entropy", needs={"entropy", "ref_entropy"})
def entropy_salience(stats: TokenStats, *, mode: str = "clamp", estimator: str = "exact") -> torch.Tensor:
    """Entropy reduction ``s_t = max(H(pi_ref)_t - H(pi_theta)_t, 0)``;
    ``mode="abs"``: ``s_t = |H(pi_ref)_t - H(pi_theta)_t|``."""
    check_choice("mode", mode, ("clamp", "abs"))
    reduction = as_float(stat_field(stats, "ref_entropy")) - as_float(stat_field(stats, "entropy"))
    s = reduction.abs() if mode == "abs" else reduction.clamp(min=0)
    return finish(s, stats.mask)


@register_signal("divergence", needs={"kl"}, needs_by_option=[("estimator", "k3", {"logp", "ref_logp"})])
def divergence_salience(stats: TokenStats, *, mode: str = "clamp", estimator: str = "exact") -> torch.Tensor:
    """Policy divergence ``s_t = KL(pi_theta(.) || pi_ref(.))`` at t, exact over the vocabulary
    (``stats.kl``, clamped at 0 against round-off).

    ``estimator="k3"``: with ``d_t = log pi_ref(y_t) - log pi_theta(y_t)``,
    ``s_t = exp(d_t) - d_t - 1`` (computed as ``expm1(d_t) - d_t``, clamped at 0).
    """
    check_choice("estimator", estimator, ("exact", "k3"))
    if estimator == "k3":
        d = as_float(stat_field(stats, "ref_logp")) - as_float(stat_field(stats, "logp"))
        s = torch.expm1(d) - d
    else:
        s = as_float(stat_field(stats, "kl"))
    return finish(s.clamp(min=0), stats.mask)


@register_signal("arca", needs={"hidden", "ref_hidden"})
def arca_salience(stats: TokenStats, *, mode: str = "clamp", estimator: str = "exact") -> torch.Tensor:
    """Adapter-residual credit: ``s_t = ||h_adapted_t - h_base_t||_2`` over the hidden dimension,
    differenced in float32."""
    residual = as_float(stat_field(stats, "hidden")) - as_float(stat_field(stats, "ref_hidden"))
    return finish(torch.linalg.vector_norm(residual, dim=-1), stats.mask)
