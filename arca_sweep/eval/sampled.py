"""Metrics of n sampled answers to one problem: mean@n, unbiased pass@k and maj@k (issue 21's first part;
not yet wired into a run's eval).

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
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
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
    """``(size, correct)`` of each answer class (None: no answer, not a class), in first-seen order. A class's
    correctness is its first sample's verdict (the grader gives equal answers equal verdicts)."""
    if len(answers) != len(correct):
        raise ValueError(f"{len(answers)} answers but {len(correct)} verdicts")
    sizes: dict = {}
    for a, c in zip(answers, correct, strict=True):
        if a is not None:
            size, verdict = sizes.get(a, (0, bool(c)))
            sizes[a] = (size + 1, verdict)
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
            for take in range(0, min(size, j) + 1):
                w = comb(size, take)
                tied = 1 if take == j else 0
                nxt[take:, tied:] += w * ways[: k - j + 1 - take, : len(others) + 1 - tied]
            ways = nxt
        for r in range(0, k - j + 1):
            fill = comb(silent, k - j - r)
            if fill:
                won += comb(m, j) * fill * sum(ways[r, t] / (1 + t) for t in range(len(others) + 1))
    return won
