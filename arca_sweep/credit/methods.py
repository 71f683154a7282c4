"""The literature's credit methods, each one registered function with its formula, its source and what
was checked against it in the docstring: ``entropy_mask`` (Wang et al. 2025), ``clip_cov`` and
``kl_cov`` (Cui et al. 2025), ``archer`` (Wang et al. 2025), ``entropy_advantage`` (Cheng et al. 2025);
``ktae`` has its own module, :mod:`arca_sweep.credit.ktae`. A new method is one function here decorated
with :func:`~arca_sweep.credit.registry.register_method` plus one ``conf/credit/<name>.yaml``.
"""

from __future__ import annotations

import torch

from arca_sweep.credit.registry import (
    GroupContext,
    TokenCredit,
    TokenStats,
    as_float,
    finish,
    ones,
    register_method,
    stat_field,
)


def token_advantages(stats: TokenStats, ctx: GroupContext) -> torch.Tensor:
    """``A_i`` broadcast over each row's tokens (0 off the response)."""
    adv = ctx.advantages.to(stats.mask.device)[:, None].expand(stats.mask.shape)
    return torch.where(stats.mask.bool(), as_float(adv), 0.0)


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
        salience=finish(high_entropy_mask(stat_field(stats, "entropy"), stats.mask, rho), stats.mask)
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
        token_advantages(stats, ctx),
        as_float(stat_field(stats, "logp")),
        stats.mask,
        ratio=ratio,
        lb=lb,
        ub=ub,
        generator=ctx.generator,
    )
    return TokenCredit(salience=ones(stats), grad_mask=~chosen)


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
    chosen = kl_cov_selection(
        token_advantages(stats, ctx), as_float(stat_field(stats, "logp")), stats.mask, ratio
    )
    inf = torch.full(stats.mask.shape, torch.inf, device=stats.mask.device)
    return TokenCredit(
        salience=ones(stats),
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
    h = torch.where(mask, as_float(entropy), torch.nan)
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
    high = response_entropy_split(stat_field(stats, "entropy"), stats.mask, quantile)
    clip = torch.where(high, float(high_entropy_clip), float(low_entropy_clip))
    kl = torch.where(high, float(high_entropy_kl), float(low_entropy_kl))
    return TokenCredit(
        salience=ones(stats), clip_low=clip, clip_high=clip, ref_kl_coef=torch.where(stats.mask, kl, 0.0)
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
    entropy = as_float(stat_field(stats, "entropy"))
    psi = torch.minimum(alpha * entropy, token_advantages(stats, ctx).abs() / kappa)
    return TokenCredit(salience=ones(stats), bonus=finish(psi, stats.mask))
