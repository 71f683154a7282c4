"""Greedy pass@1 on a held-out eval set, with every problem's result kept for paired comparisons (the
library; the ``arca-sweep-eval`` command is :mod:`arca_sweep.eval.cli`).

Each eval of an arm writes ``eval/step_<n>.jsonl`` in the arm's dir (:func:`arca_sweep.arm_dir.results_path`): one JSON
line per problem, in eval-set order::

    {"id": 17, "position": 0, "correct": 1, "answer": "66", "gold": "66", "response_tokens": 23,
     "finish": "stop", "reward": 1.0, "level": 3, "subject": "Algebra"}

``correct`` is the task's verdict (:func:`correctness`), ``reward`` the reward the answer got (files of
earlier versions lack it).

``id`` is stable across arms and runs of the same eval set (the row's ``unique_id`` where it has one,
else the problem's index in its task), so two arms pair problem by problem. ``answer`` is the answer the
response gives, by the task's ``extract_answer`` where it has one (arith's ``data.answer_format``), else the
last ``\\boxed{}`` content (null without one), and ``gold`` the reference answer, both cut to
:data:`MAX_ANSWER_CHARS`. ``level``/``subject`` appear when the row carries them. The file is
written atomically (a temporary file, then a rename): a reader never sees half an eval.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from arca_sweep.arm_dir import atomic_write, read_jsonl, writing
from arca_sweep.rewards import last_boxed

MAX_ANSWER_CHARS = 200
BREAKDOWN_KEYS = ("level", "subject")


def encode_prompts(tokenizer, problems, enable_thinking: bool = False) -> list[list[int]]:
    """Each question as a user turn through the model's chat template (Qwen3: thinking off by default)."""
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p.question}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=enable_thinking,
        )
        for p in problems
    ]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def problem_id(problem):
    """A problem's id, stable across arms: the row's ``unique_id`` if it has one, else its task index."""
    return problem.meta.get("unique_id", problem.index)


def _bounded(text: str | None) -> str | None:
    return None if text is None else text[:MAX_ANSWER_CHARS]


CORRECT_AT = 1.0  # a built-in task's reward is 1 for a correct answer and 0 otherwise


def correctness(task, texts, problems, rewards) -> list[bool]:
    """Whether each answer is correct: the task's own ``correct(texts, problems, rewards)`` where it has
    one (``data=jsonl``: the reward plug-in's ``correct`` attribute or ``data.correct_at``), else reward >=
    :data:`CORRECT_AT`. ``eval/accuracy`` is the share of correct answers, never a mean of rewards."""
    judge = getattr(task, "correct", None)
    if callable(judge):
        return [bool(c) for c in judge(texts, problems, rewards)]
    return [r >= CORRECT_AT for r in rewards]


def problem_results(
    problems, texts, correct, response_tokens, finish_reasons, extract_answer=last_boxed, rewards=None
) -> list[dict]:
    """One record per problem (the format in the module docstring); ``extract_answer(text)``: its ``answer``;
    ``correct``: the verdicts of :func:`correctness`; ``rewards``: each answer's reward, kept beside it."""
    out = []
    rewards = [None] * len(problems) if rewards is None else rewards
    for position, (p, text, c, n, finish, r) in enumerate(
        zip(problems, texts, correct, response_tokens, finish_reasons, rewards, strict=True)
    ):
        record = {
            "id": problem_id(p),
            "position": position,
            "correct": int(bool(c)),
            "answer": _bounded(extract_answer(text)),
            "gold": _bounded(str(p.answer)),
            "response_tokens": int(n),
            "finish": finish,
        }
        if r is not None:
            record["reward"] = float(r)
        record.update({k: p.meta[k] for k in BREAKDOWN_KEYS if p.meta.get(k) is not None})
        out.append(record)
    return out


def accuracy_metrics(correct, problems, rewards=None) -> dict:
    """``eval/accuracy`` (the share of correct answers) overall and ``eval/accuracy/<level|subject>/<value>``
    where rows carry them; with ``rewards``, their mean apart as ``eval/reward``."""
    correct = [float(bool(c)) for c in correct]
    out = {"eval/accuracy": float(np.mean(correct))}
    if rewards is not None:
        out["eval/reward"] = float(np.mean(rewards))
    for key in BREAKDOWN_KEYS:
        groups: dict[str, list[float]] = {}
        for c, p in zip(correct, problems, strict=True):
            if p.meta.get(key) is not None:
                groups.setdefault(str(p.meta[key]), []).append(c)
        out.update({f"eval/accuracy/{key}/{g}": float(np.mean(v)) for g, v in sorted(groups.items())})
    return out


def evaluate(
    engine,
    tokenizer,
    task,
    problems,
    max_new_tokens: int,
    enable_thinking: bool = False,
    output_path: Path | None = None,
) -> dict:
    """Greedy pass@1 of ``engine`` on ``problems``, graded by ``task.rewards``.

    Returns the metrics (``eval/accuracy``, per level and subject where rows carry them); with
    ``output_path`` also writes every problem's result there (the module docstring's format).
    """
    batch = engine.generate(
        encode_prompts(tokenizer, problems, enable_thinking), 1, max_new_tokens, greedy=True
    )
    rewards = task.rewards(batch.texts, problems)
    correct = correctness(task, batch.texts, problems, rewards)
    if output_path is not None:
        lengths = batch.response_mask.sum(dim=1).tolist()
        extract = getattr(task, "extract_answer", last_boxed)
        records = problem_results(
            problems, batch.texts, correct, lengths, batch.finish_reasons, extract, rewards
        )
        with writing(output_path):  # a full disk names the file, as every record write does
            atomic_write(output_path, "".join(json.dumps(r) + "\n" for r in records))
    return accuracy_metrics(correct, problems, rewards)


def read_results(path: Path) -> list[dict]:
    """The records of an ``eval/step_<n>.jsonl`` file."""
    return read_jsonl(path)
