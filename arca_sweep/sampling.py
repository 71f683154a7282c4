"""A step's rollouts, and DAPO's dynamic sampling (``budget.dynamic_sampling``).

Every step first generates its own prompts (``task.train_indices``: the same prompts, in the same order,
in every arm). With dynamic sampling (Yu et al., DAPO, arXiv 2503.14476, section 3.2; verl's
``filter_groups``, TRL's documented recipe), a group whose G rewards are all equal (it carries no
advantage under grpo, dr_grpo and rloo) is dropped and replaced by the next prompts of a reserve stream,
at most ``budget.max_sampling_rounds`` generate rounds per step; what is kept trains, up to
``prompts_per_step`` groups. The reserve is the same shared order from the position after the run's last
step (``steps * prompts_per_step``) on, consumed in order across the run: a step's own prompts stay every
arm's, and each arm's refills are a prefix of one stream, recorded per step (``sampling/reserve_from``,
``sampling/reserve_to``), so which prompts an arm saw can be read from its records. An arm that drops more
groups generates more: ``rollout/generated_rollouts`` and ``rollout/generated_tokens`` count every step's
generation, kept or not, and the report sets the arms' totals side by side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from arca_sweep.advantage import spread
from arca_sweep.rollout import RolloutBatch, concat_batches, take_rows


@dataclass
class StepRollout:
    batch: RolloutBatch  # the groups that train, G rows each
    indices: list[int]  # their prompts (task indices), in batch order
    rewards: torch.Tensor  # [B] the task's rewards of those rows
    metrics: dict[str, float]
    reserve_to: int  # the reserve stream's next position after this step
    own_rewards: torch.Tensor  # [P * G] the rewards of the step's own prompts (the first round): every arm's


def reserve_cursor(metrics_lines: list[str] | None) -> int:
    """Where a resumed arm's reserve stream goes on: the last recorded ``sampling/reserve_to`` (0: none)."""
    import json

    for line in reversed(metrics_lines or []):
        value = json.loads(line).get("sampling/reserve_to")
        if value is not None:
            return int(value)
    return 0


def step_rollout(
    rollout: Callable[[list[int]], tuple[RolloutBatch, torch.Tensor]],
    indices: list[int],
    reserve: Callable[[int, int], list[int]],
    cursor: int,
    group_size: int,
    max_rounds: int,
    pad_id: int,
    dynamic: bool,
) -> StepRollout:
    """The step's rollouts: ``rollout(indices) -> (batch, rewards)`` on the step's ``indices``; with
    ``dynamic``, zero-spread groups dropped and refilled from ``reserve(position, count)`` (module
    docstring) from ``cursor`` on."""
    want, start = len(indices), cursor
    batch, rewards = rollout(indices)
    if not dynamic:
        return StepRollout(batch, list(indices), rewards, _generated([batch]), cursor, rewards)
    rounds = [(batch, rewards, list(indices))]  # each round's (batch, rewards, prompts)
    kept: list[tuple[int, int]] = []  # (round, group) of the groups that train, in the order they came
    while True:
        last = len(rounds) - 1
        found = spread(rounds[last][1], group_size).nonzero().flatten().tolist()
        kept += [(last, g) for g in found][: want - len(kept)]
        if len(kept) == want or len(rounds) == max_rounds:
            break
        more = reserve(cursor, want - len(kept))
        cursor += len(more)
        rounds.append((*rollout(more), more))
    generated = [b for b, _, _ in rounds]
    trained = len(kept) or want  # (none kept: the step's own groups train, with no advantage)
    metrics = {
        **_generated(generated),
        "sampling/rounds": len(rounds),
        "sampling/groups_trained": trained,
        "sampling/groups_dropped": sum(len(b.texts) for b in generated) // group_size - trained,
        "sampling/reserve_from": start,
        "sampling/reserve_to": cursor,
    }
    if not kept:  # every group had zero spread, every round: the step's own batch (no advantage anywhere)
        return StepRollout(batch, list(indices), rewards, metrics, cursor, rewards)
    rows = [list(range(g * group_size, (g + 1) * group_size)) for _, g in kept]
    parts = [take_rows(rounds[i][0], r) for (i, _), r in zip(kept, rows, strict=True)]
    picked = torch.cat([rounds[i][1][r] for (i, _), r in zip(kept, rows, strict=True)])
    prompts = [rounds[i][2][g] for i, g in kept]
    return StepRollout(concat_batches(parts, pad_id), prompts, picked, metrics, cursor, rewards)


def _generated(batches: list[RolloutBatch]) -> dict[str, float]:
    """What the step generated, kept or not: its rollouts and response tokens."""
    return {
        "rollout/generated_rollouts": sum(len(b.texts) for b in batches),
        "rollout/generated_tokens": sum(int(b.response_mask.sum()) for b in batches),
    }
