"""Rollout correction (SPEC "Rollout correction"): importance weights for the sampler/learner mismatch.

The rollout engine draws y_t from its own distribution mu (its log-probs ``mu_t``, after temperature
and top-p), which differs from the learner's pi_old (``logp_old_t``) by rounding (bf16, other kernels).
The PPO-clip surrogate assumes samples from pi_old; truncated importance sampling reweights each
token's policy-gradient loss by a detached, capped ratio:

- ``token``:    c_t = min(exp(logp_old_t - mu_t), C)
- ``sequence``: c_i = min(exp(sum_t (logp_old_t - mu_t)), C), the same for every token of row i
- ``none``:     c = 1 (the loss is exactly the uncorrected one)

with C = ``loss.rollout_is_cap``. Checked against verl (``rollout_corr_helper.
compute_rollout_correction_weights``: ``rollout_is="token" | "sequence"``, log ratio clamped to
+-20 before ``exp`` (its SAFETY_BOUND), then ``clamp(max=rollout_is_threshold)``, default 2.0, applied
to the policy-gradient loss only, not the KL term) and TRL (``GRPOTrainer``,
``vllm_importance_sampling_correction``: ``exp(old_logps - sampling_logps).clamp(max=cap)``
per token, or of the summed log ratio for ``sequence_truncate``, multiplied into the per-token loss
before the beta * KL term; TRL 1.16 clamps the ratio only, not the log ratio, so it differs from verl
and from this module only where logp_old - mu < -20, i.e. on weights below 2e-9). verl's functions are
compared on identical inputs in ``tests/test_rollout_correction.py`` (where verl is installed).

``auto`` resolves by the learner's and the engine's dtypes (:data:`AUTO_MODE`): float32 engines
agree with the learner to ~1e-5 nats per token (BENCHMARKS.md), so every c_t is 1 to within 1e-5
and ``none`` keeps the loss exact; bfloat16/float16 round each log-prob by up to ~0.1 nat (ratios up
to 1.12 measured), where ``token`` at C = 2 (verl's default; TRL 1.16 defaults to 3.0 with
sequence-level masking) corrects the bulk and caps the tail.

Under ``rollout.top_p < 1`` mu is renormalized over the nucleus while the learner scores the full
softmax, so c_t sits below 1 by the nucleus mass: a real difference of distributions, which the
correction then weighs in.
"""

from __future__ import annotations

import torch

MODES = ("auto", "none", "token", "sequence")
AUTO_MODE = {"float32": "none", "float64": "none", "bfloat16": "token", "float16": "token"}
SAFETY_BOUND = 20.0  # |log ratio| clamp before exp, as verl: exp(20) = 4.9e8 cannot overflow float32


def resolve_mode(mode: str, dtype: torch.dtype, engine_dtype: str | None = None) -> str:
    """``auto`` -> ``token`` if the learner's dtype or the engine's (``rollout.dtype``, null: the
    learner's) is half precision, else ``none`` (:data:`AUTO_MODE`); other modes unchanged."""
    if mode not in MODES:
        raise ValueError(f"loss.rollout_correction={mode!r} is not valid; choose one of: {', '.join(MODES)}")
    if mode != "auto":
        return mode
    dtypes = {str(dtype).removeprefix("torch."), engine_dtype} - {None}
    return "token" if any(AUTO_MODE[d] == "token" for d in dtypes) else "none"


def importance_ratios(logp_old, sampler_logp, mask, mode: str) -> torch.Tensor:
    """Uncapped ratios [B, T]: exp(logp_old_t - mu_t) per token (``token``, and ``none`` for logging),
    or exp(sum_t (logp_old_t - mu_t)) broadcast over row i (``sequence``); 1 off the mask."""
    mask = mask.bool()
    log_ratio = torch.where(mask, logp_old.detach().double() - sampler_logp.detach().double(), 0.0)
    if mode == "sequence":
        log_ratio = log_ratio.sum(-1, keepdim=True).expand_as(log_ratio)
    ratio = torch.exp(log_ratio.clamp(-SAFETY_BOUND, SAFETY_BOUND))
    return torch.where(mask, ratio, 1.0)


def rollout_correction_weights(logp_old, sampler_logp, mask, mode: str, cap: float) -> torch.Tensor:
    """Detached weights c [B, T] (float32, 0 off the mask) multiplying each token's PPO-clip loss:
    ``min(ratio, cap)`` with :func:`importance_ratios`; all ones on the mask for ``none``."""
    mask = mask.bool()
    if mode == "none":
        return mask.float()
    if mode not in ("token", "sequence"):
        raise ValueError(
            f"rollout correction mode={mode!r}; valid: none, token, sequence (resolve auto first)"
        )
    if not cap > 0:
        raise ValueError(f"loss.rollout_is_cap={cap} must be > 0")
    c = importance_ratios(logp_old, sampler_logp, mask, mode).clamp(max=cap)
    return torch.where(mask, c, 0.0).float()


def rollout_is_metrics(logp_old, sampler_logp, mask, mode: str, cap: float) -> dict[str, float]:
    """``rollout/is_ratio/{mean,max}`` and ``rollout/is_ratio/clipped_frac`` over the batch: the
    uncapped ratio per token (``token``, ``none``) or per sequence (``sequence``), and the share of
    tokens (sequences) whose ratio exceeds ``cap`` (for ``none``: would exceed it)."""
    mask = mask.bool()
    ratio = importance_ratios(logp_old, sampler_logp, mask, "sequence" if mode == "sequence" else "token")
    values = ratio[:, 0][mask.any(-1)] if mode == "sequence" else ratio[mask]
    if values.numel() == 0:
        return {}
    return {
        "rollout/is_ratio/mean": values.mean().item(),
        "rollout/is_ratio/max": values.max().item(),
        "rollout/is_ratio/clipped_frac": (values > cap).double().mean().item(),
    }
