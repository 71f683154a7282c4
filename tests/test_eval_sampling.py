"""Sampled eval (issue 21): answer classes for the vote, the per-problem values every eval metric is the mean
of (against slow enumerations), an eval's records and metrics with samples, seeded sampling that leaves the
training RNG alone, and the ``eval`` section's checks."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest
import torch

from arca_sweep.config import ConfigError, validate
from arca_sweep.eval import Sampling, evaluate, read_results
from arca_sweep.eval.sampled import default_ks, problem_metrics, vote_classes
from arca_sweep.rollout import RolloutBatch
from arca_sweep.tasks.arith import ArithTask
from arca_sweep.testing import make_config
from tests.test_evaluation import TemplateTokenizer

# ---------------------------------------------------------------- answer classes


def test_vote_classes_merge_correct_answers_and_equivalent_wrong_ones():
    answers = ["1", "2", None, "1/2", "0.5", "3", "one", "2"]
    correct = [1, 0, 0, 0, 0, 1, 1, 0]
    asked = []

    def equivalent(pairs):
        asked.extend(pairs)
        return [{a, b} == {"1/2", "0.5"} for a, b in pairs]

    classes = vote_classes(answers, correct, equivalent)
    # "1", "3" and "one" were each graded correct: one class (each is the gold answer); "2" twice is one
    # class; "1/2" and "0.5" are the same wrong answer by the grader; no answer has no class
    assert classes == [0, 1, None, 2, 2, 0, 0, 1]
    assert {frozenset(p) for p in asked} == {
        frozenset(p) for p in itertools.combinations(["2", "1/2", "0.5"], 2)
    }


def test_vote_classes_without_equivalence_and_hostile_strings():
    # answer strings that look like the class keys stay ordinary answers
    answers = ["('correct',)", "correct", "('correct',)", None]
    assert vote_classes(answers, [0, 0, 0, 0]) == [0, 1, 0, None]
    assert vote_classes(answers, [0, 1, 0, 0]) == [0, 1, 0, None]
    assert vote_classes([], []) == []


def test_a_timed_out_duplicate_of_a_correct_answer_stays_correct():
    # the same string graded once correct and once 0 (a grader timeout): the class is the correct one
    assert vote_classes(["7", "7", "8"], [1, 0, 0]) == [0, 0, 1]


def test_default_ks():
    assert default_ks(0) == [] and default_ks(1) == [1] and default_ks(2) == [2]
    assert default_ks(4) == [2, 4] and default_ks(10) == [2, 4, 8, 10] and default_ks(16) == [2, 4, 8, 16]


# ---------------------------------------------------------------- per-problem values against enumeration


def brute(record: dict, k: int) -> tuple[float, float]:
    """pass@k and maj@k by enumerating every k-subset of the samples (ties split evenly)."""
    samples = record["samples"]
    subsets = list(itertools.combinations(samples, k))
    passed = sum(any(s["correct"] for s in sub) for sub in subsets) / len(subsets)
    won = 0.0
    for sub in subsets:
        votes = Counter(s["class"] for s in sub if s["class"] is not None)
        if votes:
            top = max(votes.values())
            winners = [c for c, v in votes.items() if v == top]
            verdict = {s["class"]: s["correct"] for s in samples}
            won += sum(verdict[c] for c in winners) / len(winners)
    return passed, won / len(subsets)


@pytest.mark.parametrize("seed", range(4))
def test_problem_metrics_are_the_enumeration(seed):
    rng = random.Random(seed)
    for _ in range(40):
        n = rng.randint(1, 8)
        answers = [rng.choice([None, "a", "b", "c"]) for _ in range(n)]
        gold = rng.choice(["a", "b", "z"])
        correct = [a == gold for a in answers]
        classes = vote_classes(answers, correct)
        samples = [
            {
                "answer": a,
                "class": c,
                "correct": int(ok),
                "response_tokens": rng.randint(0, 50),
                "finish": "stop",
            }
            for a, c, ok in zip(answers, classes, correct, strict=True)
        ]
        record = {"correct": rng.randint(0, 1), "response_tokens": 9, "samples": samples}
        ks = sorted({rng.randint(1, n), n})
        got = problem_metrics(record, ks)
        assert got["accuracy"] == record["correct"] and got["length"] == 9
        assert got[f"mean@{n}"] == pytest.approx(sum(correct) / n)
        assert got["sampled_length"] == pytest.approx(sum(s["response_tokens"] for s in samples) / n)
        for k in ks:
            passed, won = brute(record, k)
            assert got[f"pass@{k}"] == pytest.approx(passed, abs=1e-12)
            assert got[f"maj@{k}"] == pytest.approx(won, abs=1e-12)


def test_an_old_record_has_greedy_values_only():
    assert problem_metrics({"correct": 1, "response_tokens": 4}, [2, 4]) == {"accuracy": 1.0, "length": 4.0}


# ---------------------------------------------------------------- an eval with samples


class SamplingEngine:
    """Greedy: ``greedy[i]`` for prompt i; sampled: ``sampled[i][j]`` for its j-th sample; records each call."""

    def __init__(self, greedy, sampled):
        self.greedy, self.sampled, self.calls = greedy, sampled, []

    def generate(
        self, prompts, num_samples, max_new_tokens, greedy=False, temperature=None, top_p=None, seed=None
    ):
        self.calls.append((num_samples, greedy, temperature, top_p, seed))
        texts = self.greedy if greedy else [t for row in self.sampled for t in row]
        assert len(texts) == len(prompts) * num_samples
        lengths = [len(t) for t in texts]
        width = max(lengths)
        return RolloutBatch(
            prompt_ids=torch.zeros(len(texts), 1, dtype=torch.long),
            prompt_mask=torch.ones(len(texts), 1, dtype=torch.bool),
            response_ids=torch.zeros(len(texts), width, dtype=torch.long),
            response_mask=torch.tensor([[j < n for j in range(width)] for n in lengths]),
            finish_reasons=["stop"] * len(texts),
            texts=texts,
        )


def test_evaluate_writes_every_sample_and_its_metrics_are_the_records_means(tmp_path):
    task = ArithTask()
    problems = task.eval_problems(3)
    a = [p.answer for p in problems]
    box = "\\boxed{{{}}}".format
    greedy = [box(a[0]), "none", box(a[2])]
    sampled = [
        [box(a[0]), box(a[0]), box(999), "none"],
        [box(998), box(998), box(a[1]), box(a[1])],  # a tie between a wrong and the right answer
        ["none", "none", "none", "none"],
    ]
    engine = SamplingEngine(greedy, sampled)
    out = tmp_path / "r.jsonl"
    metrics = evaluate(
        engine,
        TemplateTokenizer(),
        task,
        problems,
        40,
        output_path=out,
        sampling=Sampling(4, 0.6, 0.9, (2, 4), 123),
        prefix="eval/small/",
    )
    assert engine.calls == [(1, True, None, None, None), (4, False, 0.6, 0.9, 123)]
    rows = read_results(out)
    assert [r["correct"] for r in rows] == [1, 0, 1]
    assert [[s["correct"] for s in r["samples"]] for r in rows] == [[1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]]
    assert [s["class"] for s in rows[1]["samples"]] == [0, 0, 1, 1]
    assert [s["answer"] for s in rows[2]["samples"]] == [None] * 4
    assert metrics["eval/small/accuracy"] == pytest.approx(2 / 3)
    assert metrics["eval/small/mean@4"] == pytest.approx((2 / 4 + 2 / 4 + 0) / 3)
    assert metrics["eval/small/maj@4"] == pytest.approx((1 + 0.5 + 0) / 3)  # the tie splits evenly
    assert metrics["eval/small/pass@2"] == pytest.approx((5 / 6 + 5 / 6 + 0) / 3)
    for key in ("pass@4", "maj@2", "length", "sampled_length"):
        assert metrics[f"eval/small/{key}"] == pytest.approx(
            sum(problem_metrics(r, (2, 4))[key] for r in rows) / 3
        )
    assert not any(k.startswith("eval/accuracy") for k in metrics), "a set's metrics stay under its prefix"


# ---------------------------------------------------------------- seeded sampling on the real engine


def test_seeded_hf_sampling_is_reproducible_and_leaves_the_training_rng_alone(tiny_tokenizer):
    from arca_sweep.eval import encode_prompts
    from arca_sweep.model import load_policy
    from arca_sweep.rollout.hf import HFEngine

    cfg = make_config("rollout=hf")
    model = load_policy(cfg.model, cfg.rank, torch.device("cpu"), seed=0)
    engine = HFEngine(cfg.rollout, model, tiny_tokenizer)
    prompts = encode_prompts(tiny_tokenizer, ArithTask().eval_problems(3))
    torch.manual_seed(7)
    state = torch.get_rng_state()
    first = engine.generate(prompts, 4, 12, temperature=1.3, seed=11)
    assert torch.equal(torch.get_rng_state(), state), "an eval's draws must not move the training RNG"
    again = engine.generate(prompts, 4, 12, temperature=1.3, seed=11)
    other = engine.generate(prompts, 4, 12, temperature=1.3, seed=12)
    assert first.texts == again.texts and len(first.texts) == 12
    assert first.texts != other.texts


# ---------------------------------------------------------------- the eval section's checks


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["eval.n=2", "eval.k=[1,4]"], "eval.k=[1, 4]: each k must be in [1, eval.n=2]"),
        (["eval.k=[1]"], "eval.k=[1]: each k must be in [1, eval.n=0]"),
        (["eval.n=-1"], "eval.n=-1 must be >= 0"),
        (["eval.n=2", "eval.temperature=0"], "eval.temperature=0.0 must be in [0.01, 100]"),
        (["eval.n=2", "eval.top_p=1.5"], "eval.top_p=1.5 must be in (0, 1]"),
        (["+data@eval.sets.accuracy=arith"], "eval.sets.accuracy: a set's name must be"),
        (["+data@eval.sets.small=arith", "eval.sets.small.ops=/"], "eval.sets.small.ops='/' must be"),
        (
            ["+data@eval.sets.small=arith", "eval.sets.small.eval_size=0"],
            "eval.sets.small.eval_size=0 must be >= 1",
        ),
        (
            ["+data@eval.sets.rows=jsonl", "eval.sets.rows.eval_path=/nonexistent/rows.jsonl"],
            "eval.sets.rows.eval_path='/nonexistent/rows.jsonl': no such file",
        ),
        (  # an eval-only jsonl set reads data.path when it has no eval_path
            ["+data@eval.sets.rows=jsonl", "eval.sets.rows.path=/nonexistent/rows.jsonl"],
            "eval.sets.rows.path='/nonexistent/rows.jsonl': no such file",
        ),
        (
            ["+data@eval.sets.s=arith_small", "+eval.sets.s.evalsize=3"],
            "eval.sets.s.evalsize is not a config key",
        ),
        (
            ["+eval.sets={foo:{name:aime24}}"],
            "eval.sets.foo names no eval rows: neither eval.sets.foo.eval_path",
        ),
        (["+data@eval.sets.b=aime24", "+eval.sets.b.fields.prob=question"], "eval.sets.b.fields"),
    ],
)
def test_bad_eval_settings_are_named(overrides, message):
    with pytest.raises(ConfigError, match=None) as err:
        validate(make_config(*overrides))
    assert message in str(err.value), str(err.value)


@pytest.mark.slow
def test_an_arms_training_does_not_depend_on_its_eval_settings(tmp_path):
    """The same arm with greedy eval only and with sampled evals of two sets trains identically: every
    training step's numbers and the final adapter are equal (the samples draw from their own generator)."""
    import json

    from safetensors.torch import load_file

    from tests.helpers import cli

    base = [
        "budget=smoke",
        "budget.steps=1",
        "budget.eval_size=4",
        "threads=1",
    ]  # step 1 follows the step-0 eval
    sampled = ["eval.n=3", "+data@eval.sets.small=arith_small", "eval.sets.small.eval_size=3"]
    for name, extra in (("greedy", []), ("sampled", sampled)):
        cli(*base, *extra, f"hydra.run.dir={tmp_path / name}", cwd=tmp_path)
    runs = {}
    for name in ("greedy", "sampled"):
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        runs[name] = [json.loads(x) for x in lines]
    assert "eval/small/maj@3" in runs["sampled"][1] and "eval/mean@3" in runs["sampled"][0]
    assert len(runs["greedy"]) == len(runs["sampled"]) == 2
    for a, b in zip(runs["greedy"][1:], runs["sampled"][1:], strict=True):  # step 0 is the eval alone
        training = [k for k in a if not k.startswith(("eval/", "perf/")) and isinstance(a[k], float)]
        assert training and {k: a[k] for k in training} == {k: b[k] for k in training}
    weights = [
        load_file(tmp_path / n / "adapter" / "adapter_model.safetensors") for n in ("greedy", "sampled")
    ]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_the_vote_is_order_free_and_counts_correct_samples_without_a_box():
    from arca_sweep.eval.sampled import maj_at_k

    # one string graded once correct and once not (a timeout): the same maj@k in either order
    for order in (["5", "5", "7"], ["5", "7", "5"]):
        verdicts = [1, 0, 0] if order[0] == "5" else [0, 0, 1]
        classes = vote_classes(order, verdicts)
        assert [maj_at_k(classes, verdicts, k) for k in (1, 2, 3)] == pytest.approx([2 / 3, 2 / 3, 1.0])
    # a correct sample with no extracted answer (a reward that reads more than the box) votes correct;
    # empty boxes say nothing
    assert vote_classes([None, None, "3", ""], [1, 0, 0, 0]) == [0, None, 1, None]
    classes = vote_classes(["", "", "", "7", "7"], [0, 0, 0, 1, 1])
    assert classes == [None, None, None, 0, 0] and maj_at_k(classes, [0, 0, 0, 1, 1], 5) == 1.0


def test_a_sets_samples_are_seeded_by_its_name_not_its_place():
    from arca_sweep.eval.sets import sampling_seed

    seeds = {(step, name): sampling_seed(0, step, name) for step in (0, 1) for name in (None, "a", "b")}
    assert len(set(seeds.values())) == 6 and sampling_seed(0, 1, "a") == seeds[(1, "a")]
    assert sampling_seed(1, 1, "a") != seeds[(1, "a")]


def test_eval_rows_with_the_same_id_are_refused_before_any_compute():
    from arca_sweep.errors import DataError
    from arca_sweep.eval.sets import check_unique_ids
    from arca_sweep.tasks import Problem

    rows = [Problem(i, f"q{i}", "1", {"unique_id": 2024 if i else 7}) for i in range(3)]
    with pytest.raises(
        DataError, match=r"eval.sets.b: eval rows 1 and 2 have the same id 2024.*eval.sets.b.fields.id"
    ):
        check_unique_ids(rows, "eval.sets.b")
    assert check_unique_ids(rows[:2], "data") == rows[:2]


def test_power_says_when_arms_that_agree_everywhere_cannot_be_sized():
    import numpy as np

    from arca_sweep.report.eval_sets import NOT_ESTIMABLE, power_verdict
    from arca_sweep.report.power import power_analysis
    from arca_sweep.report.stats import paired_difference

    same = np.ones((2, 6))
    assert (
        power_verdict(paired_difference(same, same, binary=True), power_analysis(same - same))
        == NOT_ESTIMABLE
    )
