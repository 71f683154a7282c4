"""Metrics of n sampled answers to one problem: mean@n, unbiased pass@k and maj@k, and the per-problem
values every eval metric is the mean of (:func:`problem_metrics`: the run's metrics, ``arca-sweep-eval``
and the report all compute them from an eval file's records with it).

Each problem's n samples are given as their correctness (the grader's verdict) and, for the vote, their
answer's equivalence class (equal keys: answers the grader counts as the same; None: no answer). Every
metric is an expectation over the k-subsets of the n samples, computed exactly (no resampling), so the
same samples always give the same number.

- **pass@k** (Chen et al. 2021, "Evaluating Large Language Models Trained on Code", eq. 1): the chance
  that a uniformly drawn k-subset of the n samples holds a correct one, ``1 - C(n - c, k) / C(n, k)`` for
  c correct samples; in the numerically stable product form of that paper's code. A bootstrap of k draws
  *with* replacement (verl's best@k, its PR #7240) estimates ``1 - (1 - c/n)^k`` instead, which is lower.
- **maj@k**: the chance that the majority answer of a uniformly drawn k-subset is correct. Samples with
  no answer do not vote; a subset where none answers scores 0. **Ties**: when t answers share the most
  votes, each wins with weight 1/t (the expectation of a uniformly random tie-break), so the value does
  not depend on the samples' order. Exact by a polynomial count over the answer classes.
- **mean@n**: c / n, the sampled accuracy at the eval's temperature.

**Answer classes** (:func:`vote_classes`): samples are grouped by their extracted answer string; every
string graded correct joins one class (each is the gold answer, by the grader), and so does a sample
graded correct without an extracted answer; the incorrect strings are merged where the task's
``equivalent`` says two are the same answer (math-verify for the math tasks; the transitive closure of its
verdicts), else only when equal. An incorrect sample without an answer (or with an empty one) has no class.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from math import comb

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of n samples with c correct: ``1 - C(n - c, k) / C(n, k)`` (Chen et al. 2021)."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_at_n(correct: Sequence[bool]) -> float:
    """The share of correct samples."""
    if not correct:
        raise ValueError("mean@n of no samples")
    return sum(bool(x) for x in correct) / len(correct)


def answer_classes(answers: Sequence[Hashable | None], correct: Sequence[bool]) -> list[tuple[int, bool]]:
    """``(size, correct)`` of each answer class (None: no answer, not a class), in first-seen order. A class is
    correct when any of its samples was graded correct (equal answers may get unequal verdicts when the
    grader timed out on one), so the value does not depend on the samples' order."""
    if len(answers) != len(correct):
        raise ValueError(f"{len(answers)} answers but {len(correct)} verdicts")
    sizes: dict = {}
    for a, c in zip(answers, correct, strict=True):
        if a is not None:
            size, verdict = sizes.get(a, (0, False))
            sizes[a] = (size + 1, verdict or bool(c))
    return list(sizes.values())


def maj_at_k(answers: Sequence[Hashable | None], correct: Sequence[bool], k: int) -> float:
    """maj@k over all k-subsets of the samples (module docstring: no-answer samples do not vote, ties split
    evenly). ``answers[i]``: sample i's equivalence class or None; ``correct[i]``: its verdict."""
    n = len(answers)
    if not 1 <= k <= n:
        raise ValueError(f"maj@k needs 1 <= k <= n; got n={n}, k={k}")
    classes = answer_classes(answers, correct)
    silent = n - sum(size for size, _ in classes)
    total = 0.0
    for i, (m_i, verdict) in enumerate(classes):
        if verdict:
            others = [size for j, (size, _) in enumerate(classes) if j != i]
            total += _wins(m_i, others, silent, k)
        # an incorrect class's wins add nothing
    return total / comb(n, k)


def _wins(m: int, others: list[int], silent: int, k: int) -> float:
    """The number of k-subsets a class of ``m`` samples wins, each tie counted 1/t: for every count j >= 1
    of its samples in the subset, the other classes each take at most j, and the no-answer samples fill the
    rest. ``ways[r][t]``: ways for the other classes to take r samples with t of them at exactly j."""
    won = 0.0
    for j in range(1, min(m, k) + 1):
        ways = np.zeros((k - j + 1, len(others) + 1))
        ways[0, 0] = 1.0
        for size in others:
            nxt = np.zeros_like(ways)
            for take in range(0, min(size, j, k - j) + 1):  # the subset holds k - j others at most
                w = comb(size, take)
                tied = 1 if take == j else 0
                nxt[take:, tied:] += w * ways[: k - j + 1 - take, : len(others) + 1 - tied]
            ways = nxt
        for r in range(0, k - j + 1):
            fill = comb(silent, k - j - r)
            if fill:
                won += comb(m, j) * fill * sum(ways[r, t] / (1 + t) for t in range(len(others) + 1))
    return won


def default_ks(n: int) -> list[int]:
    """``eval.k`` when null: 2, 4, 8, ... below n, and n (just [1] for n = 1; none for n = 0)."""
    if n <= 1:
        return [1] if n == 1 else []
    return sorted({2**i for i in range(1, n.bit_length()) if 2**i < n} | {n})


def vote_classes(
    answers: Sequence[str | None],
    correct: Sequence[bool],
    equivalent: Callable[[list[tuple[str, str]]], list[bool]] | None = None,
) -> list[int | None]:
    """Each sample's answer class (0, 1, ... in first-seen order; None: no answer), by the rule in the module
    docstring. ``equivalent(pairs)``: whether each pair of distinct incorrect answers is the same answer
    (None: only equal strings are)."""
    answers = [None if a is not None and not a.strip() else a for a in answers]  # an empty box says nothing
    groups: dict[str, bool] = {}  # answer string -> graded correct (any of its samples)
    for a, c in zip(answers, correct, strict=True):
        if a is not None:
            groups[a] = groups.get(a, False) or bool(c)
    wrong = [a for a, ok in groups.items() if not ok]
    parent = {a: a for a in wrong}

    def root(a: str) -> str:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    if equivalent is not None and len(wrong) > 1:
        pairs = [(a, b) for i, a in enumerate(wrong) for b in wrong[i + 1 :]]
        for (a, b), same in zip(pairs, equivalent(pairs), strict=True):
            if same:
                parent[root(b)] = root(a)
    ids: dict[tuple, int] = {}
    out: list[int | None] = []
    for a, c in zip(answers, correct, strict=True):
        if a is None and not c:
            out.append(None)
            continue
        # a sample graded correct holds the gold answer even when no answer was extracted from it (a reward
        # that reads more than the box): it votes with the correct class
        key = ("correct",) if c or groups[a] else ("incorrect", root(a))  # no answer string can be either
        out.append(ids.setdefault(key, len(ids)))
    return out


def problem_metrics(record: dict, ks: Sequence[int]) -> dict[str, float]:
    """The per-problem values of one eval record (:mod:`arca_sweep.eval`'s format): ``accuracy`` (greedy
    0/1) and ``length`` (greedy response tokens); with ``samples``, ``mean@n``, ``pass@k`` and ``maj@k`` for
    each k <= n, and ``sampled_length`` (mean tokens of the samples). A set's metric is their mean."""
    out = {"accuracy": float(record["correct"]), "length": float(record["response_tokens"])}
    samples = record.get("samples")
    if samples:
        n = len(samples)
        verdicts = [bool(s["correct"]) for s in samples]
        c = sum(verdicts)
        out[f"mean@{n}"] = c / n
        for k in ks:
            if k <= n:
                out[f"pass@{k}"] = pass_at_k(n, c, k)
        classes = [s.get("class") for s in samples]
        for k in ks:
            if k <= n:
                out[f"maj@{k}"] = maj_at_k(classes, verdicts, k)
        out["sampled_length"] = sum(float(s["response_tokens"]) for s in samples) / n
    return out
