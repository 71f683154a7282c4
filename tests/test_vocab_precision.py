"""Entropies and exact KL over Qwen3's 151,936-token vocabulary, in float32, against float64.

The entropy signal is a difference of two entropies, about 1e-3 nats under a LoRA adapter: the
rounding of each entropy must stay far below that (here 1e-5 nats), at every sampling temperature.
"""

import pytest
import torch

from arca_sweep.learner.token_stats import fused_scores, vocab_stats

V, D = 151_936, 128
ALL = {"logp", "entropy", "ref_logp", "ref_entropy", "kl"}


def lm_like_rows() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(hidden [N, D], ref_hidden [N, D], weight [V, D], targets [N])`` whose logits look like a
    language model's (entropies from 1e-4 to 11.9 nats): a Zipf log-frequency prior over the vocabulary (a long tail), Gaussian
    token-to-token spread, and per row a few dominant tokens, from one at p ~ 1 to none (a flat row).
    The reference rows are the same positions moved by a LoRA-sized step (KL ~ 1e-3 to 1e-1)."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(V, D, generator=g) / D**0.5
    weight[:, 0] = -torch.log1p(torch.randperm(V, generator=g).double()).float()  # -log rank
    # (spread of the logits, weight of the Zipf prior, logit boosts of the dominant tokens)
    rows = [
        (2.5, 1.0, [16.0]),  # one token at p ~ 1
        (2.5, 1.0, [11.0, 10.0, 9.5]),  # a few dominant tokens
        (2.0, 0.8, [9.0, 9.0, 8.5, 8.0, 7.0]),  # several close candidates
        (3.0, 1.2, [13.0, 10.0]),
        (2.5, 1.0, []),  # the long tail only
        (0.3, 0.0, []),  # flat: entropy near log V
    ]
    hidden = torch.zeros(len(rows), D)
    for i, (spread, prior, boosts) in enumerate(rows):
        h = torch.randn(D, generator=g) * spread
        h[0] = prior
        for boost, k in zip(boosts, torch.randint(0, V, (len(boosts),), generator=g), strict=True):
            w = weight[k].clone()
            w[0] = 0.0  # (the prior's weight stays)
            h += (boost - weight[k] @ h) * w / (w @ w)  # z_k = boost
        hidden[i] = h
    step = torch.randn(len(rows), D, generator=g)
    ref_hidden = hidden + step * torch.tensor([0.3, 0.2, 0.1, 0.1, 0.05, 0.02])[:, None]
    targets = torch.randint(0, V, (len(rows),), generator=g)
    return hidden, ref_hidden, weight, targets


def float64_reference(hidden, ref_hidden, weight, temperature) -> dict[str, torch.Tensor]:
    """The whole [N, V] log-softmax in float64, from the same float32 inputs."""
    w = weight.double()
    logp = torch.log_softmax(hidden.double() @ w.T / temperature, dim=-1)
    logq = torch.log_softmax(ref_hidden.double() @ w.T / temperature, dim=-1)
    return {
        "entropy": -(logp.exp() * logp).sum(-1),
        "ref_entropy": -(logq.exp() * logq).sum(-1),
        "kl": (logp.exp() * (logp - logq)).sum(-1),
    }


@pytest.fixture(scope="module")
def rows():
    return lm_like_rows()


@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.3])
@pytest.mark.parametrize("path", ["fused_scores", "vocab_stats"])
def test_float32_entropy_and_kl_within_1e5_nats_of_float64(rows, path, temperature):
    hidden, ref_hidden, weight, targets = rows
    want = float64_reference(hidden, ref_hidden, weight, temperature)
    assert want["entropy"].min() < 0.2 and want["entropy"].max() > 11.0  # a nearly sure token ... near log V
    assert 1e-3 < want["kl"].max() < 1.0
    kwargs = dict(temperature=temperature, chunk_size=4, need=ALL)
    if path == "fused_scores":
        _, got = fused_scores(hidden, weight, targets, ref_hidden, **kwargs)
    else:
        got = vocab_stats(hidden, weight, targets, ref_hidden, **kwargs)
    errors = {k: (getattr(got, k).double() - want[k]).abs().max().item() for k in want}
    print(f"{path} T={temperature}: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    for key, err in errors.items():
        assert err <= 1e-5, f"{key}: {err:.2e} nats off float64"
