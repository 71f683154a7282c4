"""Chunked full-vocabulary log-prob, entropy and KL against the naive [N, V] computation."""

import pytest
import torch

from arca_sweep.learner.token_stats import auto_chunk_size, fused_scores, target_logprob, vocab_stats

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
    # the naive reference in float64 (a float32 log_softmax is itself 1.7e-5 nats off at T = 0.7)
    wide = naive(hidden.double(), ref_hidden.double(), weight.double(), targets, temperature)
    want = {k: v.to(dtype) for k, v in wide.items()}
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


def _fused_inputs(seed, n=29, d=16, v=3001, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    weight = (torch.randn(v, d, generator=g) / 4).to(dtype)
    hidden = torch.randn(n, d, generator=g).to(dtype)
    ref_hidden = hidden + 0.3 * torch.randn(n, d, generator=g).to(dtype)
    targets = torch.randint(0, v, (n,), generator=g)
    return weight, hidden, ref_hidden, targets, g


ALL = {"logp", "entropy", "ref_logp", "ref_entropy", "kl"}


@pytest.mark.parametrize("temperature,chunk", [(1.0, 4), (0.7, 29), (1.3, 1000)])
def test_fused_pass_equals_plain_loss_and_gradient_float64(temperature, chunk):
    """fused_scores (logits once per chunk, gradient formed in the forward) against target_logprob +
    vocab_stats (the backward recomputes the softmax): same stats, same loss, same gradient to 1e-6,
    through a loss that is not linear in log pi (PPO-clip-like, with exp and a clamp)."""
    weight, hidden, ref_hidden, targets, g = _fused_inputs(0)
    adv = torch.randn(hidden.shape[0], generator=g).double()
    old = torch.randn(hidden.shape[0], generator=g).double() * 0.1

    def loss_of(logp):
        ratio = torch.exp(logp - (logp.detach() + old))
        return -torch.minimum(ratio * adv, ratio.clamp(0.8, 1.2) * adv).sum()

    h_plain = hidden.clone().requires_grad_()
    plain = target_logprob(h_plain, weight, targets, temperature, chunk)
    plain_stats = vocab_stats(
        h_plain.detach(), weight, targets, ref_hidden, temperature=temperature, chunk_size=chunk, need=ALL
    )
    loss_plain = loss_of(plain)
    loss_plain.backward()

    h_fused = hidden.clone().requires_grad_()
    fused, stats = fused_scores(
        h_fused, weight, targets, ref_hidden, temperature=temperature, chunk_size=chunk, need=ALL
    )
    loss_fused = loss_of(fused)
    loss_fused.backward()

    torch.testing.assert_close(loss_fused, loss_plain, atol=1e-6, rtol=0)
    torch.testing.assert_close(h_fused.grad, h_plain.grad, atol=1e-6, rtol=0)
    assert h_fused.grad.abs().max() > 1e-3
    for key in ALL:
        torch.testing.assert_close(
            getattr(stats, key), getattr(plain_stats, key), atol=1e-10, rtol=0, msg=key
        )


def test_fused_pass_sampled_fields_only_on_sampled_tokens():
    """need_sample fields on the sampled tokens equal the full computation; NaN elsewhere unless
    free (entropy, or reference fields once the reference logits exist for every token); the
    reference hidden may hold only the sampled tokens."""
    weight, hidden, ref_hidden, targets, g = _fused_inputs(1)
    sample = torch.rand(hidden.shape[0], generator=g) < 0.4
    full = vocab_stats(hidden, weight, targets, ref_hidden, chunk_size=6, need=ALL)
    for ref in (ref_hidden, ref_hidden[sample]):
        if ref.shape[0] == hidden.shape[0]:
            need, need_sample = {"kl"}, {"entropy", "ref_entropy"}  # a full reference need: every token
        else:
            need, need_sample = set(), {"entropy", "ref_logp", "ref_entropy", "kl"}
        _, got = fused_scores(
            hidden, weight, targets, ref, chunk_size=6, need=need, sample=sample, need_sample=need_sample
        )
        for key in need | need_sample:
            free = key == "entropy" or ref.shape[0] == hidden.shape[0]  # from logits formed anyway
            on = slice(None) if key in need or free else sample
            torch.testing.assert_close(getattr(got, key)[on], getattr(full, key)[on], atol=1e-10, rtol=0)
            if on is sample:
                assert getattr(got, key)[~sample].isnan().all(), key


def test_fused_pass_refuses_a_trainable_head_and_chunk_size_follows_the_vocabulary():
    weight, hidden, _, targets, _ = _fused_inputs(2)
    with pytest.raises(ValueError, match="frozen"):
        fused_scores(hidden, weight.requires_grad_(), targets)
    assert auto_chunk_size(151_936, 512) == 220  # 4 float32 [chunk, V] blocks in 512 MiB
    assert auto_chunk_size(151_936, 512, override=64) == 64
    assert auto_chunk_size(1_000, 512) == 8192
