"""The learner's math (group advantages, PPO-clip token loss, loss aggregation) against slow,
loop-by-loop references. No model is built."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arca_sweep.advantage import estimate, frac_zero_spread
from arca_sweep.learner.loss import LOSS_AGGS, aggregate_loss, ppo_clip_token_loss

# ---------------------------------------------------------------- grpo and dr_grpo advantages
# (the other estimators and verl's functions: tests/test_advantage.py)


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "std"):
    adv = estimate("grpo" if scale == "std" else "dr_grpo", rewards, group_size)
    return adv, frac_zero_spread(rewards, group_size)


def ref_group_advantages(rewards: list[float], group_size: int, scale: str = "std"):
    adv, zero = [], 0
    groups = [rewards[i : i + group_size] for i in range(0, len(rewards), group_size)]
    for g in groups:
        mean = sum(g) / len(g)
        std = statistics.stdev(g)  # unbiased (n - 1)
        if all(x == g[0] for x in g):
            zero += 1
        for x in g:
            adv.append((x - mean) / (std + 1e-6) if scale == "std" else x - mean)
    return adv, zero / len(groups)


def test_group_advantages_hand_example():
    adv, frac = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]), 4)
    std = math.sqrt(((0.75**2) + 3 * (0.25**2)) / 3)  # unbiased std of [1, 0, 0, 0]
    expected = [0.75 / (std + 1e-6)] + [-0.25 / (std + 1e-6)] * 3 + [0.0] * 4
    assert adv.tolist() == pytest.approx(expected, rel=1e-6, abs=1e-7)
    assert frac == 0.5
    adv_none, frac_none = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]), 4, "none")
    assert adv_none.tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0])
    assert frac_none == 0.5


def test_group_advantages_two_of_two():
    # G = 2, rewards [1, 0]: unbiased std = 1/sqrt(2), so A = +-0.5 * sqrt(2)
    adv, frac = group_advantages(torch.tensor([1.0, 0.0]), 2)
    assert adv.tolist() == pytest.approx([math.sqrt(0.5), -math.sqrt(0.5)], rel=1e-5)
    assert frac == 0.0


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    group_size=st.integers(2, 8),
    num_groups=st.integers(1, 6),
    scale=st.sampled_from(["std", "none"]),
)
def test_group_advantages_match_reference(data, group_size, num_groups, scale):
    rewards = data.draw(
        st.lists(
            st.sampled_from([0.0, 1.0]), min_size=group_size * num_groups, max_size=group_size * num_groups
        )
    )
    adv, frac = group_advantages(torch.tensor(rewards), group_size, scale)
    ref_adv, ref_frac = ref_group_advantages(rewards, group_size, scale)
    assert adv.shape == (len(rewards),)
    assert adv.dtype == torch.float32
    assert adv.tolist() == pytest.approx(ref_adv, rel=1e-5, abs=1e-6)
    assert frac == pytest.approx(ref_frac)
    # every group's advantages sum to zero; identical groups carry none
    for g in range(num_groups):
        chunk = adv[g * group_size : (g + 1) * group_size]
        assert abs(chunk.sum().item()) < 1e-4
        if len(set(rewards[g * group_size : (g + 1) * group_size])) == 1:
            assert chunk.abs().max().item() == 0.0


@settings(max_examples=50, deadline=None)
@given(
    rewards=st.lists(st.floats(-5, 5, allow_nan=False, width=32), min_size=12, max_size=12),
    group_size=st.sampled_from([2, 3, 4, 6, 12]),
)
def test_group_advantages_real_valued_rewards(rewards, group_size):
    adv, frac = group_advantages(torch.tensor(rewards), group_size)
    ref_adv, ref_frac = ref_group_advantages(rewards, group_size)
    assert adv.tolist() == pytest.approx(ref_adv, rel=1e-4, abs=1e-4)
    assert frac == pytest.approx(ref_frac)


# ---------------------------------------------------------------- ppo_clip_token_loss


def ref_token_loss(lp, lp_old, a, clip_low, clip_high, ref=None, beta=0.0):
    rho = math.exp(lp - lp_old)
    clipped = min(max(rho, 1 - clip_low), 1 + clip_high)
    loss = -min(rho * a, clipped * a)
    if beta:  # k3 with verl's clamps: log ratio to [-20, 20], the estimate to at most 10
        d = min(max(ref - lp, -20.0), 20.0)
        loss += beta * min(math.exp(d) - d - 1, 10.0)
    return loss


@pytest.mark.parametrize(
    ("rho", "adv", "expected"),
    [
        (2.0, 1.0, -1.28),  # A > 0, ratio above 1 + eps_high: clipped
        (2.0, -1.0, 2.0),  # A < 0, ratio above: unclipped (pessimistic)
        (0.5, 1.0, -0.5),  # A > 0, ratio below 1 - eps_low: unclipped
        (0.5, -1.0, 0.8),  # A < 0, ratio below: clipped at 1 - eps_low
        (1.1, 2.0, -2.2),  # inside the range
        (1.25, 1.0, -1.25),  # inside [0.8, 1.28] only because eps_high != eps_low
        (0.75, -1.0, 0.8),  # below 1 - eps_low = 0.8
    ],
)
def test_ppo_clip_cases(rho, adv, expected):
    logp_old = torch.tensor([[-1.0]], dtype=torch.float64)
    logp = logp_old + math.log(rho)
    loss = ppo_clip_token_loss(logp, logp_old, torch.tensor([[adv]], dtype=torch.float64), 0.2, 0.28)
    assert loss.item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(("clip_low", "clip_high"), [(0.2, 0.2), (0.1, 0.3), (0.3, 0.05)])
def test_ppo_clip_matches_scalar_reference(clip_low, clip_high):
    g = torch.Generator().manual_seed(0)
    shape = (6, 11)
    logp = -torch.rand(shape, generator=g, dtype=torch.float64) * 4
    logp_old = logp + torch.randn(shape, generator=g, dtype=torch.float64) * 0.5
    adv = torch.randn(shape, generator=g, dtype=torch.float64)
    ratio = torch.exp(logp - logp_old)
    # the sample exercises every branch: both signs, ratios below, inside and above the range
    assert (adv > 0).any() and (adv < 0).any()
    assert (ratio < 1 - clip_low).any() and (ratio > 1 + clip_high).any()
    assert ((ratio > 1 - clip_low) & (ratio < 1 + clip_high)).any()
    loss = ppo_clip_token_loss(logp, logp_old, adv, clip_low, clip_high)
    for i in range(shape[0]):
        for j in range(shape[1]):
            ref = ref_token_loss(
                logp[i, j].item(), logp_old[i, j].item(), adv[i, j].item(), clip_low, clip_high
            )
            assert loss[i, j].item() == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_ppo_clip_with_k3_penalty():
    g = torch.Generator().manual_seed(1)
    shape = (4, 9)
    logp = -torch.rand(shape, generator=g, dtype=torch.float64) * 4
    logp_old = logp + torch.randn(shape, generator=g, dtype=torch.float64) * 0.3
    ref_logp = logp + torch.randn(shape, generator=g, dtype=torch.float64)
    adv = torch.randn(shape, generator=g, dtype=torch.float64)
    beta = 0.05
    base = ppo_clip_token_loss(logp, logp_old, adv, 0.2, 0.28)
    full = ppo_clip_token_loss(logp, logp_old, adv, 0.2, 0.28, ref_logp=ref_logp, beta=beta)
    k3 = (full - base) / beta
    d = ref_logp - logp
    assert torch.allclose(k3, (torch.exp(d) - d - 1).clamp(max=10), rtol=1e-9, atol=1e-12)
    assert (torch.exp(d) - d - 1 > 10).any() and (k3 < 10).any()  # both sides of the clamp
    assert (k3 >= 0).all()
    assert (k3 > 0).all()  # ref_logp != logp everywhere here
    for i in range(shape[0]):
        for j in range(shape[1]):
            args = (
                logp[i, j].item(),
                logp_old[i, j].item(),
                adv[i, j].item(),
                0.2,
                0.28,
                ref_logp[i, j].item(),
                beta,
            )
            assert full[i, j].item() == pytest.approx(ref_token_loss(*args), rel=1e-9, abs=1e-12)
    # k3 vanishes when the policy equals the reference
    same = ppo_clip_token_loss(logp, logp_old, adv, 0.2, 0.28, ref_logp=logp.clone(), beta=beta)
    assert torch.allclose(same, base, rtol=0, atol=1e-12)
    # beta = 0 ignores ref_logp entirely
    assert torch.equal(ppo_clip_token_loss(logp, logp_old, adv, 0.2, 0.28, ref_logp=ref_logp, beta=0.0), base)


def test_gradient_is_plain_policy_gradient_on_policy():
    g = torch.Generator().manual_seed(2)
    logp = (-torch.rand(5, 7, generator=g, dtype=torch.float64) * 3).requires_grad_()
    adv = torch.randn(5, 7, generator=g, dtype=torch.float64)
    loss = ppo_clip_token_loss(logp, logp.detach(), adv, 0.2, 0.28)
    assert torch.allclose(loss.detach(), -adv)
    loss.sum().backward()
    assert torch.allclose(logp.grad, -adv, rtol=1e-12, atol=1e-12)


def test_gradient_with_k3_penalty_on_policy():
    g = torch.Generator().manual_seed(3)
    logp = (-torch.rand(3, 5, generator=g, dtype=torch.float64) * 3).requires_grad_()
    ref_logp = logp.detach() + torch.randn(3, 5, generator=g, dtype=torch.float64)
    adv = torch.randn(3, 5, generator=g, dtype=torch.float64)
    beta = 0.1
    ppo_clip_token_loss(logp, logp.detach(), adv, 0.2, 0.2, ref_logp=ref_logp, beta=beta).sum().backward()
    # d/dlogp [exp(ref - logp) - (ref - logp) - 1] = 1 - exp(ref - logp)
    expected = -adv + beta * (1 - torch.exp(ref_logp - logp.detach()))
    assert torch.allclose(logp.grad, expected, rtol=1e-10, atol=1e-12)


def test_gradient_zero_where_clipped():
    logp_old = torch.full((4,), -1.0, dtype=torch.float64)
    logp = (logp_old + torch.log(torch.tensor([2.0, 2.0, 0.5, 0.5], dtype=torch.float64))).requires_grad_()
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    ppo_clip_token_loss(logp, logp_old, adv, 0.2, 0.2).sum().backward()
    # clipped tokens (A>0 above the range, A<0 below it) get no gradient; the others get -A * rho
    assert logp.grad.tolist() == pytest.approx([0.0, 2.0, -0.5, 0.0])


# ---------------------------------------------------------------- aggregate_loss


def make_batch(seed: int, b: int = 7, t: int = 10, bool_mask: bool = True):
    g = torch.Generator().manual_seed(seed)
    token_loss = torch.randn(b, t, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    lengths[0] = t  # one full row
    mask = torch.arange(t)[None, :] < lengths[:, None]
    token_loss = token_loss + (~mask) * 1e3  # garbage at padding: must not count
    return token_loss, (mask if bool_mask else mask.double()), lengths.tolist()


def ref_aggregate(token_loss, lengths, agg, norm_len):
    seq_sums = [sum(token_loss[i, j].item() for j in range(n)) for i, n in enumerate(lengths)]
    if agg == "token-mean":
        return sum(seq_sums) / sum(lengths)
    if agg == "seq-mean-token-mean":
        return sum(s / n for s, n in zip(seq_sums, lengths, strict=True)) / len(lengths)
    if agg == "seq-mean-token-sum-norm":
        return sum(s / norm_len for s in seq_sums) / len(lengths)
    raise AssertionError(agg)


def test_loss_aggs_are_the_three():
    assert set(LOSS_AGGS) == {"token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"}


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("bool_mask", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aggregate_full_batch_matches_reference(agg, bool_mask, seed):
    token_loss, mask, lengths = make_batch(seed, bool_mask=bool_mask)
    norm_len = 48
    totals = dict(total_tokens=int(mask.sum()), total_seqs=mask.shape[0], norm_len=norm_len)
    full = aggregate_loss(token_loss, mask, agg, **totals)
    assert full.dim() == 0
    assert full.item() == pytest.approx(ref_aggregate(token_loss, lengths, agg, norm_len), rel=1e-10)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("splits", [[1] * 7, [3, 4], [2, 2, 2, 1], [7], [5, 2]])
def test_micro_batches_add_up_to_full_batch(agg, splits):
    token_loss, mask, lengths = make_batch(5)
    totals = dict(total_tokens=int(mask.sum()), total_seqs=mask.shape[0], norm_len=32)
    full = aggregate_loss(token_loss, mask, agg, **totals)
    parts = []
    for rows in torch.arange(mask.shape[0]).split(splits):
        sub_mask = mask[rows]
        width = int(sub_mask.sum(1).max())  # a micro-batch may be trimmed to its own longest row
        parts.append(aggregate_loss(token_loss[rows][:, :width], sub_mask[:, :width], agg, **totals))
    assert sum(p.item() for p in parts) == pytest.approx(full.item(), rel=1e-10)
    assert full.item() == pytest.approx(ref_aggregate(token_loss, lengths, agg, 32), rel=1e-10)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    b=st.integers(1, 9),
    t=st.integers(1, 12),
    micro=st.integers(1, 9),
    agg=st.sampled_from(["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]),
)
def test_micro_batches_add_up_property(seed, b, t, micro, agg):
    token_loss, mask, lengths = make_batch(seed, b=b, t=t)
    totals = dict(total_tokens=int(mask.sum()), total_seqs=b, norm_len=t)
    full = aggregate_loss(token_loss, mask, agg, **totals)
    parts = sum(
        aggregate_loss(token_loss[rows], mask[rows], agg, **totals).item()
        for rows in torch.arange(b).split(micro)
    )
    assert parts == pytest.approx(full.item(), rel=1e-9, abs=1e-12)
    assert full.item() == pytest.approx(ref_aggregate(token_loss, lengths, agg, t), rel=1e-9, abs=1e-12)


def test_aggregations_differ_on_ragged_batch():
    token_loss, mask, _ = make_batch(0)
    totals = dict(total_tokens=int(mask.sum()), total_seqs=mask.shape[0], norm_len=10)
    values = {agg: aggregate_loss(token_loss, mask, agg, **totals).item() for agg in LOSS_AGGS}
    assert len({round(v, 9) for v in values.values()}) == 3, values


def test_aggregate_gradient_flows_only_through_masked_tokens():
    token_loss, mask, _ = make_batch(3)
    token_loss = token_loss.clone().requires_grad_()
    aggregate_loss(
        token_loss, mask, "token-mean", total_tokens=int(mask.sum()), total_seqs=7, norm_len=10
    ).backward()
    assert torch.equal(token_loss.grad == 0, ~mask)
    assert torch.allclose(token_loss.grad[mask], torch.full_like(token_loss.grad[mask], 1 / int(mask.sum())))


@pytest.mark.parametrize("agg", ["foo", "token-sum", "", "TOKEN-MEAN"])
def test_aggregate_unknown_raises(agg):
    token_loss, mask, _ = make_batch(0)
    with pytest.raises(ValueError) as info:
        aggregate_loss(token_loss, mask, agg, total_tokens=int(mask.sum()), total_seqs=7, norm_len=10)
    message = str(info.value)
    assert "loss.agg" in message
    for name in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        assert name in message
