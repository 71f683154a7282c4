"""The arith task (seeded problems, paired prompt order, gold answers) and the boxed-integer verifier."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from arca_sweep.rewards import boxed_integer_reward, last_integer, last_integer_reward
from arca_sweep.tasks import Problem, batch_hash, build_task
from arca_sweep.tasks.arith import INSTRUCTION, ArithTask, make_problem, worked_solution

# ---------------------------------------------------------------- an independent expression evaluator

_TOKEN = re.compile(r"\s*(?:(\d+)|([+\-*]))")


def tokenize(expr: str) -> list[int | str]:
    """``"47 + 38 - 19"`` -> ``[47, "+", 38, "-", 19]``; anything else is an error."""
    tokens, pos = [], 0
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        assert m and m.end() > pos, f"cannot tokenize {expr!r} at {pos}"
        tokens.append(int(m[1]) if m[1] is not None else m[2])
        pos = m.end()
    assert len(tokens) % 2 == 1, tokens
    assert all(isinstance(t, int) for t in tokens[::2]), tokens
    assert all(isinstance(t, str) for t in tokens[1::2]), tokens
    return tokens


def apply(op: str, a: int, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def eval_left_to_right(expr: str) -> int:
    tokens = tokenize(expr)
    value = tokens[0]
    for i in range(1, len(tokens), 2):
        value = apply(tokens[i], value, tokens[i + 1])
    return value


def eval_with_precedence(expr: str) -> int:
    """The usual reading: ``*`` binds tighter than ``+`` and ``-``."""
    tokens = tokenize(expr)
    terms, signs = [tokens[0]], []
    for i in range(1, len(tokens), 2):
        op, x = tokens[i], tokens[i + 1]
        if op == "*":
            terms[-1] *= x
        else:
            signs.append(op)
            terms.append(x)
    value = terms[0]
    for op, x in zip(signs, terms[1:], strict=True):
        value = apply(op, value, x)
    return value


def test_reference_evaluators():
    assert eval_left_to_right("47 + 38 - 19") == 66
    assert eval_left_to_right("2 + 3 * 4") == 20
    assert eval_with_precedence("2 + 3 * 4") == 14
    assert eval_with_precedence("10 - 2 * 3 + 1") == 5
    assert eval_left_to_right("5") == 5


# ---------------------------------------------------------------- ArithTask


def test_problems_are_a_pure_function_of_seed_and_index():
    a, b = ArithTask(seed=0), ArithTask(seed=0)
    forward = [a.train_problem(i) for i in range(50)]
    random.seed(12345)  # global RNG state must not matter
    backward = [b.train_problem(i) for i in reversed(range(50))][::-1]
    assert forward == backward
    assert [p.index for p in forward] == list(range(50))
    assert a.eval_problems(20) == b.eval_problems(20)


def test_different_seeds_give_different_problems():
    q0 = [ArithTask(seed=0).train_problem(i).question for i in range(50)]
    q1 = [ArithTask(seed=1).train_problem(i).question for i in range(50)]
    assert sum(x != y for x, y in zip(q0, q1, strict=True)) >= 45
    e0 = [p.question for p in ArithTask(eval_seed=7).eval_problems(50)]
    e1 = [p.question for p in ArithTask(eval_seed=8).eval_problems(50)]
    assert sum(x != y for x, y in zip(e0, e1, strict=True)) >= 45


def test_train_indices_consecutive_and_paired():
    a, b = ArithTask(seed=0), ArithTask(seed=0)
    seen = []
    for step in range(6):
        idx = a.train_indices(step, 8)
        assert idx == list(range(step * 8, step * 8 + 8))
        assert idx == b.train_indices(step, 8)
        seen += idx
    assert seen == list(range(48))  # consecutive steps tile the stream, no repeats
    # paired arms: the same step gives the same problems in every instance built from the same data cfg
    cfg = OmegaConf.create(
        dict(name="arith", seed=3, eval_seed=11, min_operands=2, max_operands=4, max_operand=50, ops="+-*")
    )
    t1, t2 = build_task(cfg), build_task(cfg)
    assert [t1.train_problem(i) for i in t1.train_indices(4, 16)] == [
        t2.train_problem(i) for i in t2.train_indices(4, 16)
    ]


def test_eval_problems_differ_from_train_problems_default_seeds():
    task = ArithTask()
    # the demo budget: 30 steps x 8 prompts, eval on 200 problems
    train = {task.train_problem(i).question for i in range(30 * 8)}
    evals = [p.question for p in task.eval_problems(200)]
    assert len(set(evals)) == len(evals)
    assert not train.intersection(evals)
    assert task.eval_problems(10) != [task.train_problem(i) for i in range(10)]


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    index=st.integers(0, 10**6),
    min_operands=st.integers(2, 4),
    extra=st.integers(0, 3),
    max_operand=st.integers(0, 1000),
    ops=st.sampled_from(["+", "-", "*", "+-", "+-*", "*-"]),
)
def test_gold_answer_is_the_usual_evaluation(seed, index, min_operands, extra, max_operand, ops):
    p = make_problem(seed, index, min_operands, min_operands + extra, max_operand, ops)
    expr = p.meta["expr"]
    tokens = tokenize(expr)
    operands, operators = tokens[::2], tokens[1::2]
    assert min_operands <= len(operands) <= min_operands + extra
    assert all(0 <= x <= max_operand for x in operands)
    assert set(operators) <= set(ops)
    assert p.answer == str(eval_with_precedence(expr))
    assert expr in p.question
    assert "\\boxed{}" in p.question
    assert p.index == index


def test_default_task_gold_answers():
    task = ArithTask()
    for i in range(200):
        p = task.train_problem(i)
        assert p.question == f"Compute {p.meta['expr']}. Put the final answer in \\boxed{{}}."
        # with only + and - the left-to-right reading is the usual one
        assert int(p.answer) == eval_left_to_right(p.meta["expr"])
        assert int(p.answer) == eval_with_precedence(p.meta["expr"])
        assert 2 <= len(tokenize(p.meta["expr"])[::2]) <= 3


def test_gold_answer_with_multiplication_uses_usual_precedence():
    task = ArithTask(ops="+-*", max_operands=3)
    for i in range(200):
        p = task.train_problem(i)
        assert int(p.answer) == eval_with_precedence(p.meta["expr"]), p.question


@pytest.mark.parametrize("seed", [0, 1, 99])
def test_worked_solution_earns_reward(seed):
    task = ArithTask(seed=seed, ops="+-*")
    for i in range(30):
        p = task.train_problem(i)
        sol = worked_solution(p)
        assert sol.endswith(f"\\boxed{{{p.answer}}}")
        assert task.reward(sol, p) == 1.0
        unboxed = worked_solution(p, boxed=False)
        assert unboxed.endswith(f"The answer is {p.answer}.")
        assert task.reward(unboxed, p) == 0.0
        assert task.reward(sol.replace(f"\\boxed{{{p.answer}}}", f"\\boxed{{{int(p.answer) + 1}}}"), p) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        (dict(ops=""), "data.ops"),
        (dict(ops="+/"), "data.ops"),
        (dict(ops="x"), "data.ops"),
        (dict(ops="+ "), "data.ops"),
        (dict(min_operands=1), "data.min_operands"),
        (dict(min_operands=0, max_operands=0), "data.min_operands"),
        (dict(min_operands=3, max_operands=2), "data.max_operands"),
        (dict(min_operand=-1), "data.min_operand"),
        (dict(min_operand=10, max_operand=9), "data.min_operand"),
        (dict(answer_format="json"), "data.answer_format"),
    ],
)
def test_bad_shape_raises_naming_key(kwargs, key):
    with pytest.raises(ValueError, match=re.escape(key)):
        ArithTask(**kwargs)


def test_build_task():
    cfg = OmegaConf.create(
        dict(name="arith", seed=5, eval_seed=6, min_operands=2, max_operands=2, max_operand=9, ops="+")
    )
    task = build_task(cfg)
    assert isinstance(task, ArithTask)
    assert task.train_problem(3) == ArithTask(
        seed=5, eval_seed=6, max_operands=2, max_operand=9, ops="+"
    ).train_problem(3)
    with pytest.raises(ValueError, match="data.name") as info:
        build_task(OmegaConf.create(dict(name="gsm8k")))
    assert "arith" in str(info.value) and "math500" in str(info.value)


# ---------------------------------------------------------------- arith options: operand range, instruction, format


def test_default_options_keep_every_problem():
    """The defaults of min_operand, instruction and answer_format give the problems of before they existed."""
    task = ArithTask(min_operand=0, instruction=INSTRUCTION, answer_format="boxed")
    assert [task.train_problem(i) for i in range(100)] == [ArithTask().train_problem(i) for i in range(100)]
    assert task.eval_problems(50) == ArithTask().eval_problems(50)
    assert ArithTask().train_problem(0).question == "Compute 55 - 16. Put the final answer in \\boxed{}."


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 2**31), index=st.integers(0, 10**6), low=st.integers(0, 50), width=st.integers(0, 50)
)
def test_min_operand_bounds_every_operand(seed, index, low, width):
    p = make_problem(seed, index, 2, 3, low + width, "+-*", min_operand=low)
    assert all(low <= x <= low + width for x in tokenize(p.meta["expr"])[::2])
    # a pure function of (seed, i, shape)
    assert p == make_problem(seed, index, 2, 3, low + width, "+-*", min_operand=low)


def test_instruction_follows_the_expression():
    task = ArithTask(instruction="Answer with just the number.")
    p = task.train_problem(0)
    assert p.question == f"Compute {p.meta['expr']}. Answer with just the number."
    assert ArithTask(instruction="").train_problem(0).question == f"Compute {p.meta['expr']}."
    # the instruction changes the wording only: same expressions, same split, same answers
    base = ArithTask().train_problem(0)
    assert (p.meta, p.answer) == (base.meta, base.answer)


def test_number_format_rewards_the_last_integer():
    task = ArithTask(answer_format="number")
    p = task.train_problem(0)
    assert task.reward(f"{p.meta['expr']} = {p.answer}.", p) == 1.0
    assert task.reward(f"\\boxed{{{p.answer}}}", p) == 1.0
    assert task.reward(f"{p.answer}, or maybe {int(p.answer) + 1}", p) == 0.0
    assert task.reward("no number", p) == 0.0
    assert task.extract_answer(f"It is {p.answer}.") == p.answer
    assert ArithTask().extract_answer(f"It is {p.answer}.") is None  # boxed: a bare number is no answer


LAST_INTEGER_CASES = [
    ("The answer is 66.", "66"),
    ("47 - 19 = -5", "-5"),
    ("$\\boxed{12}$", "12"),
    ("+7", "+7"),
    ("007", "007"),
    ("66, or 3.5", None),  # the last number is not an integer
    ("1,000", None),
    ("3.0", None),
    ("1e3", "3"),
    ("seven", None),
    ("", None),
    ("9" * 30, "9" * 30),
    ("9" * 31, None),  # too long to be an answer here
    ("5" + "x" * 5000, None),  # only the tail is read
    ("x" * 1_000_000 + "5", "5"),
    ("7" * 1_000_000, None),
    ("1." * 500_000, None),
]


@pytest.mark.parametrize(("text", "expected"), LAST_INTEGER_CASES)
def test_last_integer(text, expected):
    assert last_integer(text) == expected


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(list("0123456789+-.,e \n")), max_size=300),
    answer=st.integers(-999, 999),
)
def test_last_integer_reward_never_raises_and_is_binary(text, answer):
    assert last_integer_reward(text, str(answer)) in (0.0, 1.0)


@settings(max_examples=100, deadline=None)
@given(
    prefix=st.text(max_size=50), value=st.integers(-(10**12), 10**12), answer=st.integers(-(10**12), 10**12)
)
def test_last_integer_reward_property(prefix, value, answer):
    assert last_integer_reward(f"{prefix} so the answer is {value}.", str(answer)) == float(value == answer)


# ---------------------------------------------------------------- batch_hash


def test_batch_hash():
    assert batch_hash([1, 2, 3]) == batch_hash([1, 2, 3])
    assert batch_hash([1, 2, 3]) == batch_hash((1, 2, 3))
    assert batch_hash([1, 2, 3]) != batch_hash([3, 2, 1])
    assert batch_hash([1, 2, 3]) != batch_hash([1, 2])
    assert batch_hash([12, 3]) != batch_hash([1, 23])
    h = batch_hash(list(range(64)))
    assert re.fullmatch(r"[0-9a-f]{16}", h)
    task = ArithTask()
    assert batch_hash(task.train_indices(2, 8)) == batch_hash(ArithTask().train_indices(2, 8))
    assert batch_hash(task.train_indices(2, 8)) != batch_hash(task.train_indices(3, 8))


# ---------------------------------------------------------------- boxed_integer_reward

REWARD_CASES = [
    # (text, answer, expected)
    ("\\boxed{42}", "42", 1.0),
    ("The answer is \\boxed{42}.", "42", 1.0),
    ("$\\boxed{42}$", "42", 1.0),
    ("\\boxed{41}", "42", 0.0),
    ("\\boxed{1} then \\boxed{2}", "2", 1.0),  # the last boxed wins
    ("\\boxed{1} then \\boxed{2}", "1", 0.0),
    ("\\boxed{2} ... \\boxed{2} ... \\boxed{3}", "3", 1.0),
    ("\\boxed{ 7 }", "7", 1.0),
    ("\\boxed{\n7\n}", "7", 1.0),
    ("\\boxed{+7}", "7", 1.0),
    ("\\boxed{-12}", "-12", 1.0),
    ("\\boxed{ -12 }", "-12", 1.0),
    ("\\boxed{12}", "-12", 0.0),
    ("\\boxed{-0}", "0", 1.0),
    ("\\boxed{007}", "7", 1.0),
    ("\\boxed{- 12}", "-12", 0.0),
    ("\\boxed{3.0}", "3", 0.0),
    ("\\boxed{1,000}", "1000", 0.0),
    ("\\boxed{1 000}", "1000", 0.0),
    ("\\boxed{1e3}", "1000", 0.0),
    ("\\boxed{seven}", "7", 0.0),
    ("\\boxed{x = 7}", "7", 0.0),
    ("\\boxed{7 apples}", "7", 0.0),
    ("\\boxed{\\text{7}}", "7", 0.0),  # nested braces: not a bare integer
    ("\\boxed{{7}}", "7", 0.0),
    ("\\boxed{\\frac{14}{2}}", "7", 0.0),
    ("The answer is 7.", "7", 0.0),  # no boxed
    ("7", "7", 0.0),
    ("", "7", 0.0),
    ("\\boxed{}", "7", 0.0),  # empty boxed
    ("\\boxed{ }", "0", 0.0),
    ("\\boxed 7", "7", 1.0),  # the brace-less form counts, as in MATH solutions
    ("\\boxed{7", "7", 0.0),  # unclosed
    ("boxed{7}", "7", 0.0),  # no backslash
    ("\\boxed{" + "9" * 40 + "}", "9" * 40, 0.0),  # too long to be an answer here: rejected, not raised
]


@pytest.mark.parametrize(("text", "answer", "expected"), REWARD_CASES)
def test_boxed_integer_reward(text, answer, expected):
    result = boxed_integer_reward(text, answer)
    assert isinstance(result, float)
    assert result == expected


def test_reward_case_table_size():
    assert len(REWARD_CASES) >= 20
    assert {e for _, _, e in REWARD_CASES} == {0.0, 1.0}


@pytest.mark.parametrize(
    "text",
    [
        "\\boxed{5} no wait, \\boxed{" + "9" * 100 + "}",
        "\\boxed{5} no wait, \\boxed{\\frac{11}{2}}",
        "\\boxed{5} no wait, \\boxed{" + "x" * 65 + "}",
    ],
    ids=["100-digit", "frac", "65-chars"],
)
def test_last_boxed_wins_even_when_unparseable(text):
    assert boxed_integer_reward(text, "5") == 0.0


def _reward(text: str, answer: str) -> float:
    return boxed_integer_reward(text, answer)


def test_hostile_one_megabyte():
    assert _reward("a" * 1_000_000, "1") == 0.0
    assert _reward("{" * 1_000_000, "1") == 0.0
    assert _reward("\\boxed{" * 150_000, "1") == 0.0
    assert _reward("x" * 1_000_000 + "\\boxed{1}", "1") == 1.0  # the tail is read


def test_hostile_nested_braces():
    text = "\\boxed" + "{" * 10_000 + "1" + "}" * 10_000
    assert _reward(text, "1") == 0.0
    assert _reward("\\boxed{" * 10_000 + "1" + "}" * 10_000, "1") == 0.0


def test_hostile_many_boxes_last_wins():
    text = "\\boxed{1}" * 5_000 + "\\boxed{2}"
    assert _reward(text, "1") == 0.0
    assert _reward(text, "2") == 1.0
    assert _reward("\\boxed{1}" * 5_000, "1") == 1.0


def test_hostile_huge_number():
    digits = "7" * 10_000
    assert _reward(f"\\boxed{{{digits}}}", "7") == 0.0
    assert _reward(f"\\boxed{{-{digits}}}", "7") == 0.0
    assert _reward(f"\\boxed{{{digits}}}", "1") == 0.0


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(list("\\boxed{}0123456789+- .,\n")), max_size=300),
    answer=st.integers(-999, 999),
)
def test_reward_never_raises_and_is_binary(text, answer):
    assert boxed_integer_reward(text, str(answer)) in (0.0, 1.0)


@settings(max_examples=100, deadline=None)
@given(
    prefix=st.text(max_size=50), value=st.integers(-(10**12), 10**12), answer=st.integers(-(10**12), 10**12)
)
def test_reward_boxed_integer_property(prefix, value, answer):
    prefix = prefix.replace("\\", "")  # keep the prefix from closing or opening a box of its own
    text = f"{prefix} so the answer is \\boxed{{{value}}}"
    assert boxed_integer_reward(text, str(answer)) == float(value == answer)


def test_problem_is_frozen():
    p = Problem(index=0, question="q", answer="1")
    with pytest.raises(AttributeError):
        p.answer = "2"


def test_eval_problems_are_distinct_and_never_trained_on():
    task = ArithTask()
    evals = task.eval_problems(300)
    questions = {p.question for p in evals}
    assert len(questions) == 300
    train = {task.train_problem(i).question for i in range(20_000)}
    assert not questions & train
    from arca_sweep.tasks.arith import held_out

    assert all(held_out(p.meta["expr"]) for p in evals)
    assert not any(held_out(task.train_problem(i).meta["expr"]) for i in range(2_000))


@pytest.mark.parametrize(
    "text,answer,reward",
    [
        ("so \u22125", "-5", 1.0),  # U+2212, the typeset minus, is a minus
        ("\\boxed{\u22125}", "-5", 1.0),
        ("\u0663", "3", 0.0),  # Arabic-Indic three: not an ASCII integer
        ("\uff13", "3", 0.0),  # fullwidth three
        ("\\boxed{\U0001d7d1}", "3", 0.0),  # mathematical bold three
    ],
)
def test_integers_are_ascii_digits_with_either_minus(text, answer, reward):
    grade = boxed_integer_reward if "boxed" in text else last_integer_reward
    assert grade(text, answer) == reward


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["data.max_operands=1000000"], r"data\.max_operands=1000000: at most 64"),
        (
            ["data.max_operand=1000000000000000", "data.ops=*", "data.max_operands=3"],
            r"data\.max_operand=1000000000000000 .* answers could have 45 digits.* at most 30",
        ),
    ],
)
def test_arith_shapes_whose_answers_cannot_be_graded_are_refused_before_compute(overrides, message):
    from arca_sweep.config import ConfigError, validate
    from arca_sweep.testing import make_config

    with pytest.raises(ConfigError, match=message):
        validate(make_config("data=arith", *overrides))
    with pytest.raises(ValueError, match=message):
        build_task(make_config("data=arith", *overrides).data)
    validate(
        make_config("data=arith", "data.max_operand=9", "data.ops=*", "data.max_operands=30")
    )  # 30 digits
