"""Sequence advantage estimators (``advantage.estimator``, SPEC "Advantage estimators"): the A_i that every
credit method spreads over the response's tokens, A_(i,t) = A_i * w_(i,t).

Each estimator is one registered function of the step's rewards, grouped by prompt ([P, G]: the G samples
of each of P prompts), and of the responses' token counts (for the estimators that whiten over the batch's
tokens); it returns A [P, G]. One more is one function here plus one ``conf/advantage/<name>.yaml``.
Outcome rewards only (one scalar per response): the return of every token is the reward (verl's gamma = 1),
so A_i is constant along the response.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

EPS = 1e-6  # GRPO's std guard (DeepSeekMath, TRL, verl's ``epsilon``)
WHITEN_EPS = 1e-8  # verl ``masked_whiten``: rsqrt(var + 1e-8), mean over (tokens + 1e-8)

Estimator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ESTIMATORS: dict[str, Estimator] = {}


def register_estimator(name: str) -> Callable[[Estimator], Estimator]:
    def add(fn: Estimator) -> Estimator:
        ESTIMATORS[name] = fn
        return fn

    return add


def estimate(name: str, rewards: torch.Tensor, group_size: int, lengths: torch.Tensor | None = None):
    """A [N] float32 of the flat rewards [N] (groups of ``group_size`` in order) under estimator ``name``;
    ``lengths`` [N]: response tokens (default 1 each)."""
    if name not in ESTIMATORS:
        raise ValueError(f"advantage.estimator={name!r}; valid: {', '.join(ESTIMATORS)}")
    r = rewards.double().view(-1, group_size)
    n = torch.ones_like(r) if lengths is None else lengths.double().view(-1, group_size)
    return ESTIMATORS[name](r, n).flatten().float()


def spread(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[P] bool: the groups whose rewards are not all equal (the others carry no advantage under grpo,
    dr_grpo and rloo)."""
    r = rewards.view(-1, group_size)
    return (r != r[:, :1]).any(1)


def frac_zero_spread(rewards: torch.Tensor, group_size: int) -> float:
    """The share of groups whose rewards are all equal (``reward/frac_zero_std``)."""
    return 1.0 - spread(rewards, group_size).double().mean().item()


def overlong_penalty(lengths: torch.Tensor, max_len: int, cache: int, factor: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al., arXiv 2503.14476, eq. 13), added to each response's
    reward: 0 up to ``max_len - cache`` tokens, then ``-factor * (|y| - (max_len - cache)) / cache``, linear
    down to ``-factor`` at the cap, and ``-factor`` beyond it (verl ``DAPORewardManager`` overlong_buffer
    ``len``/``penalty_factor``; TRL ``get_soft_overlong_punishment``). ``cache = 0``: no penalty."""
    if cache <= 0:
        return torch.zeros(lengths.shape, dtype=torch.float64)
    over = lengths.double() - (max_len - cache)
    return (-factor * over / cache).clamp(min=-factor, max=0.0)


def _group_mean(r: torch.Tensor) -> torch.Tensor:
    """Each group's mean reward [P, 1]; 0 for a group of one (verl: ``id2mean = 0`` when it has one score)."""
    return r.mean(1, keepdim=True) if r.shape[1] > 1 else torch.zeros_like(r[:, :1])


def _whiten(x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """verl ``masked_whiten`` of a per-response value that every one of its ``tokens`` carries: the mean and
    the Bessel-corrected variance are over the batch's tokens (a long response weighs more)."""
    total = tokens.sum()
    if total <= 1:
        raise ValueError("whitening over the batch's tokens needs at least 2 response tokens")
    mean = (x * tokens).sum() / (total + WHITEN_EPS)
    var = ((x - mean) ** 2 * tokens).sum() / (total + WHITEN_EPS) * total / (total - 1)
    return (x - mean) * torch.rsqrt(var + WHITEN_EPS)


@register_estimator("grpo")
def grpo(r: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """GRPO: ``A_i = (r_i - mean(r)) / (std(r) + 1e-6)`` within the group, std unbiased (DeepSeekMath,
    arXiv 2402.03300; TRL ``GRPOTrainer`` scale_rewards="group"; verl ``compute_grpo_outcome_advantage``).
    A group of one: mean 0, std 1 (verl)."""
    if r.shape[1] == 1:
        return r / (1 + EPS)
    return (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + EPS)


@register_estimator("dr_grpo")
def dr_grpo(r: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO: ``A_i = r_i - mean(r)``, no std scaling (Liu et al., arXiv 2503.20783; verl grpo with
    ``norm_adv_by_std_in_grpo=False``; TRL scale_rewards="none")."""
    return r - _group_mean(r)


@register_estimator("rloo")
def rloo(r: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """RLOO: ``A_i = r_i - mean_(j != i) r_j = G / (G - 1) * (r_i - mean(r))`` (Ahmadian et al., arXiv
    2402.14740; verl ``compute_rloo_outcome_advantage``). A group of one keeps ``A = r`` (verl)."""
    g = r.shape[1]
    if g == 1:
        return r.clone()
    return (r - r.mean(1, keepdim=True)) * g / (g - 1)


@register_estimator("reinforce_pp")
def reinforce_pp(r: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """REINFORCE++: the return ``r_i`` whitened over the batch's response tokens,
    ``A_i = (r_i - mu) / sqrt(var + 1e-8)`` with mu and var (Bessel-corrected) token-weighted over the whole
    batch, no group baseline (Hu, arXiv 2501.03262; verl ``compute_reinforce_plus_plus_outcome_advantage``,
    gamma = 1)."""
    return _whiten(r, tokens)


@register_estimator("reinforce_pp_baseline")
def reinforce_pp_baseline(r: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """REINFORCE++ with the group baseline: ``r_i - mean(r)`` within the group (0 for a group of one), then
    whitened over the batch's response tokens as :func:`reinforce_pp` (Hu, arXiv 2501.03262; verl
    ``compute_reinforce_plus_plus_baseline_outcome_advantage``)."""
    return _whiten(r - _group_mean(r), tokens)
