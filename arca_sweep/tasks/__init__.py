"""Tasks: where prompts come from and how answers are graded.

A task yields :class:`Problem` rows by index. The training order is a pure function of
``data.seed`` and the step, never of the run seed, so every arm of a sweep sees the same prompts
in the same order (SPEC: matched rollout budgets).
"""

from __future__ import annotations

import hashlib
import importlib
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


# data.name -> "module:class" of its task, imported when built (the config's valid choices, in this order)
TASKS = {
    "arith": "arca_sweep.tasks.arith:ArithTask",
    "arith_small": "arca_sweep.tasks.arith:ArithTask",
    "math": "arca_sweep.tasks.math:MathTask",
    "math500": "arca_sweep.tasks.math:MathTask",
    # reasoning benchmarks: MATH training rows, the benchmark's eval rows (conf/data/<name>.yaml)
    "aime24": "arca_sweep.tasks.math:MathTask",
    "aime25": "arca_sweep.tasks.math:MathTask",
    "amc23": "arca_sweep.tasks.math:MathTask",
    "minerva": "arca_sweep.tasks.math:MathTask",
    "olympiadbench": "arca_sweep.tasks.math:MathTask",
    "jsonl": "arca_sweep.tasks.jsonl:JsonlTask",
}


def is_arith(name: str) -> bool:
    """``data.name`` is a shape of the arith task (its options: operands, ops, instruction, answer format)."""
    return TASKS.get(name) == TASKS["arith"]


def build_task(data_cfg, prompt_fits: Callable[[str], bool] | None = None, eval_only: bool = False) -> Task:
    """The task named by ``data.name`` (:data:`TASKS`). ``prompt_fits(question)``: False skips a row whose
    prompt is too long (counted in the task's stats); arith's prompts are short by construction.

    ``eval_only``: the task of an eval set (``eval.sets.<name>``): a row task loads its eval rows only (no
    training source is read) and its ``train_*`` methods raise. Arith generates its problems from seeds and
    reads nothing, so it is built as usual."""
    if data_cfg.name not in TASKS:
        raise ValueError(f"data.name={data_cfg.name!r} is not a task; choose one of {sorted(TASKS)}")
    module, name = TASKS[data_cfg.name].split(":")
    task_cls = getattr(importlib.import_module(module), name)
    if is_arith(data_cfg.name):
        return task_cls.from_config(data_cfg)
    return task_cls.from_config(data_cfg, prompt_fits, eval_only=eval_only)
