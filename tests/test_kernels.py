"""The oneDNN frozen-weight matmul (arca_sweep/kernels.py) and the rollout's inverse-CDF sampler,
against plain torch and float64 references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from arca_sweep import kernels
from arca_sweep.model import load_policy
from arca_sweep.rollout.hf import draw
from arca_sweep.testing import make_config

needs_onednn = pytest.mark.skipif(not kernels.available(), reason="torch built without oneDNN")


@pytest.fixture(autouse=True)
def _onednn_on(monkeypatch):
    """oneDNN on, for every size: these shapes are below the size where it takes over from MKL."""
    monkeypatch.setattr(kernels, "_MIN_MACS", 0)
    kernels.configure("onednn")
    yield
    kernels.configure("onednn")


def test_small_matmuls_stay_on_aten(monkeypatch):
    monkeypatch.setattr(kernels, "_MIN_MACS", 1 << 22)
    g = torch.Generator().manual_seed(4)
    w, x = torch.randn(256, 64, generator=g), torch.randn(64, 64, generator=g, requires_grad=True)
    y = kernels.linear(x, w)  # 64 x 64 x 256 = 1M multiply-adds: MKL is faster there
    assert torch.equal(y, F.linear(x, w)) and "FrozenLinear" not in type(y.grad_fn).__name__


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@needs_onednn
@pytest.mark.parametrize("shape", [(7, 64), (3, 5, 64), (1, 64)])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_matches_float64_in_forward_and_backward(shape, bias):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(300, 64, generator=g)
    b = torch.randn(300, generator=g) if bias else None
    x = torch.randn(*shape, generator=g, requires_grad=True)
    y = kernels.linear(x, w, b)
    assert y.grad_fn is not None and "FrozenLinear" in type(y.grad_fn).__name__  # the oneDNN path ran
    x64 = x.detach().double().requires_grad_()
    y64 = F.linear(x64, w.double(), b.double() if bias else None)
    assert _rel(y, y64) < 1e-5
    upstream = torch.randn(y.shape, generator=g)
    y.backward(upstream)
    y64.backward(upstream.double())
    assert _rel(x.grad, x64.grad) < 1e-5
    assert not w.requires_grad and w.grad is None


@needs_onednn
def test_linear_on_noncontiguous_input_and_transposed_weight():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(200, 96, generator=g)
    x = torch.randn(96, 10, generator=g).t()  # [10, 96], not contiguous
    assert _rel(kernels.linear(x, w), F.linear(x.double(), w.double())) < 1e-5
    p = torch.randn(10, 200, generator=g)  # the head's "p @ W" direction: W^T as a view
    assert _rel(kernels.linear(p, w.t()), p.double() @ w.double()) < 1e-5


def test_float64_autocast_and_aten_fall_back_to_f_linear_exactly():
    g = torch.Generator().manual_seed(2)
    w, x = torch.randn(50, 32, generator=g), torch.randn(4, 32, generator=g)
    assert torch.equal(kernels.linear(x.double(), w.double()), F.linear(x.double(), w.double()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(kernels.linear(x, w), F.linear(x, w))
    kernels.configure("aten")
    assert not kernels.available()
    assert torch.equal(kernels.linear(x, w), F.linear(x, w))


def test_trainable_weight_and_unknown_choice_are_refused():
    with pytest.raises(ValueError, match="frozen"):
        kernels.linear(torch.randn(2, 3), torch.randn(4, 3, requires_grad=True))
    with pytest.raises(ValueError, match="model.cpu_matmul='mkl'"):
        kernels.configure("mkl")


@needs_onednn
def test_policy_swaps_only_frozen_linears_and_scores_like_aten():
    cfg = make_config("rank=8")
    ids = torch.tensor([[5, 9, 13, 2, 7, 11]])
    outs = {}
    for choice in ("aten", "onednn"):
        model = load_policy(
            make_config("rank=8", f"model.cpu_matmul={choice}").model, cfg.rank, torch.device("cpu"), seed=0
        )
        swapped = [n for n, m in model.named_modules() if isinstance(m, kernels.FrozenLinear)]
        trainable = [n for n, m in model.named_modules() if type(m) is nn.Linear]
        if choice == "aten":
            assert swapped == []
        else:
            assert swapped and all("lora_" not in n for n in swapped)
            assert any(n.endswith("lm_head") for n in swapped)
            assert trainable and all("lora_" in n for n in trainable)
        logits = model(input_ids=ids).logits
        logits[0, -1].logsumexp(-1).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        outs[choice] = (logits.detach(), grads, model.state_dict().keys())
    (la, ga, ka), (lo, go, ko) = outs["aten"], outs["onednn"]
    assert list(ka) == list(ko)
    assert _rel(lo, la) < 1e-5
    assert ga.keys() == go.keys()
    for n in ga:
        assert torch.allclose(go[n], ga[n], rtol=1e-4, atol=1e-6), n


@needs_onednn
def test_flop_formula_counts_the_onednn_op_like_aten_mm():
    w, x = torch.randn(300, 64), torch.randn(7, 64)
    with FlopCounterMode(display=False, custom_mapping=kernels.flop_formulas()) as c1:
        kernels.linear(x, w)
    with FlopCounterMode(display=False) as c2:
        F.linear(x, w)
    assert c1.get_total_flops() == c2.get_total_flops() == 2 * 7 * 64 * 300


@pytest.mark.parametrize("vocab", [7, 16, 1024, 1025, 3000])
def test_draw_follows_the_distribution_and_never_draws_a_zero(vocab):
    g = torch.Generator().manual_seed(3)
    p = torch.rand(vocab, generator=g) ** 3
    p[torch.randperm(vocab, generator=g)[: vocab // 3]] = 0.0  # a third of the vocabulary impossible
    p[-1] = 0.0
    p *= 5.0  # rows need not be normalized
    rows, rounds = 20_000, 10
    counts = torch.zeros(vocab, dtype=torch.float64)
    for _ in range(rounds):
        tokens = draw(p.expand(rows, vocab), generator=g)
        counts += torch.bincount(tokens, minlength=vocab).double()
    n = rows * rounds
    q = (p / p.sum()).double()
    assert counts[q == 0].sum() == 0
    # every token's frequency within 5 standard errors (plus a floor for the rarest ones)
    se = (q * (1 - q) / n).sqrt()
    assert ((counts / n - q).abs() <= 5 * se + 2 / n).all()
    # and the whole histogram: chi-square over tokens with enough expected mass
    big = q * n >= 20
    chi2 = ((counts[big] - n * q[big]) ** 2 / (n * q[big])).sum().item()
    dof = int(big.sum()) - 1
    assert chi2 < dof + 6 * (2 * dof) ** 0.5


def test_draw_edge_rows():
    one_hot = torch.zeros(3, 2000)
    one_hot[0, 1999] = 1.0  # all mass on the last entry of a padded block
    one_hot[1, 0] = 1.0
    one_hot[2, 1024] = 2.0  # first entry of the second block
    for _ in range(50):
        assert draw(one_hot).tolist() == [1999, 0, 1024]
    tiny = torch.full((4, 151_936), 1e-30)  # the float64 sums must not underflow or mislead
    tiny[:, 77] = 1e-20
    assert (draw(tiny) == 77).float().mean() > 0.99


class _Allocations(TorchDispatchMode):
    """The bytes of every new storage the ops under it return (views and in-place results left out)."""

    def __init__(self):
        super().__init__()
        self.sizes: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        seen = {
            t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)
        }
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                self.sizes.append(t.untyped_storage().nbytes())
        return out


@pytest.mark.parametrize("vocab", [16, 1025])
def test_draw_memory_is_linear_in_the_vocabulary(vocab):
    """No row padded to 1,024 entries: no intermediate wider than a float64 copy of ``probs``, and all
    of them together a few such copies plus a few scalars per row (a 16-token vocabulary took 64
    float64 copies per intermediate, 194 in all; 1,025 tokens were padded to 2,048)."""
    rows = 20_000
    probs = torch.rand(rows, vocab, generator=torch.Generator().manual_seed(0))
    with _Allocations() as allocated:
        draw(probs, generator=torch.Generator().manual_seed(1))
    copy = rows * vocab * 8
    assert max(allocated.sizes) <= copy
    assert sum(allocated.sizes) <= 5 * copy + 16 * rows * 8


def _padded_draw(probs, generator):
    """The sampler before its memory fix, every row padded to whole blocks of 1,024: the reference
    whose tokens the fix keeps, bit for bit, for vocabularies of 1,024 and more."""
    b, v = probs.shape
    nb = -(-v // 1024)
    p = F.pad(probs.to(torch.float64), (0, nb * 1024 - v)).view(b, nb, 1024)
    block_cdf = p.sum(-1).cumsum(-1)
    target = torch.rand(b, 1, dtype=torch.float64, generator=generator) * block_cdf[:, -1:]
    k = torch.searchsorted(block_cdf, target, right=True).clamp_(max=nb - 1)
    before = torch.where(k > 0, block_cdf.gather(1, (k - 1).clamp(min=0)), torch.zeros_like(target))
    inner = p.gather(1, k[:, :, None].expand(b, 1, 1024))[:, 0].cumsum(-1)
    token = (k * 1024 + torch.searchsorted(inner, target - before, right=True).clamp_(max=1023))[:, 0]
    bad = (token >= v) | (probs.gather(1, token.clamp(max=v - 1)[:, None])[:, 0] <= 0)
    return torch.where(bad, probs.argmax(-1), token)


@pytest.mark.parametrize("vocab,rows", [(1024, 4000), (1025, 4000), (3000, 4000), (151_936, 64)])
def test_draw_keeps_the_padded_samplers_tokens(vocab, rows):
    g = torch.Generator().manual_seed(5)
    probs = torch.rand(rows, vocab, generator=g) ** 4
    probs[probs < 0.05] = 0.0
    probs[0, -1], probs[1, :-1] = 1.0, 0.0  # the last entry of the last block
    mine, theirs = torch.Generator().manual_seed(6), torch.Generator().manual_seed(6)
    assert torch.equal(draw(probs, generator=mine), _padded_draw(probs, generator=theirs))
    assert torch.equal(mine.get_state(), theirs.get_state())  # one uniform per row, as before
