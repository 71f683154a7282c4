"""Rollout correction weights and the k3 clamp against a slow loop, against verl's own functions on
identical inputs (where verl is installed), and wired into the learner's gradient and a real run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from arca_sweep.learner import Learner, LearnerSettings
from arca_sweep.learner.loss import ppo_clip_token_loss
from arca_sweep.learner.rollout_correction import (
    SAFETY_BOUND,
    resolve_mode,
    rollout_correction_weights,
    rollout_is_metrics,
)
from arca_sweep.model import load_policy
from arca_sweep.testing import make_batch, make_config, randomize_adapter
from tests.helpers import REPO, cli, records
from tests.verl_peer import import_verl


def perturbed(seed=0, rows=5, width=9):
    """Learner log-probs, sampler log-probs = learner + bf16-sized noise with a few outliers, a ragged mask."""
    g = torch.Generator().manual_seed(seed)
    logp_old = -torch.rand(rows, width, generator=g, dtype=torch.float64) * 6
    mu = logp_old + torch.randn(rows, width, generator=g, dtype=torch.float64) * 0.05
    mu[0, 1] -= 3.0  # the sampler found this token far less likely: ratio e^3 > cap
    mu[1, 2] += 30.0  # log ratio -30 and +40: beyond verl's +-20 safety bound
    mu[2, 0] -= 40.0
    lengths = [9, 7, 4, 1, 0]
    mask = torch.arange(width)[None] < torch.tensor(lengths)[:, None]
    return logp_old, mu, mask


def slow_weights(logp_old, mu, mask, mode, cap):
    out = torch.zeros_like(logp_old, dtype=torch.float64)
    for i in range(logp_old.shape[0]):
        valid = [t for t in range(logp_old.shape[1]) if mask[i, t]]
        if mode == "sequence":
            total = sum(float(logp_old[i, t] - mu[i, t]) for t in valid)
            c = min(math.exp(max(-SAFETY_BOUND, min(SAFETY_BOUND, total))), cap)
        for t in valid:
            if mode == "token":
                d = float(logp_old[i, t] - mu[i, t])
                c = min(math.exp(max(-SAFETY_BOUND, min(SAFETY_BOUND, d))), cap)
            out[i, t] = 1.0 if mode == "none" else c
    return out


@pytest.mark.parametrize("mode", ["none", "token", "sequence"])
@pytest.mark.parametrize("cap", [2.0, 1.01, 10.0])
def test_weights_match_a_slow_loop(mode, cap):
    logp_old, mu, mask = perturbed()
    got = rollout_correction_weights(logp_old.float(), mu.float(), mask, mode, cap)
    want = slow_weights(logp_old.float().double(), mu.float().double(), mask, mode, cap)
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=1e-6)
    assert got.dtype == torch.float32 and not got.requires_grad
    assert got[~mask].abs().max() == 0
    if mode == "token":  # the outliers: capped above, tiny below
        assert got[0, 1] == got[2, 0] == pytest.approx(cap)
        assert got[1, 2] == pytest.approx(math.exp(-SAFETY_BOUND))


def test_metrics_match_a_slow_loop():
    logp_old, mu, mask = perturbed()
    for mode in ("token", "sequence", "none"):
        m = rollout_is_metrics(logp_old, mu, mask, mode, cap=2.0)
        if mode == "sequence":
            values = [
                math.exp(max(-20, min(20, float((logp_old[i] - mu[i])[mask[i]].sum()))))
                for i in range(5)
                if mask[i].any()
            ]
        else:
            values = [
                math.exp(max(-20, min(20, float(logp_old[i, t] - mu[i, t])))) for i, t in mask.nonzero()
            ]
        assert m["rollout/is_ratio/mean"] == pytest.approx(sum(values) / len(values))
        assert m["rollout/is_ratio/max"] == pytest.approx(max(values))
        assert m["rollout/is_ratio/clipped_frac"] == pytest.approx(sum(v > 2 for v in values) / len(values))


def test_auto_is_none_in_float32_and_token_in_half_precision():
    assert resolve_mode("auto", torch.float32) == "none"
    assert resolve_mode("auto", torch.bfloat16) == "token"
    assert resolve_mode("auto", torch.float16) == "token"
    assert resolve_mode("sequence", torch.float32) == "sequence"
    assert resolve_mode("auto", torch.float32, "bfloat16") == "token"  # fp32 learner, bf16 vLLM engine
    assert resolve_mode("auto", torch.float32, "float32") == "none"
    with pytest.raises(ValueError, match="loss.rollout_correction='tok'"):
        resolve_mode("tok", torch.float32)


def test_weights_scale_the_policy_gradient_term_only():
    g = torch.Generator().manual_seed(1)
    logp = (-torch.rand(3, 6, generator=g) * 4).requires_grad_()
    ref = -torch.rand(3, 6, generator=g) * 4
    adv = torch.randn(3, 6, generator=g)
    c = torch.rand(3, 6, generator=g) * 2
    pg = ppo_clip_token_loss(logp, logp.detach(), adv, 0.2, 0.2)
    kl = ppo_clip_token_loss(logp, logp.detach(), adv * 0, 0.2, 0.2, ref, beta=0.5)
    both = ppo_clip_token_loss(logp, logp.detach(), adv, 0.2, 0.2, ref, beta=0.5, is_weight=c)
    torch.testing.assert_close(both, c * pg + kl)


# ---------------------------------------------------------------- peers on identical inputs


def import_verl_functions():
    """verl's compute_rollout_correction_weights and kl_penalty (tests/verl_peer.py)."""
    helper = import_verl("verl.trainer.ppo.rollout_corr_helper")
    return helper.compute_rollout_correction_weights, import_verl("verl.trainer.ppo.core_algos").kl_penalty


@pytest.mark.parametrize("mode", ["token", "sequence"])
def test_weights_equal_verls_compute_rollout_correction_weights(mode):
    compute_rollout_correction_weights, _ = import_verl_functions()
    logp_old, mu, mask = perturbed(seed=3)
    want, _ = compute_rollout_correction_weights(
        logp_old - mu, mask.double(), rollout_is=mode, rollout_is_threshold=2.0
    )
    got = rollout_correction_weights(logp_old, mu, mask, mode, cap=2.0)
    torch.testing.assert_close(got.double(), want.double() * mask, atol=1e-6, rtol=1e-6)


def test_k3_penalty_is_verls_clamped_low_var_kl():
    _, kl_penalty = import_verl_functions()
    logp = torch.tensor([-1.0, -2.0, -50.0, -0.1, -3.0], dtype=torch.float64)
    ref = torch.tensor([-1.2, -0.5, -0.01, -95.0, -3.0], dtype=torch.float64)  # k3 > 10, log ratio > 20
    ours = ppo_clip_token_loss(logp, logp, torch.zeros_like(logp), 0.2, 0.2, ref, beta=1.0)
    torch.testing.assert_close(ours, kl_penalty(logp, ref, "low_var_kl"))


def test_k3_clamp_keeps_the_penalty_finite_where_exp_overflows_float32():
    logp = torch.tensor([-100.0, -1.0], requires_grad=True)
    ref = torch.tensor([-0.5, -1.3])  # ref - logp = 99.5: exp overflows float32
    loss = ppo_clip_token_loss(logp, logp.detach(), torch.zeros(2), 0.2, 0.2, ref, beta=1.0)
    assert torch.isfinite(loss).all() and loss[0] == 10.0
    d = -0.3
    assert loss[1].item() == pytest.approx(math.exp(d) - d - 1, rel=1e-5)  # unchanged in the small-KL regime
    loss.sum().backward()
    assert torch.isfinite(logp.grad).all() and logp.grad[0] == 0  # the clamped token carries no gradient


# ---------------------------------------------------------------- wired into the learner


def lora_grads(tokenizer, mode, shift, cap=2.0):
    """One learner step with the sampler's log-probs = the learner's - shift; the LoRA gradients."""
    cfg = make_config(
        "credit=uniform",
        "diagnostics.shadow=false",
        f"loss.rollout_correction={mode}",
        f"loss.rollout_is_cap={cap}",
        "optim.grad_clip=1e9",  # compare raw gradients, not clipped ones,
    )
    model = load_policy(cfg.model, cfg.rank, torch.device("cpu"), seed=0)
    randomize_adapter(model, scale=0.1)
    batch = make_batch(tokenizer, ["Compute 1 + 2.", "Compute 7 - 3."], ["1 + 2 = 3", "7 - 3 = 4 so 4"])
    learner = Learner(model, LearnerSettings.from_config(cfg), temperature=1.0)
    with torch.no_grad():
        _, logp = learner.score(batch, torch.arange(2))
    batch.sampling_logprobs = (logp - shift).masked_fill(~batch.response_mask, 0.0)
    learner.step(batch, torch.tensor([1.0, -1.0]))
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])


def test_learner_gradient_is_scaled_by_the_importance_weights(tiny_tokenizer):
    plain = lora_grads(tiny_tokenizer, "none", 0.0)
    tol = dict(atol=1e-5 * plain.abs().max().item(), rtol=1e-5)  # mu = logp - shift is rounded in float32
    assert plain.abs().max() > 0
    torch.testing.assert_close(lora_grads(tiny_tokenizer, "token", 0.0), plain, **tol)
    # every token's ratio is e^0.4 = 1.49 < cap: the whole gradient scales by it
    torch.testing.assert_close(lora_grads(tiny_tokenizer, "token", 0.4), plain * math.exp(0.4), **tol)
    # sequence: the product over >= 5 tokens is e^2 or more, capped at 2
    torch.testing.assert_close(lora_grads(tiny_tokenizer, "sequence", 0.4), plain * 2.0, **tol)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["none", "token", "sequence"])
def test_smoke_run_per_mode(tmp_path, mode):
    arm = tmp_path / mode
    cli(
        "rollout=hf",
        "budget=smoke",
        "budget.steps=2",
        f"loss.rollout_correction={mode}",
        "diagnostics.fidelity_every=2",
        f"hydra.run.dir={arm}",
        cwd=REPO,
    )
    rows = records(arm)[1:]
    assert len(rows) == 2
    for r in rows:
        assert r["rollout/is_ratio/mean"] == pytest.approx(1.0, abs=1e-3)  # float32: sampler = learner
        assert 1.0 <= r["rollout/is_ratio/max"] < 1.01
        assert r["rollout/is_ratio/clipped_frac"] == 0.0
        assert math.isfinite(r["loss"])
    assert "fidelity/arca/rel_err" not in rows[0]  # fidelity_every=2: step 2 only
    for signal in ("surprisal", "entropy", "divergence", "arca"):
        assert 0 <= rows[1][f"fidelity/{signal}/rel_err"] < 1e-3  # a float32 run against float64
    assert json.loads((arm / "summary.json").read_text())["steps"] == 2
