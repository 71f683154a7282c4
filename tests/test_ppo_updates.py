"""Multi-update PPO (SPEC "Multi-update PPO") on the real tiny model against a naive loop: one
unpadded sequence at a time, plain full forwards, logp_old from the policy before any update, the
PPO-clip token-mean loss of each mini-batch, AdamW with the same settings."""

from __future__ import annotations

import pytest
import torch

from arca_sweep import credit
from arca_sweep.learner import Learner, LearnerSettings
from arca_sweep.testing import make_config

QUESTIONS = ("12 + 7", "88 - 24 + 29", "5 - 9", "40 + 2")
RESPONSES = ("12 + 7 = 19\n\\boxed{19}", "88 - 24 = 64\n\\boxed{93}", "The answer is -4.", "\\boxed{42}")
ADVANTAGES = torch.tensor([1.0, -1.0, 0.7, -0.7])


@pytest.fixture(scope="module")
def setup(learner_setup):
    _, model, batch = learner_setup(QUESTIONS, RESPONSES, scale=0.05, questions=True)
    return model, batch


def _params(model):
    return [p for p in model.parameters() if p.requires_grad]


def _sequence(batch, i):
    prompt = batch.prompt_ids[i][batch.prompt_mask[i]].tolist()
    return prompt, batch.response_ids[i][batch.response_mask[i]].tolist()


def _logp_and_entropy(model, prompt, response):
    logits = model(input_ids=torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1].float()
    logp = torch.log_softmax(logits, -1)
    entropy = -(logp.exp() * logp).sum(-1)
    return logp.gather(1, torch.tensor(response)[:, None])[:, 0], entropy.detach()


def naive_updates(model, batch, cfg, weights_of=None):
    """Per-update losses and the ratio range seen at each update, updating ``model`` in place."""
    o = cfg.optim
    optimizer = torch.optim.AdamW(_params(model), lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas))
    n = len(batch.texts)
    with torch.no_grad():
        old = [_logp_and_entropy(model, *_sequence(batch, i)) for i in range(n)]
    weights = weights_of([e for _, e in old]) if weights_of else [torch.ones_like(lp) for lp, _ in old]
    eps_low, eps_high = cfg.loss.clip_low, cfg.loss.clip_high
    losses, ratio_spread = [], []
    minis = [
        list(range(k, k + n // cfg.learner.mini_batches)) for k in range(0, n, n // cfg.learner.mini_batches)
    ]
    for _ in range(cfg.learner.ppo_epochs):
        for mini in minis:
            optimizer.zero_grad()
            tokens = sum(len(_sequence(batch, i)[1]) for i in mini)
            loss, spread = 0.0, 0.0
            for i in mini:
                logp, _ = _logp_and_entropy(model, *_sequence(batch, i))
                ratio = torch.exp(logp - old[i][0])
                a = ADVANTAGES[i] * weights[i]
                loss = (
                    loss - torch.minimum(ratio * a, ratio.clamp(1 - eps_low, 1 + eps_high) * a).sum() / tokens
                )
                spread = max(spread, (ratio.detach() - 1).abs().max().item())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(_params(model), o.grad_clip)
            optimizer.step()
            losses.append(loss.item())
            ratio_spread.append(spread)
    return losses, ratio_spread


def run_both(model, batch, cfg, weights_of=None):
    """(learner result, learner's final params, naive losses, naive ratio spreads, naive final params),
    both from the same starting adapter, which is restored afterwards."""
    start = [p.detach().clone() for p in _params(model)]
    result = Learner(model, LearnerSettings.from_config(cfg), temperature=1.0).step(batch, ADVANTAGES)
    learner_params = [p.detach().clone() for p in _params(model)]
    with torch.no_grad():
        for p, s in zip(_params(model), start, strict=True):
            p.copy_(s)
    losses, spreads = naive_updates(model, batch, cfg, weights_of)
    naive_params = [p.detach().clone() for p in _params(model)]
    with torch.no_grad():
        for p, s in zip(_params(model), start, strict=True):
            p.copy_(s)
    return result, learner_params, losses, spreads, naive_params


@pytest.mark.parametrize(
    "credit_overrides",
    [("credit=uniform",), ("credit=entropy_mask", "credit.options.rho=0.5")],
    ids=["uniform", "entropy_mask"],
)
def test_two_epochs_two_mini_batches_equal_the_naive_loop(setup, credit_overrides):
    model, batch = setup
    cfg = make_config(
        *credit_overrides,
        "diagnostics.shadow=false",
        "learner.ppo_epochs=2",
        "learner.mini_batches=2",
        "learner.micro_batch_size=1",
        "optim.lr=0.002",  # the default, already high enough that the clip binds
    )

    def entropy_mask(entropies):  # the batch's top-rho entropy quantile over the scoring pass
        mask = credit.high_entropy_mask(
            torch.nn.utils.rnn.pad_sequence(entropies, batch_first=True),
            torch.nn.utils.rnn.pad_sequence([torch.ones_like(e, dtype=torch.bool) for e in entropies], True),
            cfg.credit.options.rho,
        )
        return [mask[i, : len(e)].float() for i, e in enumerate(entropies)]

    weights_of = entropy_mask if cfg.credit.name == "entropy_mask" else None
    result, learner_params, losses, spreads, naive_params = run_both(model, batch, cfg, weights_of)
    assert len(losses) == 4 and result.metrics["loss/updates"] == 4
    assert spreads[0] < 1e-5, "the first update is on-policy: rho = 1"
    assert min(spreads[1:]) > 1e-2, "from the second update on the ratio departs from 1"
    assert result.loss == pytest.approx(sum(losses) / 4, rel=1e-4, abs=1e-6)
    # float32, four AdamW steps at a high lr: the fused scoring pass and length-sorted micro-batches sum
    # in another order than the naive loop, and Adam's g / sqrt(v) magnifies the rounding of elements
    # whose gradient is near 0 (measured: at most 5.6e-5 on one element of 1,024 with MKL matmuls,
    # 1.1e-4 with oneDNN's; a wrong ratio or clip moves many elements by ~lr = 2e-3)
    for got, want in zip(learner_params, naive_params, strict=True):
        torch.testing.assert_close(got, want, atol=2.5e-4, rtol=1e-4)
    # at this high lr the clip binds on some tokens of the later updates
    assert result.metrics["loss/clip_frac/low"] + result.metrics["loss/clip_frac/high"] > 0
    assert result.metrics["loss/approx_kl"] > 0
    # logp_old and the logged weights come from the scoring pass, before any update
    assert result.logp.shape == batch.response_mask.shape
    if weights_of:
        assert set(result.weights[batch.response_mask].tolist()) == {0.0, 1.0}


def test_single_update_has_no_clip_and_no_kl(setup):
    model, batch = setup
    cfg = make_config("credit=uniform", "diagnostics.shadow=false", "optim.lr=0.002")
    result, learner_params, losses, spreads, naive_params = run_both(model, batch, cfg)
    assert result.metrics["loss/updates"] == 1 and len(losses) == 1
    assert result.metrics["loss/clip_frac/low"] == result.metrics["loss/clip_frac/high"] == 0
    assert result.metrics["loss/approx_kl"] == 0
    assert result.loss == pytest.approx(losses[0], rel=1e-5)
    # float32, four AdamW steps at a high lr: the fused scoring pass and length-sorted micro-batches sum
    # in another order than the naive loop, and Adam's g / sqrt(v) magnifies the rounding of elements
    # whose gradient is near 0 (measured: at most 5.6e-5 on one element of 1,024 with MKL matmuls,
    # 1.1e-4 with oneDNN's; a wrong ratio or clip moves many elements by ~lr = 2e-3)
    for got, want in zip(learner_params, naive_params, strict=True):
        torch.testing.assert_close(got, want, atol=2.5e-4, rtol=1e-4)


def test_diagnostics_from_the_scoring_pass(setup):
    """policy/entropy and policy/kl_ref: token means of H(pi_theta) and the exact KL to pi_ref."""
    model, batch = setup
    cfg = make_config("credit=divergence", "diagnostics.shadow=false", "optim.lr=1e-9")
    start = [p.detach().clone() for p in _params(model)]
    result = Learner(model, LearnerSettings.from_config(cfg), temperature=1.0).step(batch, ADVANTAGES)
    with torch.no_grad():
        for p, s in zip(_params(model), start, strict=True):
            p.copy_(s)
    entropies, kls = [], []
    with torch.no_grad():
        for i in range(len(batch.texts)):
            prompt, response = _sequence(batch, i)
            ids = torch.tensor([prompt + response])
            lp = torch.log_softmax(model(input_ids=ids).logits[0, len(prompt) - 1 : -1].double(), -1)
            with model.disable_adapter():
                lq = torch.log_softmax(model(input_ids=ids).logits[0, len(prompt) - 1 : -1].double(), -1)
            entropies.append(-(lp.exp() * lp).sum(-1))
            kls.append((lp.exp() * (lp - lq)).sum(-1))
    assert result.metrics["policy/entropy"] == pytest.approx(torch.cat(entropies).mean().item(), rel=1e-4)
    assert result.metrics["policy/kl_ref"] == pytest.approx(torch.cat(kls).mean().item(), rel=1e-3, abs=1e-7)
    assert result.metrics["policy/kl_ref"] > 0
    uniform = Learner(
        model, LearnerSettings.from_config(make_config("credit=uniform", "diagnostics.shadow=false")), 1.0
    )
    with torch.no_grad():
        for p, s in zip(_params(model), start, strict=True):
            p.copy_(s)
    assert "policy/kl_ref" not in uniform.step(batch, ADVANTAGES).metrics  # no reference pass ran
    with torch.no_grad():
        for p, s in zip(_params(model), start, strict=True):
            p.copy_(s)
