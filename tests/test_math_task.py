"""The MATH task: row loading (JSONL, Parquet, hub errors), normalization and skips, filters, the paired
prompt order, rewards through the real Grader, and the data=math / data=math500 configs.

Nothing here reaches the HF hub: every dataset is a fixture written into tmp_path, and the hub test runs
offline with an empty cache.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter

import pyarrow
import pyarrow.parquet
import pytest

from arca_sweep.config import validate
from arca_sweep.tasks import Problem, build_task
from arca_sweep.tasks.math import (
    INSTRUCTION,
    MathTask,
    build_problems,
    load_rows,
    parse_level,
    subject_key,
)
from arca_sweep.tasks.rows import prompt_order
from arca_sweep.testing import make_config

# MATH rows: level "Level n", subject in "type", gold only inside the solution
MATH_ROWS = [
    {"problem": "What is $1+1$?", "level": "Level 1", "type": "Algebra", "solution": "So $\\boxed{2}$."},
    {
        "problem": "Simplify $\\frac{2}{4}$.",
        "level": "Level 2",
        "type": "Prealgebra",
        "solution": "First $\\boxed{3}$, no: $\\boxed{\\frac{1}{2}}$.",
    },
    {
        "problem": "How many ways?",
        "level": "Level 3",
        "type": "Counting & Probability",
        "solution": "$\\boxed 9$",
    },
    {"problem": "Area?", "level": "Level ?", "type": "Geometry", "solution": "It is $\\fbox{12}$."},
    {"problem": "No box here.", "level": "Level 4", "type": "Algebra", "solution": "The answer is 5."},
    {"problem": "   ", "level": "Level 2", "type": "Algebra", "solution": "$\\boxed{1}$"},
    {"level": "Level 5", "type": "Algebra", "solution": "$\\boxed{1}$"},  # no problem key
    {
        "problem": "Solve $x^2=4$, $x>0$.",
        "level": "Level 5",
        "type": "Intermediate Algebra",
        "solution": "$\\boxed{2}$",
    },
]
# MATH-500 rows: an "answer" field, "subject", int level, unique_id
MATH500_ROWS = [
    {
        "problem": "Convert $(0,3)$ to polar coordinates.",
        "solution": "... $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$",
        "answer": "\\left( 3, \\frac{\\pi}{2} \\right)",
        "subject": "Precalculus",
        "level": 2,
        "unique_id": "test/precalculus/807.json",
    },
    {
        "problem": "Which is larger?",
        "solution": "We get $\\boxed{4}$.",
        "answer": "7",  # preferred over the solution's box
        "subject": "Algebra",
        "level": 3,
        "unique_id": "test/algebra/1.json",
    },
    {
        "problem": "Empty answer field.",
        "solution": "so $\\boxed{11}$",
        "answer": "  ",  # falls back to the solution
        "subject": "Number Theory",
        "level": 1,
        "unique_id": "test/number_theory/2.json",
    },
    {"problem": "Nothing usable.", "solution": "no box", "answer": "", "subject": "Algebra", "level": 4},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_parquet(path, rows):
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), path)
    return path


@pytest.fixture
def files(tmp_path):
    return {
        "math_jsonl": write_jsonl(tmp_path / "math_train.jsonl", MATH_ROWS),
        "math_parquet": write_parquet(tmp_path / "math_train.parquet", MATH_ROWS),
        "math500_jsonl": write_jsonl(tmp_path / "math500_test.jsonl", MATH500_ROWS),
        "math500_parquet": write_parquet(tmp_path / "math500_test.parquet", MATH500_ROWS),
    }


def train_rows(n: int) -> list[dict]:
    return [
        {"problem": f"Compute {k} + 0.", "level": 1, "subject": "Algebra", "answer": str(k)} for k in range(n)
    ]


def make_task(n_train: int = 10, seed: int = 0, **kwargs) -> MathTask:
    return MathTask(train_rows(n_train), MATH500_ROWS, seed=seed, **kwargs)


# ---------------------------------------------------------------- loading


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_loaders_read_both_row_formats(files, fmt):
    math_rows = load_rows(path=str(files[f"math_{fmt}"]))
    math500_rows = load_rows(path=str(files[f"math500_{fmt}"]))
    assert len(math_rows) == len(MATH_ROWS) and len(math500_rows) == len(MATH500_ROWS)
    assert math_rows[2]["level"] == "Level 3" and math_rows[2]["type"] == "Counting & Probability"
    assert math500_rows[0]["level"] == 2 and math500_rows[0]["unique_id"] == "test/precalculus/807.json"
    # the two formats give the same problems (parquet fills missing keys with None)
    problems, counts = build_problems(math_rows)
    assert [p.answer for p in problems] == ["2", "\\frac{1}{2}", "9", "12", "2"]
    assert counts == Counter(no_answer=1, empty_problem=2, filtered=0)


def test_json_array_file_and_bad_lines(tmp_path):
    (tmp_path / "rows.json").write_text(json.dumps(MATH500_ROWS))
    assert load_rows(path=str(tmp_path / "rows.json")) == MATH500_ROWS
    (tmp_path / "bad.jsonl").write_text(json.dumps(MATH500_ROWS[0]) + "\n\n{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:3"):
        load_rows(path=str(tmp_path / "bad.jsonl"))
    (tmp_path / "rows.csv").write_text("problem,answer\n")
    with pytest.raises(ValueError, match=r"\.csv"):
        load_rows(path=str(tmp_path / "rows.csv"))


def test_missing_local_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "math_train.jsonl"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_rows(path=str(missing))
    with pytest.raises(ValueError, match="data.path"):
        load_rows()


def test_unreachable_hub_gives_one_clear_error(tmp_path, monkeypatch):
    """Offline, with an empty cache: the error names the dataset and the local-file options.

    ``datasets`` reads the offline switches when imported, so the call runs in a fresh interpreter."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    code = (
        "from arca_sweep.tasks.math import DatasetUnavailableError, load_rows\n"
        "try:\n"
        "    load_rows(hub_id='DigitalLearningGmbH/MATH-lighteval')\n"
        "except DatasetUnavailableError as exc:\n"
        "    assert isinstance(exc, RuntimeError)\n"
        "    print('ERROR', exc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=os.getcwd(),
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ERROR "), proc.stdout + proc.stderr
    message = proc.stdout
    assert "DigitalLearningGmbH/MATH-lighteval" in message and "'train'" in message
    assert "data.path=" in message and "data.eval_path=" in message
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- normalization, skips, filters


def test_normalization_of_both_formats():
    problems, counts = build_problems(MATH500_ROWS + MATH_ROWS)
    by_question = {p.question.split("\n\n")[0]: p for p in problems}
    assert [p.index for p in problems] == list(range(len(problems)))
    polar = by_question["Convert $(0,3)$ to polar coordinates."]
    assert polar.question == f"Convert $(0,3)$ to polar coordinates.\n\n{INSTRUCTION}"
    assert "\\boxed{}" in INSTRUCTION
    assert polar.answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert polar.meta == {"level": 2, "subject": "Precalculus", "unique_id": "test/precalculus/807.json"}
    assert by_question["Which is larger?"].answer == "7"  # answer field preferred over the solution's box
    assert by_question["Empty answer field."].answer == "11"  # blank answer field: the solution's box
    assert by_question["Simplify $\\frac{2}{4}$."].answer == "\\frac{1}{2}"  # the last box
    assert by_question["How many ways?"].answer == "9"  # \boxed 9
    assert by_question["How many ways?"].meta == {"level": 3, "subject": "Counting & Probability"}
    assert by_question["Area?"].answer == "12"  # \fbox{}
    assert by_question["Area?"].meta["level"] is None  # "Level ?"
    assert counts == Counter(no_answer=2, empty_problem=2, filtered=0)


@pytest.mark.parametrize(
    ("value", "level"),
    [
        ("Level 3", 3),
        ("level 5", 5),
        ("3", 3),
        (3, 3),
        ("Level ?", None),
        (7, None),
        (None, None),
        (True, None),
    ],
)
def test_parse_level(value, level):
    assert parse_level(value) == level


def test_level_and_subject_filters():
    problems, counts = build_problems(MATH_ROWS, levels=[2, 3, 5])
    assert [p.meta["level"] for p in problems] == [2, 3, 5]
    assert counts["filtered"] == 2 and counts["no_answer"] == 1 and counts["empty_problem"] == 2
    # case-insensitive, and hendrycks_math config names match the display names
    problems, counts = build_problems(MATH_ROWS, subjects=["ALGEBRA", "counting_and_probability"])
    assert [p.meta["subject"] for p in problems] == ["Algebra", "Counting & Probability"]
    assert counts["filtered"] == 3
    problems, _ = build_problems(MATH_ROWS, levels=[5], subjects=["intermediate algebra"])
    assert [p.answer for p in problems] == ["2"] and problems[0].index == 0
    assert subject_key("Counting & Probability") == "counting_and_probability"


def test_task_counts_skips_and_filters_training_rows_only(files):
    task = MathTask(
        load_rows(path=str(files["math_parquet"])), load_rows(path=str(files["math500_jsonl"])), levels=[1, 2]
    )
    assert [task.train_problem(i).answer for i in range(2)] == ["2", "\\frac{1}{2}"]
    assert len(task.eval_problems(100)) == 3  # levels do not filter the eval set
    assert task.stats == {
        "data/train_rows": 2,
        "data/eval_rows": 3,
        "data/train_skipped_no_answer": 1,
        "data/train_skipped_empty_problem": 2,
        "data/eval_skipped_no_answer": 1,
        "data/eval_skipped_empty_problem": 0,
        "data/train_skipped_too_long": 0,
        "data/eval_skipped_too_long": 0,
        "data/train_filtered": 3,
        "reward/timeouts": 0,
        "reward/errors": 0,
    }
    with pytest.raises(ValueError, match=r"no training rows left.*data.levels=\[4\]"):
        MathTask(MATH_ROWS, MATH500_ROWS, levels=[4])
    with pytest.raises(ValueError, match="no eval rows"):
        MathTask(MATH_ROWS, MATH_ROWS[4:7])


def test_eval_problems_in_file_order():
    task = make_task()
    assert [p.meta["unique_id"] for p in task.eval_problems(2)] == [
        "test/precalculus/807.json",
        "test/algebra/1.json",
    ]
    assert [p.index for p in task.eval_problems(3)] == [0, 1, 2]
    assert task.eval_problems(3) == task.eval_problems(1000)


# ---------------------------------------------------------------- the prompt order


def test_train_indices_cover_each_row_once_per_epoch_and_wrap():
    size, num_prompts = 7, 3
    task = make_task(size, seed=5)
    stream = [i for step in range(7) for i in task.train_indices(step, num_prompts)]  # 21 = three epochs
    epochs = [stream[k : k + size] for k in range(0, len(stream), size)]
    assert all(sorted(epoch) == list(range(size)) for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) == 3  # re-shuffled each epoch
    assert task.train_indices(2, 3) == [epochs[0][6], epochs[1][0], epochs[1][1]]  # crosses the boundary
    assert all(task.train_problem(i).index == i for i in range(size))


def test_train_indices_are_a_pure_function_of_seed_step_and_size():
    forward = [prompt_order(3, step, 4, 10) for step in range(8)]
    backward = [prompt_order(3, step, 4, 10) for step in reversed(range(8))][::-1]
    assert forward == backward  # no hidden state: any call order gives the same batches
    assert forward[0] != [0, 1, 2, 3]  # shuffled
    assert forward != [prompt_order(4, step, 4, 10) for step in range(8)]  # another seed, another order
    # the order depends on the size only, not on the rows: paired arms see the same prompts
    a, b = make_task(10, seed=3), make_task(10, seed=3)
    assert [a.train_indices(s, 4) for s in range(8)] == [b.train_indices(s, 4) for s in range(8)] == forward
    assert make_task(10, seed=4).train_indices(0, 4) != a.train_indices(0, 4)
    with pytest.raises(ValueError, match="num_prompts"):
        prompt_order(0, 0, 0, 10)


# ---------------------------------------------------------------- rewards through the real Grader

HOSTILE_TIMEOUT_S = 3.0


def test_rewards_through_the_grader_count_timeouts_and_errors():
    task = make_task(grader_workers=1, grader_timeout_s=HOSTILE_TIMEOUT_S)
    polar = task.eval_problems(1)[0]
    fraction = Problem(index=0, question="q", answer="\\frac{1}{2}")
    assert task.grader is None  # not started before the first reward
    texts = [
        "The point is $\\boxed{\\left(3, \\frac{\\pi}{2}\\right)}$.",
        "so $\\boxed{0.5}$",
        "so $\\boxed{\\frac{1}{3}}$",
        "the answer is 1/2",  # no box
        "$\\boxed{9^{9^{9^{9}}}}$",  # hostile: hangs sympy
    ]
    scores = task.rewards(texts, [polar, fraction, fraction, fraction, fraction])
    assert scores == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert (task.stats["reward/timeouts"], task.stats["reward/errors"]) == (
        1,
        0,
    )  # the hang was cut at the limit
    assert task.reward("$\\boxed{2}$", Problem(index=0, question="q", answer="2")) == 1.0
    assert task.rewards([], []) == []
    with pytest.raises(ValueError, match="2 responses for 1 problems"):
        task.rewards(["a", "b"], [fraction])

    # a worker killed mid-answer scores 0 and counts as an error
    (victim,) = task.grader.worker_pids
    killer = threading.Timer(0.5, os.kill, args=(victim, signal.SIGKILL))
    killer.start()
    assert task.rewards(["$\\boxed{9^{9^{9^{9}}}}$"], [fraction]) == [0.0]
    killer.join()
    assert (task.stats["reward/timeouts"], task.stats["reward/errors"]) == (1, 1)

    pids = task.grader.worker_pids
    task.close()
    task.close()  # idempotent
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(RuntimeError, match="closed"):
        task.reward("$\\boxed{2}$", fraction)
    assert task.stats["reward/errors"] == 1  # counts survive close


# ---------------------------------------------------------------- configs


def test_compose_data_math():
    cfg = make_config("data=math")
    validate(cfg)
    data = cfg.data
    assert data.name == "math"
    assert data.hub_id == data.eval_hub_id == "DigitalLearningGmbH/MATH-lighteval"
    assert (data.split, data.eval_split) == ("train", "test")
    assert data.path is None and data.eval_path is None and data.hub_configs is None
    assert data.enable_thinking is False and data.grader_workers >= 1 and data.grader_timeout_s > 0


def test_compose_data_math500_loads_local_files(files):
    data = make_config("data=math500").data
    assert data.name == "math500"
    assert data.hub_id == "DigitalLearningGmbH/MATH-lighteval" and data.split == "train"
    assert (data.eval_hub_id, data.eval_split) == ("HuggingFaceH4/MATH-500", "test")
    assert data.path is None and data.eval_path is None and data.enable_thinking is False

    cfg = make_config(
        "data=math500",
        f"data.path={files['math_jsonl']}",
        f"data.eval_path={files['math500_parquet']}",
        "data.levels=[2,3]",
        "data.subjects=[prealgebra,counting_and_probability]",
        "data.seed=7",
        "data.grader_workers=1",
    )
    validate(cfg)
    task = build_task(cfg.data)
    assert isinstance(task, MathTask)
    assert [task.train_problem(i).answer for i in range(2)] == ["\\frac{1}{2}", "9"]
    assert [p.answer for p in task.eval_problems(10)] == ["\\left( 3, \\frac{\\pi}{2} \\right)", "7", "11"]
    assert task.seed == 7 and task.grader_workers == 1
    assert task.train_indices(0, 2) == prompt_order(7, 0, 2, 2)
    task.close()
