"""Tasks: where prompts come from and how answers are graded.

A task yields :class:`Problem` rows by index. The training order is a pure function of
``data.seed`` and the step, never of the run seed, so every arm of a sweep sees the same prompts
in the same order (SPEC: matched rollout budgets).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Problem:
    index: int
    question: str  # the user message, before the chat template
    answer: str  # gold answer, compared by the task's reward
    meta: dict = field(default_factory=dict)


class Task(Protocol):
    def train_indices(self, step: int, num_prompts: int) -> list[int]: ...

    def train_problem(self, index: int) -> Problem: ...

    def eval_problems(self, num: int) -> list[Problem]: ...

    def reward(self, response_text: str, problem: Problem) -> float: ...

    def rewards(self, response_texts: list[str], problems: list[Problem]) -> list[float]: ...

    @property
    def stats(self) -> dict[str, float]:
        """Counters for the run's metrics (skipped rows, grader timeouts), cumulative."""

    def close(self) -> None: ...


def batch_hash(indices: list[int]) -> str:
    """A short stable hash of a step's prompt indices: equal across arms that saw the same prompts."""
    return hashlib.sha256(json.dumps(list(indices)).encode()).hexdigest()[:16]


def build_task(data_cfg, prompt_fits: Callable[[str], bool] | None = None) -> Task:
    """The task named by ``data.name``. ``prompt_fits(question)``: False skips a row whose prompt is too
    long (counted in the task's stats); arith's prompts are short by construction."""
    from arca_sweep.tasks.arith import ArithTask
    from arca_sweep.tasks.jsonl import JsonlTask
    from arca_sweep.tasks.math import MathTask

    registry = {"arith": ArithTask.from_config, "math": MathTask.from_config, "math500": MathTask.from_config}
    registry["jsonl"] = JsonlTask.from_config
    if data_cfg.name not in registry:
        raise ValueError(f"data.name={data_cfg.name!r} is not a task; choose one of {sorted(registry)}")
    if data_cfg.name == "arith":
        return registry["arith"](data_cfg)
    return registry[data_cfg.name](data_cfg, prompt_fits)
