"""The GRPO loss, pure: tensors in, tensors out (SPEC "Loss").

The per-token PPO-clip loss with its k3 penalty and a credit method's per-token
modifiers, and the loss aggregations (:data:`LOSS_AGGS`) that make micro-batch losses add up.
"""

from __future__ import annotations

import torch

LOSS_AGGS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
RATIO_LEVELS = ("token", "sequence")
SEQUENCE_LOG_RATIO_MAX = 10.0  # verl compute_policy_loss_gspo: log s_i,t clamped at 10 before exp


def policy_log_ratio(logp, logp_old, mask=None, level: str = "token"):
    """log rho [b, R], the ratio the PPO clip sees.

    - ``token``: log rho_t = log pi_theta(y_t) - log pi_old(y_t).
    - ``sequence`` (GSPO, Zheng et al., arXiv 2507.18071): the response's length-normalized ratio
      s_i = exp(mean_t (log pi_theta - log pi_old)) on every token, as GSPO-token writes it:
      log s_(i,t) = sg[log s_i] + log pi_theta(y_t) - sg[log pi_theta(y_t)], clamped at 10 (verl
      ``compute_policy_loss_gspo``). Its value is s_i, so the clip acts per sequence; its gradient is
      s_i * grad log pi_theta(y_t), so a token advantage A_(i,t) = A_i w_(i,t) still weighs each token's
      gradient. With A constant along the response (``credit=uniform``) the gradient is TRL's
      ``importance_sampling_level="sequence"`` one, whose ratio carries the gradient of the mean itself.
    """
    if level == "token":
        return logp - logp_old
    if level != "sequence":
        raise ValueError(f"loss.ratio_level={level!r}; valid: {', '.join(RATIO_LEVELS)}")
    m = mask.to(logp.dtype)
    seq = ((logp - logp_old) * m).sum(-1) / m.sum(-1).clamp(min=1)
    return (logp - logp.detach() + seq.detach()[:, None]).clamp(max=SEQUENCE_LOG_RATIO_MAX)


K3_LOG_RATIO_BOUND = 20.0  # verl core_algos.kl_penalty("low_var_kl"): clamp ref - logp to +-20 before exp
K3_BOUND = 10.0  # ... and the estimate to [-10, 10] after it


def ppo_clip_token_loss(
    logp,
    logp_old,
    token_adv,
    clip_low: float,
    clip_high: float,
    ref_logp=None,
    beta: float = 0.0,
    is_weight=None,
    log_ratio=None,
):
    """Per-token loss c * -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A) + beta * k3, with
    rho = exp(logp - logp_old) (or ``exp(log_ratio)``: :func:`policy_log_ratio`), c the detached rollout-correction weight (``is_weight``, 1 if None;
    :mod:`arca_sweep.learner.rollout_correction`, applied to the policy-gradient term only, as verl and TRL)
    and k3 = exp(d) - d - 1, d = clamp(ref - logp, -20, 20), clamped to at most 10 (an unbiased,
    non-negative estimate of KL(pi_theta || pi_ref)).

    The two k3 clamps are verl's (``kl_penalty(..., "low_var_kl")``): without the first, a token
    the reference finds 90 nats likelier overflows exp to inf in float32; the second bounds one
    token's penalty (and zeroes its gradient) where the estimator is far off its small-KL regime.
    """
    ratio = torch.exp(logp - logp_old if log_ratio is None else log_ratio)
    loss = -torch.minimum(ratio * token_adv, ratio.clamp(1 - clip_low, 1 + clip_high) * token_adv)
    if is_weight is not None:
        loss = loss * is_weight.detach()
    if beta:
        loss = loss + beta * k3_penalty(ref_logp, logp)
    return loss


def k3_penalty(ref_logp, logp):
    """k3 = exp(d) - d - 1 with d = clamp(ref - logp, -20, 20), clamped to at most 10 (verl's
    ``low_var_kl``; see :func:`ppo_clip_token_loss`)."""
    log_r = (ref_logp - logp).clamp(-K3_LOG_RATIO_BOUND, K3_LOG_RATIO_BOUND)
    return (torch.exp(log_r) - log_r - 1).clamp(-K3_BOUND, K3_BOUND)


def credit_token_loss(
    logp,
    logp_old,
    token_adv,
    tc,
    clip_low: float,
    clip_high: float,
    ref_logp,
    beta: float,
    is_weight=None,
    log_ratio=None,
):
    """The per-token loss with a credit method's modifiers (:class:`arca_sweep.credit.TokenCredit`):

    ``grad_mask_t * [ppo_clip(rho_t, A_t; eps_low_t, eps_high_t) + beta_t * k3_t + c_t * |log rho_t|]``

    where ``eps_*_t`` is the method's per-token clip range (else ``clip_low``/``clip_high``), ``beta_t``
    its per-token KL coefficient (else ``beta``), ``c_t`` its ratio penalty (else 0), and the grad mask
    zeroes the loss of the tokens it drops (else all kept). With no modifier set this is
    :func:`ppo_clip_token_loss` exactly. ``log_ratio``: the clip's ratio (:func:`policy_log_ratio`); the
    ratio penalty stays the token's own |log pi_theta - log pi_old|.
    """
    low = clip_low if tc.clip_low is None else tc.clip_low.to(logp.dtype)
    high = clip_high if tc.clip_high is None else tc.clip_high.to(logp.dtype)
    per_token_kl = tc.ref_kl_coef is not None
    loss = ppo_clip_token_loss(
        logp,
        logp_old,
        token_adv,
        low,
        high,
        ref_logp,
        0.0 if per_token_kl else beta,
        is_weight=is_weight,
        log_ratio=log_ratio,
    )
    if per_token_kl:
        loss = loss + tc.ref_kl_coef * k3_penalty(ref_logp, logp)
    if tc.ratio_penalty is not None:
        loss = loss + tc.ratio_penalty * (logp - logp_old).abs()
    if tc.grad_mask is not None:
        loss = torch.where(tc.grad_mask, loss, 0.0)
    return loss


def aggregate_loss(token_loss, mask, agg: str, *, total_tokens: int, total_seqs: int, norm_len: int):
    """Sum of this micro-batch's share of the batch loss, so micro-batch losses add up exactly:

    - ``token-mean``: sum over all tokens / tokens in the batch
    - ``seq-mean-token-mean``: mean over sequences of each sequence's token mean
    - ``seq-mean-token-sum-norm`` (Dr.GRPO): mean over sequences of token sum / ``norm_len``
    """
    token_loss = token_loss * mask
    if agg == "token-mean":
        return token_loss.sum() / total_tokens
    if agg == "seq-mean-token-mean":
        return (token_loss.sum(1) / mask.sum(1).clamp(min=1)).sum() / total_seqs
    if agg == "seq-mean-token-sum-norm":
        return (token_loss.sum(1) / norm_len).sum() / total_seqs
    raise ValueError(f"loss.agg={agg!r}; valid: {', '.join(LOSS_AGGS)}")
