"""pass@k, maj@k and mean@n (arca_sweep/eval/sampled.py) against slow, obviously correct enumerations of
every k-subset, and pass@k against its closed form; a with-replacement bootstrap of best@k (verl's
estimator, PR #7240) is shown to differ from the unbiased value on a known case."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from math import comb

import pytest

from arca_sweep.eval.sampled import maj_at_k, mean_at_n, pass_at_k


def brute_pass(correct: list[bool], k: int) -> float:
    subsets = list(itertools.combinations(range(len(correct)), k))
    return sum(any(correct[i] for i in s) for s in subsets) / len(subsets)


def brute_maj(answers: list, correct: list[bool], k: int) -> float:
    """Every k-subset votes: no-answer samples abstain, the t answers tied for most votes win 1/t each."""
    verdict: dict = {}  # a class is correct when any of its samples is
    for a, c in zip(answers, correct, strict=True):
        verdict[a] = verdict.get(a, False) or c
    subsets = list(itertools.combinations(range(len(answers)), k))
    total = 0.0
    for s in subsets:
        votes = Counter(answers[i] for i in s if answers[i] is not None)
        if not votes:
            continue
        top = max(votes.values())
        winners = [a for a, v in votes.items() if v == top]
        total += sum(verdict[a] for a in winners) / len(winners)
    return total / len(subsets)


def cases(seed: int):
    rng = random.Random(seed)
    for _ in range(60):
        n = rng.randint(1, 10)
        pool = [None, "a", "b", "c", "d"][: rng.randint(1, 5)]
        answers = [rng.choice(pool) for _ in range(n)]
        right = rng.choice(pool)
        correct = [a is not None and a == right for a in answers]
        yield answers, correct, rng.randint(1, n)


@pytest.mark.parametrize("seed", range(5))
def test_pass_at_k_is_the_enumeration_and_the_closed_form(seed):
    for _answers, correct, k in cases(seed):
        n, c = len(correct), sum(correct)
        got = pass_at_k(n, c, k)
        assert got == pytest.approx(brute_pass(correct, k), abs=1e-12)
        assert got == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_maj_at_k_is_the_brute_force_vote_with_ties(seed):
    for answers, correct, k in cases(seed):
        assert maj_at_k(answers, correct, k) == pytest.approx(brute_maj(answers, correct, k), abs=1e-12)


def test_hand_cases():
    # two answers, one vote each at k = 2: a tie, half a win for the correct one
    assert maj_at_k(["7", "8"], [True, False], 2) == 0.5
    # nobody answers: nothing wins
    assert maj_at_k([None, None, None], [False] * 3, 2) == 0.0
    # 3 of 5 say "x" (correct), 2 say "y": maj@5 is 1, maj@1 is 3/5
    answers, correct = ["x", "y", "x", "y", "x"], [True, False, True, False, True]
    assert maj_at_k(answers, correct, 5) == 1.0 and maj_at_k(answers, correct, 1) == pytest.approx(0.6)
    assert mean_at_n(correct) == 0.6 and pass_at_k(5, 3, 3) == 1.0 and pass_at_k(5, 0, 2) == 0.0
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        maj_at_k(["x"], [True], 2)


def bootstrap_best_at_k(correct: list[bool], k: int) -> float:
    """The expectation of a best@k bootstrap that draws k samples *with* replacement (verl's estimator):
    1 - (1 - c/n)^k, in closed form so the comparison has no resampling noise."""
    return 1 - (1 - sum(correct) / len(correct)) ** k


def test_a_with_replacement_bootstrap_is_biased_low_and_ours_is_not():
    correct = [True, False]  # n = 2, c = 1: every 2-subset holds the correct sample
    assert brute_pass(correct, 2) == 1.0 == pass_at_k(2, 1, 2)
    assert bootstrap_best_at_k(correct, 2) == 0.75
    correct = [True] + [False] * 7  # n = 8, c = 1, k = 4: 1/2 exactly, the bootstrap says 0.414
    assert pass_at_k(8, 1, 4) == pytest.approx(0.5) == pytest.approx(brute_pass(correct, 4))
    assert bootstrap_best_at_k(correct, 4) == pytest.approx(1 - (7 / 8) ** 4)


@pytest.mark.parametrize(
    ("answers", "k"),
    [
        ([0, 1, 0, 0, 1, 0, 1, 1], 6),  # once crashed: a class larger than the room the subset leaves
        ([0] * 8 + [1] * 8, 8),
        ([0] * 5 + [1] * 11, 8),
        ([0] * 6 + [1] * 5 + [2] * 5, 12),
        ([None] * 3 + [0] * 7 + [1] * 6, 9),
    ],
)
def test_maj_at_k_with_large_classes_is_the_brute_force_vote(answers, k):
    correct = [a == 0 for a in answers]
    assert maj_at_k(answers, correct, k) == pytest.approx(brute_maj(answers, correct, k), abs=1e-12)


def test_every_split_of_sixteen_samples_into_two_classes_and_silence():
    """n = 16, k = 8 (conf/eval/benchmarks.yaml's largest): every (correct, wrong, silent) count, in closed form:
    the subset's correct count c' against its wrong count w' (c' > w' wins, c' = w' > 0 splits)."""
    from math import comb

    n, k = 16, 8
    for c in range(n + 1):
        for w in range(n - c + 1):
            s = n - c - w
            answers = [0] * c + [1] * w + [None] * s
            want = sum(
                comb(c, i) * comb(w, j) * comb(s, k - i - j) * (1.0 if i > j else 0.5 if i == j > 0 else 0.0)
                for i in range(c + 1)
                for j in range(w + 1)
                if 0 <= k - i - j <= s
            ) / comb(n, k)
            assert maj_at_k(answers, [a == 0 for a in answers], k) == pytest.approx(want, abs=1e-12), (
                c,
                w,
                s,
            )
