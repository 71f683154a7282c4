"""Each eval of an arm: greedy pass@1 and, with ``eval.n`` > 0, n sampled answers per problem, on the run's
own eval rows and on every ``eval.sets`` entry, with every problem's result kept for paired comparisons
(the library; eval sets and settings are :mod:`arca_sweep.eval.sets`, the metrics of sampled answers
:mod:`arca_sweep.eval.sampled`, the ``arca-sweep-eval`` command :mod:`arca_sweep.eval.cli`).

Each eval of an arm writes ``eval/step_<n>.jsonl`` (the run's own set) and ``eval/<set>/step_<n>.jsonl``
(each eval set) in the arm's dir (:func:`arca_sweep.arm_dir.results_path`): one JSON line per problem, in
eval-set order::

    {"id": 17, "position": 0, "correct": 1, "answer": "66", "gold": "66", "response_tokens": 23,
     "finish": "stop", "reward": 1.0, "level": 3, "subject": "Algebra",
     "samples": [{"answer": "66", "class": 0, "correct": 1, "response_tokens": 25, "finish": "stop"}, ...]}

The top-level ``correct``/``answer``/``response_tokens``/``finish``/``reward`` are the greedy answer's;
``correct`` is the task's verdict (:func:`correctness`), ``reward`` the reward the answer got (files of
earlier versions lack it). ``samples`` (with ``eval.n`` > 0; files of earlier versions lack it) holds each
sampled answer: its extracted answer, its answer class for the majority vote
(:func:`arca_sweep.eval.sampled.vote_classes`; null without an answer), verdict, length and finish.

``id`` is stable across arms and runs of the same eval set (the row's ``unique_id`` where it has one,
else the problem's index in its task), so two arms pair problem by problem. ``answer`` is the answer the
response gives, by the task's ``extract_answer`` where it has one (arith's ``data.answer_format``), else the
last ``\\boxed{}`` content (null without one), and ``gold`` the reference answer, both cut to
:data:`MAX_ANSWER_CHARS`. ``level``/``subject`` appear when the row carries them. The file is
written atomically (a temporary file, then a rename): a reader never sees half an eval.

The metrics are the means over problems of :func:`arca_sweep.eval.sampled.problem_metrics`, under
``eval/`` for the run's own set and ``eval/<set>/`` for a set: ``accuracy`` (greedy pass@1), ``length``
(greedy response tokens), ``mean@n``, ``pass@k``, ``maj@k``, ``sampled_length``, ``reward``, and
``accuracy/<level|subject>/<value>`` where rows carry them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from arca_sweep.arm_dir import atomic_write, read_jsonl, writing
from arca_sweep.eval.sampled import problem_metrics, vote_classes
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
    problems,
    texts,
    correct,
    response_tokens,
    finish_reasons,
    extract_answer=last_boxed,
    rewards=None,
    samples=None,
) -> list[dict]:
    """One record per problem (the format in the module docstring); ``extract_answer(text)``: its ``answer``;
    ``correct``: the verdicts of :func:`correctness`; ``rewards``: each answer's reward, kept beside it;
    ``samples``: each problem's list of sampled-answer records (:func:`sample_records`)."""
    out = []
    rewards = [None] * len(problems) if rewards is None else rewards
    samples = [None] * len(problems) if samples is None else samples
    for position, (p, text, c, n, finish, r, drawn) in enumerate(
        zip(problems, texts, correct, response_tokens, finish_reasons, rewards, samples, strict=True)
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
        if drawn is not None:
            record["samples"] = drawn
        out.append(record)
    return out


def sample_records(answers, correct, response_tokens, finish_reasons, n: int, equivalent=None) -> list[list]:
    """Per problem, its ``n`` sampled answers' records (rows ``i*n .. i*n+n-1`` are problem ``i``'s), each
    with its answer class (:func:`arca_sweep.eval.sampled.vote_classes` of the whole answers; ``equivalent``:
    the task's) and its answer cut to :data:`MAX_ANSWER_CHARS`."""
    rows = list(zip(answers, correct, response_tokens, finish_reasons, strict=True))
    out = []
    for start in range(0, len(rows), n):
        group = rows[start : start + n]
        classes = vote_classes([a for a, *_ in group], [c for _, c, *_ in group], equivalent)
        out.append(
            [
                {
                    "answer": _bounded(a),
                    "class": cls,
                    "correct": int(bool(c)),
                    "response_tokens": int(t),
                    "finish": f,
                }
                for (a, c, t, f), cls in zip(group, classes, strict=True)
            ]
        )
    return out


def set_metrics(records: list[dict], problems, ks, prefix: str = "eval/", rewards=None) -> dict:
    """The means over problems of :func:`arca_sweep.eval.sampled.problem_metrics` under ``prefix``, the
    greedy accuracy per level and subject where rows carry them, and the mean greedy ``reward``."""
    values: dict[str, list[float]] = {}
    for record in records:
        for key, value in problem_metrics(record, ks).items():
            values.setdefault(key, []).append(value)
    out = {f"{prefix}{k}": float(np.mean(v)) for k, v in values.items()}
    for key, value in accuracy_metrics([r["correct"] for r in records], problems, rewards).items():
        out[prefix + key.removeprefix("eval/")] = value
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


@dataclass(frozen=True)
class Sampling:
    """The sampled part of an eval (``eval.n``, ``eval.temperature``, ``eval.top_p``, the resolved ``eval.k``)
    and the seed of its draws (:func:`arca_sweep.eval.sets.sampling_seed`): the training RNG is not touched."""

    n: int
    temperature: float
    top_p: float
    ks: tuple[int, ...]
    seed: int


def evaluate(
    engine,
    tokenizer,
    task,
    problems,
    max_new_tokens: int,
    enable_thinking: bool = False,
    output_path: Path | None = None,
    sampling: Sampling | None = None,
    prefix: str = "eval/",
) -> dict:
    """Greedy pass@1 of ``engine`` on ``problems`` and, with ``sampling``, its n sampled answers per problem,
    graded by ``task.rewards``.

    Returns the metrics under ``prefix`` (the module docstring); with ``output_path`` also writes every
    problem's result there. Sampled answers are drawn by prompt (vLLM's ``n``; HF's shared prompt pass) from
    ``sampling.seed``'s own generator.
    """
    prompts = encode_prompts(tokenizer, problems, enable_thinking)
    extract = getattr(task, "extract_answer", last_boxed)
    batch = engine.generate(prompts, 1, max_new_tokens, greedy=True)
    rewards = task.rewards(batch.texts, problems)
    correct = correctness(task, batch.texts, problems, rewards)
    drawn = None
    if sampling is not None and sampling.n > 0:
        n = sampling.n
        s = engine.generate(
            prompts,
            n,
            max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
        )
        group_of = [p for p in problems for _ in range(n)]
        s_rewards = task.rewards(s.texts, group_of)
        drawn = sample_records(
            [extract(t) for t in s.texts],
            correctness(task, s.texts, group_of, s_rewards),
            s.response_mask.sum(dim=1).tolist(),
            s.finish_reasons,
            n,
            getattr(task, "equivalent", None),
        )
    lengths = batch.response_mask.sum(dim=1).tolist()
    records = problem_results(
        problems, batch.texts, correct, lengths, batch.finish_reasons, extract, rewards, drawn
    )
    if output_path is not None:
        with writing(output_path):  # a full disk names the file, as every record write does
            atomic_write(output_path, "".join(json.dumps(r) + "\n" for r in records))
    return set_metrics(records, problems, sampling.ks if sampling else (), prefix, rewards)


def read_results(path: Path) -> list[dict]:
    """The records of an ``eval/step_<n>.jsonl`` file."""
    return read_jsonl(path)
