"""The reasoning benchmarks (conf/data/{aime24,aime25,amc23,minerva,olympiadbench}.yaml) as eval sets: each
config composes, reads its fixture (tests/fixtures/benchmarks/, rows written for these tests in each hub
dataset's own columns and value types) through its data.fields, builds eval-only, and grades through the
real Grader; MathTask.equivalent; a bad data.fields key; the offline hub error.

Nothing here reaches the HF hub. One grader (one worker process) serves every grading test.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest

from arca_sweep.config import ConfigError
from arca_sweep.errors import DataFileNotFound
from arca_sweep.tasks import build_task
from arca_sweep.tasks.arith import ArithTask
from arca_sweep.tasks.jsonl import JsonlTask
from arca_sweep.tasks.math import INSTRUCTION, MathTask, field_errors
from arca_sweep.testing import make_config
from tests.helpers import REPO, cli_env

FIXTURES = REPO / "tests" / "fixtures" / "benchmarks"
MISSING_TRAIN = "/nonexistent/arca-sweep/math_train.jsonl"  # eval-only must never read it

# benchmark -> (fixture, its rows as problems: question text, gold answer, unique_id, a correct response)
EXPECTED = {
    "aime24": (
        "aime24.jsonl",
        [
            ("Find the remainder when $7^{4}$ is divided by $100$.", "1", 1, "so $\\boxed{1}$"),
            ("How many positive divisors does $360$ have?", "24", 2, "$\\boxed{24}$"),
            ("The real number $x$ satisfies $3x + 5 = 50$. Find $x^2$.", "225", 3, "\\boxed{225}"),
        ],
    ),
    "aime25": (
        "aime25.jsonl",
        [
            ("Find the sum of all positive integers $n$ with $n^2 < 30$.", "15", None, "\\boxed{15}"),
            ("Find the greatest common divisor of $84$ and $126$.", "42", None, "\\boxed{42}"),
            ("Find the number of 3-element subsets of an 8-element set.", "56", None, "\\boxed{56}"),
        ],
    ),
    "amc23": (
        "amc23.parquet",
        [
            (
                "Two numbers have sum $30$ and difference $6$. What is the larger number?",
                "18",
                0,
                "\\boxed{18}",
            ),
            (
                "What is the area of a right triangle whose legs have lengths $6$ and $8$?",
                "24",
                1,
                "\\boxed{24.0}",
            ),
            ("How many edges does a cube have?", "12", 2, "\\boxed{12}"),
        ],
    ),
    "minerva": (
        "minerva.jsonl",
        [
            (
                "A car covers $150$ km in $2.5$ hours at constant speed. What is its speed in km/h?",
                "60",
                None,
                "\\boxed{60}",
            ),
            (
                "A resistor of $4\\,\\Omega$ carries a current of $3$ A. What power does it dissipate, in watts?",
                "36",
                None,
                "\\boxed{36}",
            ),
            (
                "A body falls from rest with acceleration $g = 10$ m/s$^2$. How far, in metres, does it fall in the "
                "first $t$ seconds? Give an expression in $t$.",
                "5 t^{2}",
                None,
                "\\boxed{5t^2}",
            ),
        ],
    ),
    "olympiadbench": (
        "olympiadbench.jsonl",
        [
            ("Find all real numbers $x$ such that $x^{2} = 9$.", "3, -3", 9001, "\\boxed{3, -3}"),
            ("Compute $1 + 2 + \\cdots + 10$.", "55", 9002, "\\boxed{55}"),
            ("Let $f(x) = 2x + 1$. Compute $f(f(1))$.", "7", 9003, "\\boxed{7}"),
            ("For $x \\neq 1$, simplify $\\frac{x^{2} - 1}{x - 1}$.", "x+1", 9004, "\\boxed{1 + x}"),
        ],
    ),
}
HUB = {  # benchmark -> (eval_hub_id, eval_hub_configs, eval_split)
    "aime24": ("HuggingFaceH4/aime_2024", None, "train"),
    "aime25": ("opencompass/AIME2025", ["AIME2025-I", "AIME2025-II"], "test"),
    "amc23": ("math-ai/amc23", None, "test"),
    "minerva": ("math-ai/minervamath", None, "test"),
    "olympiadbench": ("Hothan/OlympiadBench", ["OE_TO_maths_en_COMP"], "train"),
}


@pytest.fixture(scope="module")
def cfg():
    """A MATH-500 run with every benchmark as an eval set, each pointed at its fixture."""
    overrides = ["data=math500"]
    for name, (fixture, _) in EXPECTED.items():
        overrides += [
            f"+data@eval.sets.{name}={name}",
            f"eval.sets.{name}.eval_path={FIXTURES / fixture}",
            f"eval.sets.{name}.path={MISSING_TRAIN}",
            f"eval.sets.{name}.grader_workers=1",
            f"eval.sets.{name}.grader_timeout_s=2.0",
        ]
    return make_config(*overrides)


@pytest.fixture(scope="module")
def tasks(cfg):
    built = {name: build_task(cfg.eval.sets[name], eval_only=True) for name in EXPECTED}
    yield built
    for task in built.values():
        task.close()


@pytest.fixture(scope="module")
def grader_task(tasks):
    """The one task whose grader grades everything here (a reward depends on the problem's answer only)."""
    return tasks["aime24"]


# ---------------------------------------------------------------- configs and fixtures


@pytest.mark.parametrize("name", EXPECTED)
def test_config_names_the_hub_dataset_and_keeps_math_training(cfg, name):
    data = cfg.eval.sets[name]
    assert data.name == name and make_config(f"data={name}").data.name == name
    hub_id, configs, split = HUB[name]
    assert (data.eval_hub_id, data.eval_split) == (hub_id, split)
    assert (None if data.eval_hub_configs is None else list(data.eval_hub_configs)) == configs
    assert data.hub_id == "DigitalLearningGmbH/MATH-lighteval" and data.split == "train"
    assert field_errors(data, f"eval.sets.{name}") == []


def test_fixtures_keep_each_hub_schema():
    """Column names and value types as each hub dataset has them (see the configs' comments)."""
    rows = {
        name: [json.loads(line) for line in (FIXTURES / f"{name}.jsonl").read_text().splitlines()]
        for name in HUB
    }
    assert all(isinstance(r["id"], int) and isinstance(r["answer"], str) for r in rows["aime24"])
    assert all(set(r) == {"question", "answer"} for r in rows["aime25"])
    assert all(
        isinstance(r["answer"], float) and set(r) == {"id", "question", "answer", "url"}
        for r in rows["amc23"]
    )
    assert all(set(r) == {"question", "answer"} for r in rows["minerva"])
    olympiad = rows["olympiadbench"]
    assert all(isinstance(r["final_answer"], list) and isinstance(r["solution"], list) for r in olympiad)
    assert {"is_multiple_answer", "answer_type", "subfield", "image_1"} <= set(olympiad[0])


# ---------------------------------------------------------------- eval-only problems


@pytest.mark.parametrize("name", EXPECTED)
def test_eval_problems_are_the_fixture_rows(tasks, name):
    task = tasks[name]
    assert isinstance(task, MathTask) and task.eval_only
    problems = task.eval_problems(100)
    expected = EXPECTED[name][1]
    assert [p.question for p in problems] == [f"{q}\n\n{INSTRUCTION}" for q, *_ in expected]
    assert [p.answer for p in problems] == [gold for _, gold, *_ in expected]
    assert [p.meta.get("unique_id", None) for p in problems] == [uid for _, _, uid, _ in expected]
    assert [p.index for p in problems] == list(range(len(expected)))
    assert task.stats == {
        "data/eval_rows": len(expected),
        "data/eval_skipped_no_answer": 0,
        "data/eval_skipped_empty_problem": 0,
        "data/eval_skipped_too_long": 0,
        "reward/timeouts": 0,
        "reward/errors": 0,
    }
    with pytest.raises(RuntimeError, match="eval-only"):
        task.train_indices(0, 2)
    with pytest.raises(RuntimeError, match="eval-only"):
        task.train_problem(0)


def test_olympiadbench_subject_is_the_subfield(tasks):
    assert [p.meta["subject"] for p in tasks["olympiadbench"].eval_problems(4)] == [
        "Algebra",
        "Combinatorics",
        "Algebra",
        "Algebra",
    ]


def test_amc23_jsonl_and_parquet_give_the_same_problems(cfg, tasks):
    data = copy.deepcopy(cfg.eval.sets.amc23)
    data.eval_path = str(FIXTURES / "amc23.jsonl")
    from_jsonl = build_task(data, eval_only=True)
    assert from_jsonl.eval_problems(10) == tasks["amc23"].eval_problems(10)


def test_a_full_build_reads_the_training_source(cfg):
    """The same config without eval_only reads data.path, which eval-only builds never touched."""
    with pytest.raises(DataFileNotFound, match="math_train.jsonl"):
        build_task(cfg.eval.sets.aime24)


# ---------------------------------------------------------------- grading


def test_rewards_score_correct_answers_1_and_wrong_ones_0(tasks, grader_task):
    problems = [p for name in EXPECTED for p in tasks[name].eval_problems(100)]
    correct = [response for name in EXPECTED for *_, response in EXPECTED[name][1]]
    wrong = ["the answer is $\\boxed{-7}$"] * len(problems)
    assert grader_task.rewards(correct + wrong, problems + problems) == [1.0] * len(problems) + [0.0] * len(
        problems
    )
    assert grader_task.stats["reward/timeouts"] == grader_task.stats["reward/errors"] == 0


def test_equivalent_is_the_graders_symmetric_judgement(grader_task):
    pairs = [
        ("1/2", "\\frac{1}{2}"),
        ("0.5", "\\frac{1}{2}"),
        ("x+1", "1 + x"),
        ("2", "3"),
        ("\\frac{1}{2}", "\\frac{1}{2}"),  # equal strings: no grading
        ("", ""),
        ("1} \\boxed{2", "2"),  # braces that escape the box cannot pose as another answer
        ("9^{9^{9^{9}}}", "1"),  # hangs sympy: cut at the time limit, not equivalent
    ]
    expected = [True, True, True, False, True, False, False, False]
    assert grader_task.equivalent(pairs) == expected
    assert grader_task.equivalent([(b, a) for a, b in pairs[:7]]) == expected[:7]
    assert grader_task.equivalent([]) == []
    with pytest.raises(TypeError, match=r"pairs\[0\]"):
        grader_task.equivalent([("1", 1)])


# ---------------------------------------------------------------- fields, bad rows, other tasks


def test_bad_fields_key_names_it_and_the_valid_keys(cfg):
    data = copy.deepcopy(cfg.eval.sets.aime24)
    data.fields = {"prob": "question"}
    message = r"'prob'; valid keys: problem, answer, solution, id, level, subject"
    assert any(
        "eval.sets.aime24.fields has the unknown key" in e for e in field_errors(data, "eval.sets.aime24")
    )
    with pytest.raises(ConfigError, match=rf"data\.fields has the unknown key {message}"):
        build_task(data, eval_only=True)


def test_rows_missing_columns_or_holding_junk_are_skipped_and_counted(cfg, tmp_path):
    good = {"id": 1, "question": "Compute $2+2$.", "final_answer": ["$4$"], "subfield": "Algebra"}
    rows = [
        good,
        {"id": 2, "final_answer": ["1"]},  # no question column
        {"id": 3, "question": 12345, "final_answer": ["1"]},  # a number, not text
        {"id": 4, "question": "No answer column.", "solution": ["a list, not text"]},
        {"id": 5, "question": "Empty list.", "final_answer": []},
        {"id": 6, "question": "Nested junk.", "final_answer": {"a": [[1, {"b": None}]]}},
        {"id": 7, "question": "A nested list.", "final_answer": [["1"]]},
        {"id": 8, "question": "A bool.", "final_answer": [True]},
        {"id": 9, "question": "A huge answer.", "final_answer": ["9" * 5000]},
        {"id": {"not": "an id"}, "question": "x" * 2_000_000, "final_answer": [7], "subfield": 5},
    ]
    path = tmp_path / "olympiad.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    data = copy.deepcopy(cfg.eval.sets.olympiadbench)
    data.eval_path = str(path)
    task = build_task(data, eval_only=True)
    problems = task.eval_problems(100)
    assert [p.answer for p in problems] == ["4", "7"]
    assert problems[0].meta == {"level": None, "subject": "Algebra", "unique_id": 1}
    assert problems[1].meta == {"level": None, "subject": None} and len(problems[1].question) > 2_000_000
    assert (task.stats["data/eval_skipped_empty_problem"], task.stats["data/eval_skipped_no_answer"]) == (
        2,
        6,
    )


def test_jsonl_and_arith_build_eval_only(tmp_path):
    rows = tmp_path / "eval.jsonl"
    rows.write_text('{"prompt": "1+1?", "answer": 2}\n{"prompt": "2+2?", "answer": "4"}\n')
    data = make_config("data=jsonl", f"data.path={MISSING_TRAIN}", f"data.eval_path={rows}").data
    task = build_task(data, eval_only=True)
    assert isinstance(task, JsonlTask) and [(p.question, p.answer) for p in task.eval_problems(5)] == [
        ("1+1?", "2"),
        ("2+2?", "4"),
    ]
    with pytest.raises(RuntimeError, match="eval-only"):
        task.train_indices(0, 1)
    # no data.eval_path: the eval rows are the data.path file's (here the packaged example rows)
    example = build_task(make_config("data=jsonl").data, eval_only=True)
    assert example.eval_problems(3) == build_task(make_config("data=jsonl").data).eval_problems(3)
    assert isinstance(build_task(make_config("data=arith").data, eval_only=True), ArithTask)


def test_offline_hub_names_the_dataset_and_data_eval_path(tmp_path):
    """Offline with an empty cache, an eval set on the hub fails with the loader's one clear error.

    ``datasets`` reads the offline switches when imported, so the build runs in a fresh interpreter."""
    code = (
        "from arca_sweep.tasks import build_task\n"
        "from arca_sweep.tasks.math import DatasetUnavailableError\n"
        "from arca_sweep.testing import make_config\n"
        "cfg = make_config('data=math500', '+data@eval.sets.aime24=aime24')\n"
        "try:\n"
        "    build_task(cfg.eval.sets.aime24, eval_only=True)\n"
        "except DatasetUnavailableError as exc:\n"
        "    print('ERROR', exc)\n"
    )
    env = cli_env(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf_home"),
        HF_DATASETS_CACHE=str(tmp_path / "hf_datasets"),
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ERROR "), proc.stdout + proc.stderr
    assert "HuggingFaceH4/aime_2024" in proc.stdout and "'train'" in proc.stdout
    assert "data.eval_path=" in proc.stdout and "DigitalLearningGmbH" not in proc.stdout
    assert "Traceback" not in proc.stderr
