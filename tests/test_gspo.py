"""GSPO's sequence ratio (``loss.ratio_level=sequence``, arca_sweep/learner/loss.py ``policy_log_ratio``):
a plain reference, verl 0.9.1's ``compute_policy_loss_gspo`` and TRL 1.16's ``GRPOTrainer._compute_loss``
(``importance_sampling_level="sequence"``), each on identical inputs, loss and gradient."""

from __future__ import annotations

import math
import types
from collections import defaultdict

import pytest
import torch

from arca_sweep.learner.loss import aggregate_loss, policy_log_ratio, ppo_clip_token_loss
from tests.verl_peer import import_verl

EPS_LOW, EPS_HIGH = 0.2, 0.28


def inputs(seed: int, rows: int = 6, width: int = 9, token_varying: bool = True):
    """Log-probs (a leaf with grad), old log-probs within +-0.3 of them (some ratios clip), token advantages
    A_i * w_t (w: a credit's mean-1 weights, or 1) and a right-padded response mask of lengths 1..width."""
    g = torch.Generator().manual_seed(seed)
    logp_old = -torch.rand(rows, width, generator=g, dtype=torch.float64) * 3
    logp = (
        logp_old + (torch.rand(rows, width, generator=g, dtype=torch.float64) - 0.5) * 0.6
    ).requires_grad_()
    lengths = torch.randint(1, width + 1, (rows,), generator=g)
    mask = torch.arange(width)[None] < lengths[:, None]
    adv = torch.randn(rows, 1, generator=g, dtype=torch.float64)
    w = (
        torch.rand(rows, width, generator=g, dtype=torch.float64) * 2
        if token_varying
        else torch.ones(rows, width)
    )
    return logp, logp_old, adv * w.double(), mask


def ours(logp, logp_old, token_adv, mask, agg: str):
    log_ratio = policy_log_ratio(logp, logp_old, mask, "sequence")
    loss = ppo_clip_token_loss(logp, logp_old, token_adv, EPS_LOW, EPS_HIGH, log_ratio=log_ratio)
    total = aggregate_loss(
        loss, mask, agg, total_tokens=int(mask.sum()), total_seqs=mask.shape[0], norm_len=9
    )
    (grad,) = torch.autograd.grad(total, logp)
    return total.detach(), grad


def test_the_sequence_ratio_by_hand():
    """Its value is the length-normalized sequence ratio on every token; its gradient is s_i per token."""
    logp, logp_old, _, mask = inputs(0)
    log_ratio = policy_log_ratio(logp, logp_old, mask, "sequence")
    for i in range(mask.shape[0]):
        n = int(mask[i].sum())
        mean = sum(float(logp[i, t] - logp_old[i, t]) for t in range(n)) / n
        assert log_ratio[i, :n].detach().tolist() == pytest.approx([mean] * n, abs=1e-12)
    weights = torch.randn(mask.shape, dtype=torch.float64)
    (grad,) = torch.autograd.grad((torch.exp(log_ratio) * weights * mask).sum(), logp)
    s = torch.exp(log_ratio.detach())
    assert torch.allclose(grad, s * weights * mask, atol=1e-12)


def test_token_level_is_the_plain_ratio():
    logp, logp_old, adv, mask = inputs(1)
    assert torch.equal(policy_log_ratio(logp, logp_old, mask, "token"), logp - logp_old)
    with pytest.raises(ValueError, match="loss.ratio_level='tokens'"):
        policy_log_ratio(logp, logp_old, mask, "tokens")


def test_at_the_first_update_the_sequence_ratio_is_the_token_update():
    """logp_old = logp (E = M = 1): s = 1 and its gradient is each token's, so GSPO changes nothing there."""
    logp, _, adv, mask = inputs(2)
    old = logp.detach().clone()
    seq = ours(logp, old, adv, mask, "token-mean")
    loss = ppo_clip_token_loss(logp, old, adv, EPS_LOW, EPS_HIGH)
    total = aggregate_loss(loss, mask, "token-mean", total_tokens=int(mask.sum()), total_seqs=6, norm_len=9)
    (grad,) = torch.autograd.grad(total, logp)
    assert torch.allclose(seq[0], total.detach(), atol=1e-12) and torch.allclose(seq[1], grad, atol=1e-12)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
@pytest.mark.parametrize("seed", [3, 4, 5])
def test_equal_to_verl_gspo_with_token_advantages(agg, seed):
    """verl's GSPO-token loss, per-token advantages (a credit's weights), loss and gradient."""
    core = import_verl("verl.trainer.ppo.core_algos")
    config = core.ActorConfig()
    config.clip_ratio, config.clip_ratio_low, config.clip_ratio_high = EPS_LOW, EPS_LOW, EPS_HIGH
    config.global_batch_info = {}
    logp, logp_old, adv, mask = inputs(seed)
    theirs, _ = core.compute_policy_loss_gspo(
        logp_old, logp, adv, mask.double(), loss_agg_mode=agg, config=config
    )
    (their_grad,) = torch.autograd.grad(theirs, logp)
    loss, grad = ours(logp, logp_old, adv, mask, agg)
    # (verl's seq-mean-token-mean divides each response by its length + 1e-8: 1e-9 relative at length 9)
    assert torch.allclose(loss, theirs.detach(), rtol=1e-8, atol=1e-12)
    assert torch.allclose(grad, their_grad, rtol=1e-8, atol=1e-12)


def trl_loss(logp, logp_old, advantages, mask):
    """TRL 1.16's own ``GRPOTrainer._compute_loss`` (loss_type "grpo": seq-mean-token-mean), sequence level,
    on these log-probs: the trainer's state is a stand-in object holding only what that method reads."""
    pytest.importorskip("trl")
    from trl.trainer.grpo_trainer import GRPOTrainer

    rows, width = mask.shape
    trainer = types.SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
        aux_loss_enabled=False,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level="sequence",
        beta=0.0,
        loss_type="grpo",
        epsilon_low=EPS_LOW,
        epsilon_high=EPS_HIGH,
        args=types.SimpleNamespace(delta=None),
        use_vllm=False,
        model=types.SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        _entropy_bonus_enabled=False,
        _metrics=defaultdict(lambda: defaultdict(list)),
        accelerator=types.SimpleNamespace(gather=lambda x: x, reduce=lambda x, reduction: x),
    )
    batch = {
        "prompt_ids": torch.zeros(rows, 1, dtype=torch.long),
        "prompt_mask": torch.ones(rows, 1, dtype=torch.long),
        "completion_ids": torch.zeros(rows, width, dtype=torch.long),
        "completion_mask": mask.long(),
        "advantages": advantages,
        "old_per_token_logps": logp_old,
    }
    return GRPOTrainer._compute_loss(trainer, None, batch)


@pytest.mark.parametrize("seed", [6, 7, 8])
def test_equal_to_trl_sequence_level_with_sequence_advantages(seed):
    """With one advantage per response (``credit=uniform``), TRL's sequence-level loss and gradient."""
    logp, logp_old, adv, mask = inputs(seed, token_varying=False)
    theirs = trl_loss(logp, logp_old, adv[:, 0], mask)
    (their_grad,) = torch.autograd.grad(theirs, logp)
    loss, grad = ours(logp, logp_old, adv, mask, "seq-mean-token-mean")
    assert torch.allclose(loss, theirs.detach(), rtol=1e-10, atol=1e-12)
    assert torch.allclose(grad, their_grad, rtol=1e-9, atol=1e-12)
    assert not math.isclose(float(loss), 0.0)


def test_token_weights_reach_the_gradient_under_the_sequence_ratio():
    """Token credit is not averaged away: two weightings of one advantage give two gradients (TRL's ratio,
    whose gradient is the mean's, would give one)."""
    logp, logp_old, adv, mask = inputs(9)
    flat = adv.mean(1, keepdim=True).expand_as(adv)
    assert not torch.allclose(
        ours(logp, logp_old, adv, mask, "token-mean")[1], ours(logp, logp_old, flat, mask, "token-mean")[1]
    )
