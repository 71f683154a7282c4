"""DAPO's dynamic sampling (arca_sweep/sampling.py): zero-spread groups dropped and refilled from the
reserve stream, within the round cap; what was generated is counted, and the report sets the arms' budgets
side by side."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from arca_sweep.advantage import spread
from arca_sweep.report.budget import budget_section
from arca_sweep.report.data import Arm
from arca_sweep.rollout import RolloutBatch
from arca_sweep.sampling import reserve_cursor, step_rollout
from tests.helpers import cli

G = 4


def fake_rollout(solved: dict[int, list[float]], calls: list[list[int]]):
    """A rollout whose rewards per prompt are ``solved[prompt]`` (default: all 0, zero spread); each row's
    response is ``prompt + 1`` tokens long, its text the prompt's number."""

    def rollout(indices: list[int]):
        calls.append(list(indices))
        n, width = len(indices) * G, max(indices) + 1
        lengths = torch.tensor([p + 1 for p in indices for _ in range(G)])
        batch = RolloutBatch(
            prompt_ids=torch.zeros(n, 2, dtype=torch.long),
            prompt_mask=torch.ones(n, 2, dtype=torch.bool),
            response_ids=torch.zeros(n, width, dtype=torch.long),
            response_mask=torch.arange(width)[None] < lengths[:, None],
            finish_reasons=["stop"] * n,
            texts=[str(p) for p in indices for _ in range(G)],
            sampling_logprobs=torch.zeros(n, width),
        )
        rewards = torch.tensor([r for p in indices for r in solved.get(p, [0.0] * G)])
        return batch, rewards

    return rollout


def reserve(position: int, count: int) -> list[int]:
    return list(range(100 + position, 100 + position + count))


MIXED = [1.0, 0.0, 0.0, 1.0]


def test_zero_spread_groups_are_refilled_from_the_reserve_in_order():
    calls = []
    solved = {0: MIXED, 2: MIXED, 100: [1.0] * G, 101: MIXED, 102: MIXED}  # 100: all solved, zero spread
    got = step_rollout(fake_rollout(solved, calls), [0, 1, 2, 3], reserve, 0, G, 5, 0, dynamic=True)
    assert calls == [[0, 1, 2, 3], [100, 101], [102]]  # round 2 asks for the 2 missing, round 3 for 1
    assert got.indices == [0, 2, 101, 102]  # kept groups in the order they came
    assert got.batch.texts == [str(p) for p in got.indices for _ in range(G)]
    assert bool(spread(got.rewards, G).all()) and len(got.rewards) == 4 * G
    assert got.metrics == {
        "rollout/generated_rollouts": 7 * G,
        "rollout/generated_tokens": G * sum(p + 1 for p in [0, 1, 2, 3, 100, 101, 102]),
        "sampling/rounds": 3,
        "sampling/groups_trained": 4,
        "sampling/groups_dropped": 3,
        "sampling/reserve_from": 0,
        "sampling/reserve_to": 3,
    }
    assert got.reserve_to == 3


def test_the_round_cap_trains_what_it_has():
    calls = []
    got = step_rollout(fake_rollout({1: MIXED}, calls), [0, 1, 2, 3], reserve, 7, G, 2, 0, dynamic=True)
    assert calls == [[0, 1, 2, 3], [107, 108, 109]]  # two rounds, then stop
    assert got.indices == [1] and got.metrics["sampling/groups_trained"] == 1
    assert got.metrics["sampling/groups_dropped"] == 6 and got.reserve_to == 10


def test_no_group_with_spread_trains_the_steps_own_batch():
    calls = []
    got = step_rollout(fake_rollout({}, calls), [0, 1], reserve, 0, G, 2, 0, dynamic=True)
    assert got.indices == [0, 1] and got.metrics["sampling/groups_trained"] == 2
    assert got.metrics["sampling/groups_dropped"] == 2  # the refill's 2 groups; the own 2 train


def test_without_dynamic_sampling_one_round_is_counted():
    calls = []
    got = step_rollout(fake_rollout({}, calls), [0, 1], reserve, 0, G, 3, 0, dynamic=False)
    assert calls == [[0, 1]] and got.indices == [0, 1]
    assert got.metrics == {"rollout/generated_rollouts": 2 * G, "rollout/generated_tokens": G * 3}


def test_a_resumed_arm_goes_on_where_its_reserve_stopped():
    lines = [
        json.dumps({"step": 0}),
        json.dumps({"step": 1, "sampling/reserve_to": 4}),
        json.dumps({"step": 2}),
    ]
    assert reserve_cursor(lines) == 4 and reserve_cursor(None) == 0 and reserve_cursor(lines[:1]) == 0


def arm(name: str, rollouts: list[int], dropped: list[int]) -> Arm:
    records = [{"step": 0}] + [
        {
            "step": i + 1,
            "rollout/generated_rollouts": r,
            "rollout/generated_tokens": 10 * r,
            "sampling/groups_dropped": d,
        }
        for i, (r, d) in enumerate(zip(rollouts, dropped, strict=True))
    ]
    return Arm(Path(name), "uniform", 8, 0, config={"budget": {"dynamic_sampling": True}}, records=records)


def test_the_report_flags_arms_whose_budgets_differ():
    same = budget_section([arm("a", [16, 16], [0, 0]), arm("b", [16, 16], [0, 0])])
    assert not any("Budgets differ" in line for line in same)
    text = "\n".join(budget_section([arm("a", [16, 16], [0, 0]), arm("b", [24, 20], [2, 1])]))
    assert "| `a` | 2 | 32 | 320 | 0 |" in text and "| `b` | 2 | 44 | 440 | 3 |" in text
    assert "**Budgets differ**: the arms generated 32 to 44 rollouts (+38%; most: `b`)" in text
    old = arm("c", [16, 16], [0, 0])
    old.records = [{"step": 0}, {"step": 1}, {"step": 2}]  # a version before the counts
    text = "\n".join(budget_section([arm("a", [16, 16], [0, 0]), old]))
    assert "Budget unknown for 1 arm" in text and "`c`" in text and "Budgets differ" not in text


def test_a_smoke_run_trains_full_batches_and_counts_what_it_generated(tmp_path):
    """The tiny model on arith: some groups have zero spread (all wrong or all right); each step trains
    prompts_per_step groups unless it hit the round cap, and its records count every generated rollout."""
    cli(
        "budget=smoke", "budget.dynamic_sampling=true", "threads=1", f"hydra.run.dir={tmp_path}", cwd=tmp_path
    )
    steps = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()][1:]
    assert sum(r["sampling/groups_dropped"] for r in steps) > 0  # the case is exercised
    for r in steps:
        assert r["sampling/groups_trained"] == 4 or r["sampling/rounds"] == 3, r
        assert r["rollout/generated_rollouts"] == 4 * (
            r["sampling/groups_trained"] + r["sampling/groups_dropped"]
        )
    assert [r["sampling/reserve_from"] for r in steps[1:]] == [r["sampling/reserve_to"] for r in steps[:-1]]
    # reward/mean and frac_zero_std are the step's own prompts' (comparable across arms); the kept groups'
    # mean is reward/trained_mean: step 1 (same weights and seed as an arm without dynamic sampling)
    plain = tmp_path / "plain"
    cli("budget=smoke", "budget.steps=1", "threads=1", f"hydra.run.dir={plain}", cwd=tmp_path)
    first = json.loads((plain / "metrics.jsonl").read_text().splitlines()[1])
    assert steps[0]["reward/mean"] == first["reward/mean"]
    assert steps[0]["reward/frac_zero_std"] == first["reward/frac_zero_std"] > 0
    assert steps[0]["reward/trained_mean"] != steps[0]["reward/mean"] and "reward/trained_mean" not in first
