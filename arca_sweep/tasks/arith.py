"""The ``arith`` task: seeded procedural integer arithmetic, answer asked for in ``\\boxed{}``.

Problem ``i`` of a stream is a pure function of ``(stream seed, i, shape)``: e.g. ``Compute 47 + 38 - 19.``
with gold answer ``66``, followed by ``data.instruction``. Reward is 1 when the response's answer equals the
gold one: the last boxed integer (``data.answer_format=boxed``), or the last number of the response when it is
an integer (``number``; :func:`arca_sweep.rewards.last_integer`).
"""

from __future__ import annotations

import hashlib
import inspect
import math
import random

from arca_sweep.rewards import MAX_DIGITS, boxed_integer_reward, last_boxed, last_integer, last_integer_reward
from arca_sweep.tasks import Problem

INSTRUCTION = "Put the final answer in \\boxed{}."
# data.answer_format -> (the answer a response gives, its reward against the gold answer)
ANSWER_FORMATS = {
    "boxed": (last_boxed, boxed_integer_reward),
    "number": (last_integer, last_integer_reward),
}


def held_out(expr: str) -> bool:
    """The eval partition: 1/16 of all expressions, by content. Training never draws from it,
    so eval problems are unseen whatever the seeds and the budget."""
    return int(hashlib.sha256(expr.encode()).hexdigest()[:8], 16) % 16 == 0


MAX_OPERANDS = 64  # operands per problem, at most: a prompt a model can read, a partition quick to size


def size_problem(max_operands: int, max_operand: int, ops: str) -> str | None:
    """What is wrong with a shape whose problems could not be graded (None: nothing): more than
    :data:`MAX_OPERANDS` operands, or answers that could exceed the graders' :data:`MAX_DIGITS` digits
    (a product of ``max_operands`` operands with ``*``, else a sum)."""
    if max_operands > MAX_OPERANDS:
        return f"data.max_operands={max_operands}: at most {MAX_OPERANDS}"
    if "*" in ops:
        digits = max_operands * math.log10(max_operand + 1)
    else:
        digits = math.log10(max_operands * max_operand + 1)
    if digits > MAX_DIGITS:
        return (
            f"data.max_operand={max_operand} with data.max_operands={max_operands} and data.ops={ops!r}: answers "
            f"could have {math.ceil(digits)} digits, and the graders read integers of at most {MAX_DIGITS}; "
            "lower data.max_operand or data.max_operands"
        )
    return None


def eval_capacity(
    min_operands: int, max_operands: int, max_operand: int, ops: str, min_operand: int = 0
) -> int:
    """How many distinct eval problems :meth:`ArithTask.eval_problems` can draw in reasonable time: half of
    the held-out partition's expected size (1/16 of all expressions; past half, redraws pile up)."""
    kinds = len(set(ops))
    values = max_operand - min_operand + 1
    expressions = sum(values**n * kinds ** (n - 1) for n in range(min_operands, max_operands + 1))
    return expressions // 32


def make_problem(
    seed: int,
    index: int,
    min_operands: int,
    max_operands: int,
    max_operand: int,
    ops: str,
    split: str = "train",
    min_operand: int = 0,
    instruction: str = INSTRUCTION,
) -> Problem:
    """Problem ``index`` of the stream ``seed``: operands in [min_operand, max_operand], ``*`` before
    ``+``/``-``, then left to right; the question is ``Compute <expr>.`` and the instruction, if any.
    Draws again (deterministically) until the expression is in ``split``."""
    for attempt in range(10_000):
        rng = random.Random(f"arith:{seed}:{index}:{attempt}")
        n = rng.randint(min_operands, max_operands)
        operands = [rng.randint(min_operand, max_operand) for _ in range(n)]
        operators = [rng.choice(ops) for _ in range(n - 1)]
        expr = " ".join(
            [str(operands[0])] + [f"{op} {x}" for op, x in zip(operators, operands[1:], strict=True)]
        )
        if held_out(expr) == (split == "eval"):
            break
    steps, answer = solve(operands, operators)
    question = f"Compute {expr}. {instruction}".rstrip()
    return Problem(index=index, question=question, answer=str(answer), meta={"steps": steps, "expr": expr})


def solve(operands: list[int], operators: list[str]) -> tuple[list[str], int]:
    """Worked steps and value: each ``*`` first (leftmost first), then ``+``/``-`` left to right."""
    values, ops, steps = list(operands), list(operators), []
    while "*" in ops:
        k = ops.index("*")
        product = values[k] * values[k + 1]
        steps.append(f"{values[k]} * {values[k + 1]} = {product}")
        values[k : k + 2], ops[k : k + 1] = [product], []
    value = values[0]
    for op, x in zip(ops, values[1:], strict=True):
        new = value + x if op == "+" else value - x
        steps.append(f"{value} {op} {x} = {new}")
        value = new
    return steps, value


def worked_solution(problem: Problem, boxed: bool = True) -> str:
    """The short worked steps the tiny model is pretrained on; ``boxed=False`` gives the unboxed variant."""
    final = f"\\boxed{{{problem.answer}}}" if boxed else f"The answer is {problem.answer}."
    return "\n".join(problem.meta["steps"] + [final])


class ArithTask:
    """Training stream seeded by ``seed``; evaluation stream by ``eval_seed``, from the held-out partition."""

    def __init__(
        self,
        seed: int = 0,
        eval_seed: int = 1_000_003,
        min_operands: int = 2,
        max_operands: int = 3,
        max_operand: int = 99,
        ops: str = "+-",
        min_operand: int = 0,
        instruction: str = INSTRUCTION,
        answer_format: str = "boxed",
    ):
        bad = set(ops) - set("+-*")
        if not ops or bad:
            raise ValueError(f"data.ops={ops!r}: use a non-empty string of '+', '-', '*'")
        if not 2 <= min_operands <= max_operands:
            raise ValueError(
                f"data.min_operands={min_operands}, data.max_operands={max_operands}: "
                "need 2 <= min_operands <= max_operands"
            )
        if not 0 <= min_operand <= max_operand:
            raise ValueError(
                f"data.min_operand={min_operand}, data.max_operand={max_operand}: need 0 <= min_operand <= max_operand"
            )
        if (problem := size_problem(max_operands, max_operand, ops)) is not None:
            raise ValueError(problem)
        if answer_format not in ANSWER_FORMATS:
            raise ValueError(
                f"data.answer_format={answer_format!r}: choose one of {', '.join(ANSWER_FORMATS)}"
            )
        self.seed, self.eval_seed = seed, eval_seed
        self.shape = dict(
            min_operands=min_operands,
            max_operands=max_operands,
            max_operand=max_operand,
            ops=ops,
            min_operand=min_operand,
            instruction=instruction,
        )
        self.extract_answer, self._reward = ANSWER_FORMATS[answer_format]

    @classmethod
    def from_config(cls, cfg) -> ArithTask:
        """From a ``data`` section; a key it lacks takes this class's default."""
        keys = inspect.signature(cls).parameters
        return cls(**{key: cfg[key] for key in keys if key in cfg})

    def train_indices(self, step: int, num_prompts: int) -> list[int]:
        return list(range(step * num_prompts, (step + 1) * num_prompts))

    def train_problem(self, index: int) -> Problem:
        return make_problem(self.seed, index, **self.shape, split="train")

    def eval_problems(self, num: int) -> list[Problem]:
        """The first ``num`` distinct problems of the eval stream."""
        problems, seen = [], set()
        for i in range(100 * num):
            p = make_problem(self.eval_seed, i, **self.shape, split="eval")
            if p.question not in seen:
                seen.add(p.question)
                problems.append(p)
                if len(problems) == num:
                    return problems
        raise ValueError(
            f"the eval partition of this arith shape has fewer than {num} distinct problems; "
            "lower budget.eval_size or widen data.max_operand / data.max_operands"
        )

    def reward(self, response_text: str, problem: Problem) -> float:
        return self._reward(response_text, problem.answer)

    def rewards(self, response_texts: list[str], problems: list[Problem]) -> list[float]:
        return [self.reward(t, p) for t, p in zip(response_texts, problems, strict=True)]

    @property
    def stats(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        pass
