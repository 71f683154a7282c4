"""Chunked full-vocabulary log-prob, entropy and KL against the naive [N, V] computation."""

import pytest
import torch

from arca_sweep.token_stats import target_logprob, vocab_stats

V = 50_257  # a GPT-2-sized vocabulary: the chunking must hold at realistic sizes


def naive(hidden, ref_hidden, weight, targets, temperature):
    """Materializes the whole [N, V] log-softmax, in the inputs' dtype."""
    logp = torch.log_softmax(hidden @ weight.T / temperature, dim=-1)
    logq = torch.log_softmax(ref_hidden @ weight.T / temperature, dim=-1)
    pick = lambda lp: lp.gather(1, targets[:, None])[:, 0]  # noqa: E731
    return {
        "logp": pick(logp),
        "entropy": -(logp.exp() * logp).sum(-1),
        "ref_logp": pick(logq),
        "ref_entropy": -(logq.exp() * logq).sum(-1),
        "kl": (logp.exp() * (logp - logq)).sum(-1),
    }


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("temperature,chunk", [(1.0, 7), (0.7, 64), (1.3, 1000)])
def test_chunked_equals_naive_full_vocabulary(temperature, chunk, dtype, atol):
    g = torch.Generator().manual_seed(0)
    n, d = 37, 32
    weight = (torch.randn(V, d, generator=g) / d**0.5).to(dtype)
    hidden = (torch.randn(n, d, generator=g) * 2).to(dtype)
    ref_hidden = hidden + 0.3 * torch.randn(n, d, generator=g).to(dtype)
    targets = torch.randint(0, V, (n,), generator=g)
    want = naive(hidden, ref_hidden, weight, targets, temperature)
    got = vocab_stats(
        hidden,
        weight,
        targets,
        ref_hidden,
        temperature=temperature,
        chunk_size=chunk,
        need={"logp", "entropy", "ref_logp", "ref_entropy", "kl"},
    )
    logp = target_logprob(hidden, weight, targets, temperature, chunk)
    torch.testing.assert_close(logp, want["logp"], atol=atol, rtol=0)
    assert torch.equal(got.logp, logp), "one chunked pass, the same log-probs as target_logprob's own"
    for key in ("entropy", "ref_logp", "ref_entropy", "kl"):
        torch.testing.assert_close(getattr(got, key), want[key], atol=atol, rtol=0, msg=key)
    assert (got.kl > -1e-6).all()


def test_gradient_equals_autograd_through_naive_softmax():
    g = torch.Generator().manual_seed(1)
    n, d, v = 19, 16, 5003
    weight = (torch.randn(v, d, generator=g) / 4).double().requires_grad_()
    hidden = torch.randn(n, d, generator=g).double().requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g)
    coef = torch.randn(n, generator=g).double()

    (target_logprob(hidden, weight, targets, 0.8, 5) * coef).sum().backward()
    got_h, got_w = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    ref = torch.log_softmax(hidden @ weight.T / 0.8, -1).gather(1, targets[:, None])[:, 0]
    (ref * coef).sum().backward()
    torch.testing.assert_close(got_h, hidden.grad, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(got_w, weight.grad, atol=1e-10, rtol=1e-8)


def test_gradcheck_small():
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(11, 4, generator=g, dtype=torch.float64)
    hidden = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (5,), generator=g)
    assert torch.autograd.gradcheck(lambda h: target_logprob(h, weight, targets, 1.0, 2), (hidden,))


def test_reference_fields_need_reference_hidden():
    h = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="ref_hidden"):
        vocab_stats(h, torch.zeros(4, 3), torch.zeros(2, dtype=torch.long), need={"kl"})
    with pytest.raises(ValueError, match="unknown"):
        vocab_stats(h, torch.zeros(4, 3), torch.zeros(2, dtype=torch.long), need={"entropyy"})


def test_precomputed_value_gives_the_same_output_and_gradient():
    """target_logprob(value=...) skips its forward pass over the LM head; nothing else changes."""
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(997, 8, generator=g)
    targets = torch.randint(0, 997, (13,), generator=g)
    hidden = torch.randn(13, 8, generator=g)
    coef = torch.randn(13, generator=g)
    grads = []
    for value in (None, vocab_stats(hidden, weight, targets, need={"logp"}, chunk_size=4).logp):
        h = hidden.clone().requires_grad_()
        out = target_logprob(h, weight, targets, 1.0, 4, value=value)
        (out * coef).sum().backward()
        grads.append((out.detach(), h.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
