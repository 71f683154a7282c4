"""Advantage estimators (arca_sweep/advantage.py): hand cases, a slow reference, and verl 0.9.1's own
functions on identical inputs (rewards, group ids, response masks)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arca_sweep.advantage import ESTIMATORS, estimate, frac_zero_spread
from tests.verl_peer import import_verl

NAMES = ("grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline")


def test_the_registry_holds_the_issue_estimators():
    assert tuple(ESTIMATORS) == NAMES
    for name, fn in ESTIMATORS.items():
        assert "arXiv" in fn.__doc__ and "verl" in fn.__doc__, name  # formula and source


def test_hand_cases():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0])  # two groups of 4
    grpo, frac = estimate("grpo", r, 4), frac_zero_spread(r, 4)
    std1 = math.sqrt((0.75**2 + 3 * 0.25**2) / 3) + 1e-6  # unbiased, plus the guard
    assert grpo.tolist() == pytest.approx(
        [0.75 / std1, *[-0.25 / std1] * 3, *[0.25 / std1] * 2, -0.75 / std1, 0.25 / std1], rel=1e-6
    )
    assert frac == 0.0
    assert estimate("dr_grpo", r, 4).tolist() == pytest.approx(
        [0.75, -0.25, -0.25, -0.25, 0.25, 0.25, -0.75, 0.25]
    )
    # RLOO: r_i minus the mean of the other three
    assert estimate("rloo", r, 4).tolist() == pytest.approx(
        [1, -1 / 3, -1 / 3, -1 / 3, 1 / 3, 1 / 3, -1, 1 / 3]
    )
    # REINFORCE++ over tokens: rows of 1, 1, 2, 2 tokens, rewards 1, 0, 0, 1 (one group of 4)
    r2, lengths = torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.tensor([1, 1, 2, 2])
    # the tokens' returns: [1] [0] [0 0] [1 1], mean 0.5, Bessel-corrected variance 6 * 0.25 / 5 = 0.3
    mean, var = 0.5, 0.3
    want = [(x - mean) / math.sqrt(var + 1e-8) for x in [1, 0, 0, 1]]
    assert estimate("reinforce_pp", r2, 4, lengths).tolist() == pytest.approx(want, rel=1e-6)
    # with the group baseline (mean 0.5): returns +-0.5 on the same tokens, whitened the same way
    assert estimate("reinforce_pp_baseline", r2, 4, lengths).tolist() == pytest.approx(want, rel=1e-6)


def test_equal_groups_carry_no_advantage_under_the_group_estimators():
    r = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    for name in ("grpo", "dr_grpo", "rloo"):
        adv, frac = estimate(name, r, 3), frac_zero_spread(r, 3)
        assert adv.abs().max().item() == 0.0 and frac == 1.0, name
    # REINFORCE++ without a baseline has no groups: the batch mean is 0.5, so both groups move
    adv = estimate("reinforce_pp", r, 3)
    assert adv[:3].min().item() > 0 > adv[3:].max().item()


def reference(name: str, rewards: list[float], group_size: int, lengths: list[int]) -> list[float]:
    """Slow and plain: one loop per definition (module docstrings)."""
    groups = [rewards[i : i + group_size] for i in range(0, len(rewards), group_size)]
    out = []
    for g in groups:
        mean = sum(g) / len(g)
        std = math.sqrt(sum((x - mean) ** 2 for x in g) / (len(g) - 1))
        for x in g:
            if name == "grpo":
                out.append((x - mean) / (std + 1e-6))
            elif name == "dr_grpo":
                out.append(x - mean)
            elif name == "rloo":
                out.append(x - (sum(g) - x) / (len(g) - 1))
            else:
                out.append(x - mean if name == "reinforce_pp_baseline" else x)
    if name.startswith("reinforce_pp"):
        tokens = [v for v, n in zip(out, lengths, strict=True) for _ in range(n)]
        n = len(tokens)  # verl's masked_mean divides by (count + 1e-8): it moves an all-equal batch off 0
        m = sum(tokens) / (n + 1e-8)
        var = sum((t - m) ** 2 for t in tokens) / (n + 1e-8) * n / (n - 1)
        out = [(v - m) / math.sqrt(var + 1e-8) for v in out]
    return out


@settings(max_examples=100, deadline=None)
@given(
    data=st.data(),
    name=st.sampled_from(NAMES),
    group_size=st.integers(2, 6),
    groups=st.integers(1, 4),
    binary=st.booleans(),
)
def test_every_estimator_matches_the_reference(data, name, group_size, groups, binary):
    n = group_size * groups
    value = st.sampled_from([0.0, 1.0]) if binary else st.floats(-3, 3, allow_nan=False, width=32)
    rewards = data.draw(st.lists(value, min_size=n, max_size=n))
    lengths = data.draw(st.lists(st.integers(1, 9), min_size=n, max_size=n))
    adv = estimate(name, torch.tensor(rewards), group_size, torch.tensor(lengths))
    assert adv.dtype == torch.float32 and adv.shape == (n,)
    assert adv.tolist() == pytest.approx(reference(name, rewards, group_size, lengths), rel=1e-5, abs=1e-5)


def verl_inputs(rewards: torch.Tensor, lengths: torch.Tensor, group_size: int):
    """verl's form: the outcome reward on each response's last token, a [N, L] response mask, group ids."""
    width = int(lengths.max())
    mask = (torch.arange(width)[None] < lengths[:, None]).float()
    token_rewards = torch.zeros(len(rewards), width)
    token_rewards[torch.arange(len(rewards)), lengths - 1] = rewards
    index = np.array([f"prompt-{i // group_size}" for i in range(len(rewards))], dtype=object)
    return token_rewards, mask, index


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "real"])
def test_every_estimator_equals_verl(name, binary):
    """verl 0.9.1 (``verl.trainer.ppo.core_algos``): every token of a response carries A_i."""
    core = import_verl("verl.trainer.ppo.core_algos")
    config = type("AlgoConfig", (), {"gamma": 1.0, "norm_adv_by_std_in_grpo": True})()
    verl_fn = {
        "grpo": lambda tr, m, idx: core.compute_grpo_outcome_advantage(tr, m, idx),
        "dr_grpo": lambda tr, m, idx: core.compute_grpo_outcome_advantage(
            tr, m, idx, norm_adv_by_std_in_grpo=False
        ),
        "rloo": lambda tr, m, idx: core.compute_rloo_outcome_advantage(tr, m, idx),
        "reinforce_pp": lambda tr, m, idx: core.compute_reinforce_plus_plus_outcome_advantage(
            tr, m, config=config
        ),
        "reinforce_pp_baseline": lambda tr, m, idx: (
            core.compute_reinforce_plus_plus_baseline_outcome_advantage(tr, m, idx)
        ),
    }[name]
    g = torch.Generator().manual_seed(7)
    for group_size, groups in [(2, 3), (4, 4), (8, 2), (5, 3)]:
        n = group_size * groups
        if binary:
            rewards = (torch.rand(n, generator=g) < 0.4).float()
            rewards[:group_size] = 1.0  # a group with zero spread
        else:
            rewards = torch.randn(n, generator=g)
        lengths = torch.randint(1, 12, (n,), generator=g)
        token_rewards, mask, index = verl_inputs(rewards, lengths, group_size)
        theirs, _ = verl_fn(token_rewards.clone(), mask, index)
        ours = estimate(name, rewards, group_size, lengths)
        want = torch.where(mask.bool(), ours[:, None], 0.0)
        assert torch.allclose(theirs.float(), want, rtol=1e-5, atol=1e-5), (name, group_size, theirs, want)


@pytest.mark.parametrize(
    "old, new, resumes", [("std", "grpo", True), ("none", "dr_grpo", True), ("std", "rloo", False)]
)
def test_a_checkpoint_of_the_old_key_resumes_under_its_new_name(tmp_path, old, new, resumes):
    """An arm checkpointed before ``advantage.estimator`` (``advantage.scale: std | none``) resumes under the
    estimator that computes what it ran, and is refused under another."""
    from omegaconf import OmegaConf

    from arca_sweep.arm_dir.checkpoint import check_same_config
    from arca_sweep.arm_dir.files import ArmStateError
    from arca_sweep.testing import make_config

    current = OmegaConf.to_container(make_config(f"advantage={new}"), resolve=True)
    saved = {**current, "advantage": {"scale": old}}
    if resumes:
        check_same_config(saved, current, tmp_path)
    else:
        with pytest.raises(ArmStateError, match="advantage.estimator: 'grpo' there, 'rloo' now"):
            check_same_config(saved, current, tmp_path)


def test_overlong_penalty_is_dapos_formula():
    """DAPO eq. 13 at L_max = 20, L_cache = 5: 0 up to 15 tokens, linear to -1 at 20; penalty_factor scales
    it (verl's overlong_buffer.penalty_factor); cache 0 is off."""
    from arca_sweep.advantage import overlong_penalty

    lengths = torch.tensor([1, 15, 16, 18, 20])
    assert overlong_penalty(lengths, 20, 5).tolist() == pytest.approx([0, 0, -0.2, -0.6, -1.0])
    assert overlong_penalty(lengths, 20, 5, factor=0.5).tolist() == pytest.approx([0, 0, -0.1, -0.3, -0.5])
    assert overlong_penalty(lengths, 20, 0).tolist() == [0.0] * 5
    assert overlong_penalty(torch.tensor([25]), 20, 5).tolist() == [-1.0]  # beyond the cap: -factor


def test_overlong_penalty_equals_trls_soft_punishment():
    """TRL 1.16's ``get_soft_overlong_punishment`` reward function on the same lengths."""
    pytest.importorskip("trl")
    from trl.rewards import get_soft_overlong_punishment

    from arca_sweep.advantage import overlong_penalty

    trl_fn = get_soft_overlong_punishment(max_completion_len=32, soft_punish_cache=8)
    lengths = list(range(1, 33))
    theirs = trl_fn(completion_ids=[[0] * n for n in lengths])
    assert overlong_penalty(torch.tensor(lengths), 32, 8).tolist() == pytest.approx(theirs, abs=1e-12)


def test_an_all_equal_batch_under_reinforce_pp_is_verls_small_value():
    """verl's whitening divides the mean by (tokens + 1e-8): an all-equal batch comes out near 0, not at 0
    (1.5e-4 for two one-token rewards of 3). Kept as verl computes it (hypothesis found it against a
    reference that had dropped the 1e-8)."""
    adv = estimate("reinforce_pp", torch.tensor([3.0, 3.0]), 2, torch.tensor([1, 1]))
    assert adv.tolist() == pytest.approx(reference("reinforce_pp", [3.0, 3.0], 2, [1, 1]), rel=1e-5)
    assert 1e-4 < adv[0].item() < 2e-4
