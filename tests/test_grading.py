"""The MATH grader: answer extraction, math-verify equivalence through real worker processes, hostile
outputs (hangs, huge inputs, code) that must score 0 within the limit, and the grading CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arca_sweep.grade import Grader, extract_boxed, gold_answer, verify
from tests.helpers import REPO, cli, cli_env

MATH_DIR = REPO.parent / "shared" / "data" / "math"
HOSTILE_TIMEOUT_S = 2.0

# ---------------------------------------------------------------- extract_boxed and gold_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so $\\boxed{\\frac{1}{\\sqrt{2}}}$.", "\\frac{1}{\\sqrt{2}}"),
        ("first \\boxed{1}, then \\boxed{2}", "2"),
        ("\\boxed{ 5 }", "5"),
        ("\\boxed {5}", "5"),
        ("our answer is $\\boxed 2$.", "2"),
        ("x^2 + y^2 = \\boxed 9", "9"),
        ("Find $\\fbox{12}$.", "12"),
        ("\\boxed{1} and later \\fbox{3}", "3"),
        ("\\fbox{3} and later \\boxed{4}", "4"),
        ("\\boxed{\\boxed{7}}", "7"),
        ("\\boxed{\\text{(C)}}", "\\text{(C)}"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
        ("\\boxed{\\left\\{ x \\right.}", "\\left\\{ x \\right."),
        ("\\boxed{\\begin{pmatrix} 1 \\\\ {2} \\end{pmatrix}}", "\\begin{pmatrix} 1 \\\\ {2} \\end{pmatrix}"),
        ("no box here", None),
        ("", None),
        ("\\boxed{1", None),
        ("\\boxed{5} but then \\boxed{6", None),  # the last box is unclosed: no fallback to an earlier one
        ("ends with \\boxed", None),
        ("ends with \\boxed   ", None),
        ("\\boxedx{5}", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_extract_boxed_handles_huge_and_deep_input():
    assert extract_boxed("x" * 10**6 + "\\boxed{7}" + "y" * 10**6) == "7"
    deep = "{" * 10_000 + "1" + "}" * 10_000
    assert extract_boxed("\\boxed{" + deep + "}") == deep
    assert extract_boxed("\\boxed{" + "{" * 10_000) is None
    assert extract_boxed("\\boxed{1}" * 100_000) == "1"


def reference_extract_boxed(text: str) -> str | None:
    """Slow and plain: try every end position for the shortest balanced ``{...}`` after the last command."""
    starts = [i for i in range(len(text)) if text.startswith(("\\boxed", "\\fbox"), i)]
    if not starts:
        return None
    pos = starts[-1] + (6 if text.startswith("\\boxed", starts[-1]) else 5)
    rest = text[pos:].lstrip()
    if not rest.startswith("{"):
        return None
    for end in range(1, len(rest) + 1):
        candidate = re.sub(r"\\.", "..", rest[:end])  # an escaped character is never a brace
        prefix_depths = [candidate[: k + 1].count("{") - candidate[: k + 1].count("}") for k in range(end)]
        if prefix_depths[-1] == 0 and all(d > 0 for d in prefix_depths[:-1]):
            return rest[1 : end - 1].strip()
    return None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(["\\boxed{", "\\fbox{", "{", "}", "\\{", "\\}", "a", " ", "\\frac"]), max_size=30
    )
)
def test_extract_boxed_matches_reference_on_braced_boxes(parts):
    text = "".join(parts)
    assert extract_boxed(text) == reference_extract_boxed(text)


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"answer": "5", "solution": "so \\boxed{6}"}, "5"),
        ({"answer": " \\frac{1}{2} ", "solution": ""}, "\\frac{1}{2}"),
        ({"answer": "", "solution": "so \\boxed{6}"}, "6"),
        ({"solution": "$\\boxed{-2}$ and $\\boxed{1}$"}, "1"),
        ({"solution": "largest value is $\\boxed 2$."}, "2"),
        ({"answer": "  ", "solution": "no box"}, None),
        ({"solution": "\\boxed{}"}, None),
        ({"solution": "\\boxed{3"}, None),
        ({"answer": None, "solution": None}, None),
        ({}, None),
    ],
)
def test_gold_answer(row, expected):
    assert gold_answer(row) == expected


@pytest.mark.skipif(not (MATH_DIR / "math500_test.jsonl").is_file(), reason="local MATH data absent")
def test_gold_answer_from_solution_matches_math500_answers():
    """SOURCE.md: for all 500, ``answer`` equals the last box of ``solution``; every full-test row has one."""
    rows = [json.loads(line) for line in (MATH_DIR / "math500_test.jsonl").read_text().splitlines()]
    assert len(rows) == 500
    assert [gold_answer({"solution": row["solution"]}) for row in rows] == [row["answer"] for row in rows]
    full_test = [json.loads(line) for line in (MATH_DIR / "math_test.jsonl").read_text().splitlines()]
    assert sum(gold_answer(row) is None for row in full_test) == 0


def test_verify_in_process_percentage():
    """The antlr 4.9.3 FUNC_GAMMA patch: without it every percentage answer fails to parse."""
    from latex2sympy2_extended.antlr_parser import PSParser

    assert verify("The rate is $\\boxed{0.5}$.", "50\\%")  # not a string match: both sides must parse
    assert verify("The rate is $\\boxed{50\\%}$.", "\\frac{1}{2}")
    assert not verify("The rate is $\\boxed{40\\%}$.", "50\\%")
    assert PSParser.AtomContext.FUNC_GAMMA(None) is None


# ---------------------------------------------------------------- equivalence table, through real workers


def respond(answer: str) -> str:
    """A model-like response ending in a boxed answer."""
    return f"Let's think step by step.\nWe compute the quantity carefully.\nTherefore the answer is $\\boxed{{{answer}}}$."


# (gold, boxed prediction, expected)
CASES = [
    # fractions and mixed numbers
    ("\\frac{1}{2}", "0.5", True),
    ("\\frac{1}{2}", "\\frac12", True),
    ("\\frac{1}{2}", "\\dfrac{2}{4}", True),
    ("\\frac{1}{2}", "1/2", True),
    ("\\frac{1}{2}", "\\frac{1}{3}", False),
    ("2\\frac{1}{2}", "\\frac{5}{2}", True),
    ("2\\frac{1}{2}", "2.5", True),
    ("2\\frac{1}{2}", "\\frac{2}{2}", False),
    # decimals
    ("0.25", "\\frac14", True),
    ("10", "10.0", True),
    ("3.14", "3.15", False),
    ("0.333", "\\frac13", False),
    # radicals and pi
    ("2\\sqrt{2}", "\\sqrt{8}", True),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}", True),
    ("\\sqrt{2}", "\\sqrt{3}", False),
    ("2\\pi", "2 \\pi", True),
    ("\\frac{\\pi}{4}", "\\pi/4", True),
    ("\\pi", "3.14", False),
    # intervals
    ("(-\\infty, 3]", "(-\\infty,3]", True),
    ("[2,5)", "[2, 5)", True),
    ("(1,2) \\cup (3,4)", "(3,4)\\cup(1,2)", True),
    ("(-\\infty, 3]", "(-\\infty, 3)", False),
    # ordered tuples
    ("(3,-4)", "\\left(3, -4\\right)", True),
    ("(1,2,3)", "(1, 2, 3)", True),
    ("(1,2)", "(2,1)", False),
    ("(1,2,3)", "(1,2,4)", False),
    # sets and lists of solutions
    ("\\{1,2,3\\}", "\\{3,2,1\\}", True),
    ("1, 2, 3", "3, 2, 1", True),
    ("1,2", "1,3", False),
    # matrices and vectors
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True),
    (
        "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}",
        "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}",
        True,
    ),
    (
        "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}",
        "\\begin{pmatrix} 1 & 2 \\\\ 3 & 5 \\end{pmatrix}",
        False,
    ),
    # percentages (math-verify: 50% also equals 50 and 0.5)
    ("50\\%", "50\\%", True),
    ("50\\%", "50", True),
    ("50\\%", "\\frac{1}{2}", True),
    ("12.5\\%", "12.5\\%", True),
    ("25\\%", "30\\%", False),
    # degrees
    ("30^\\circ", "30", True),
    ("30^\\circ", "30^{\\circ}", True),
    ("45^\\circ", "30^\\circ", False),
    # units, money and \text{}
    ("5\\text{ cm}", "5", True),
    ("\\frac{270}7\\text{ degrees}", "\\frac{270}{7}", True),
    ("\\$18.90", "18.90", True),
    ("\\$32,\\!348", "32348", True),
    ("\\$36", "\\$37", False),
    ("\\text{east}", "\\text{east}", True),
    ("\\text{Evelyn}", "\\text{Evelyn}", True),
    ("\\text{east}", "\\text{west}", False),
    # multiple-choice letters
    ("\\text{(C)}", "C", True),
    ("\\text{(C)}", "(C)", True),
    ("\\text{(C)}", "\\text{(C)}", True),
    ("\\text{(C)}", "D", False),
    ("\\text{(C)}", "\\text{(D)}", False),
    # negative numbers and thousands separators
    ("-3", "-3", True),
    ("-\\frac{3}{4}", "-0.75", True),
    ("1000", "1,000", True),
    ("-3", "3", False),
    # expressions with variables, equations
    ("x^2+2x+1", "(x+1)^2", True),
    ("y = 2x+3", "y=3+2x", True),
    ("3", "x=3", True),
    ("1+2i", "2i+1", True),
    ("x+1", "x+2", False),
    ("2x", "2y", False),
]
# (gold, raw response, expected): the box is required, and the last box is the answer
RESPONSE_CASES = [
    ("5", "The answer is 5.", False),
    ("5", "I first thought $\\boxed{4}$, but rechecking gives $\\boxed{5}$.", True),
    ("5", "I first thought $\\boxed{5}$, but rechecking gives $\\boxed{4}$.", False),
    ("5", "so the answer is $\\boxed{5", False),
    ("5", "x" * 10**6 + " so the answer is $\\boxed{5}$.", True),
    ("5", "$\\boxed{5}$" + " padding" * 1000, False),  # the box is outside the read tail
]


@pytest.fixture(scope="module")
def grader():
    with Grader(workers=2, timeout_s=10.0) as grader:
        yield grader


def test_case_table_is_balanced():
    assert len(CASES) >= 60
    assert 0.25 <= sum(not expected for _, _, expected in CASES) / len(CASES) <= 0.4


def test_equivalence_table_through_workers(grader):
    pairs = [(respond(pred), gold) for gold, pred, _ in CASES] + [
        (pred, gold) for gold, pred, _ in RESPONSE_CASES
    ]
    expected = [e for _, _, e in CASES] + [e for _, _, e in RESPONSE_CASES]
    results = grader.grade(pairs)
    assert [r.status for r in results] == ["ok"] * len(pairs)
    mismatches = [
        (gold, pred[-80:], want)
        for (pred, gold), want, r in zip(pairs, expected, results, strict=True)
        if r.correct != want
    ]
    assert mismatches == []
    assert grader.timeouts == 0 and grader.errors == 0


def test_grade_preserves_order_and_handles_empty(grader):
    assert grader.grade([]) == []
    pairs = [(respond(str(k)), str(k if k % 3 else k + 1)) for k in range(30)]
    assert [r.correct for r in grader.grade(pairs)] == [k % 3 != 0 for k in range(30)]


def test_grade_rejects_non_string_pairs(grader):
    with pytest.raises(TypeError, match=r"pairs\[1\]"):
        grader.grade([("\\boxed{1}", "1"), ("\\boxed{1}", None)])


def test_grader_rejects_bad_settings():
    with pytest.raises(ValueError, match="workers"):
        Grader(workers=0)
    with pytest.raises(ValueError, match="timeout_s"):
        Grader(timeout_s=0)


# ---------------------------------------------------------------- hostile outputs


def test_hostile_outputs_score_zero_within_the_limit_and_do_nothing(tmp_path):
    markers = [tmp_path / f"MARKER{k}" for k in range(5)]
    hanging = {
        "tower": "$\\boxed{9^{9^{9^{9^{9}}}}}$",
        "tower4": "$\\boxed{9^{9^{9^{9}}}}$",
        "factorial": "$\\boxed{(10^{10})!}$",
        "power": "$\\boxed{10^{10^{10}}}$",
    }
    quick = {
        "one_mb": "\\frac{" * 200_000,
        "deep_box": "\\boxed{" + "{" * 10_000 + "1" + "}" * 10_000 + "}",
        "deep_around": "{" * 10_000 + "\\boxed{5}" + "}" * 10_000,
        "long_answer": "\\boxed{" + "0+" * 600 + "5}",  # equal to the gold, but no answer is that long
        "many_boxes": "\\boxed{1}" * 5000,
        "os_system": f"__import__('os').system('touch {markers[0]}')",
        "boxed_pathlib": f'\\boxed{{__import__("pathlib").Path("{markers[1]}").touch()}}',
        "final_answer_expr": f"The final answer is 1+__import__('os').system('touch {markers[2]}')",
        "boxed_sum_call": f"\\boxed{{1+__import__('os').system('touch {markers[3]}')}}",
        "dollar_eval": f"$eval(\"open('{markers[4]}', 'w')\")$ so $\\boxed{{eval(\"open('{markers[4]}', 'w')\")}}$",
    }
    assert len(quick["one_mb"]) >= 10**6
    with Grader(workers=2, timeout_s=HOSTILE_TIMEOUT_S) as hostile_grader:
        pids_before = set(hostile_grader.worker_pids)
        names = list(hanging) + list(quick)
        texts = {**hanging, **quick}
        results = dict(zip(names, hostile_grader.grade([(texts[name], "5") for name in names]), strict=True))

        assert {name: r.correct for name, r in results.items()} == {name: False for name in names}
        assert {name: results[name].status for name in hanging} == {name: "timeout" for name in hanging}
        assert {name: results[name].status for name in quick} == {name: "ok" for name in quick}
        # each hang was stopped by its worker's CPU limit (a "timeout"), and that worker is gone
        assert hostile_grader.timeouts == len(hanging) and hostile_grader.errors == 0
        assert not pids_before & set(hostile_grader.worker_pids)  # the hung workers were replaced
        # the replacements grade normally
        after = hostile_grader.grade([(respond("\\frac{3}{6}"), "0.5"), (respond("2"), "3")])
        assert [(r.correct, r.status) for r in after] == [(True, "ok"), (False, "ok")]
    assert [marker.exists() for marker in markers] == [False] * len(markers)


def test_worker_that_dies_mid_item_scores_error_and_is_replaced():
    with Grader(workers=1, timeout_s=60.0) as crash_grader:
        assert crash_grader.grade([(respond("1"), "1")])[0].correct  # the worker is up
        (victim,) = crash_grader.worker_pids
        killer = threading.Timer(0.5, os.kill, args=(victim, signal.SIGKILL))
        killer.start()
        (result,) = crash_grader.grade([(respond("9^{9^{9^{9^{9}}}}"), "1")])
        killer.join()
        assert (result.correct, result.status) == (False, "error")  # the crash, not the 60 s limit
        assert (crash_grader.errors, crash_grader.timeouts) == (1, 0)
        assert crash_grader.worker_pids != [victim]
        assert crash_grader.grade([(respond("7"), "7")])[0].correct


def test_closed_grader_refuses_work():
    grader = Grader(workers=1)
    grader.close()
    grader.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        grader.grade([("\\boxed{1}", "1")])


# ---------------------------------------------------------------- the CLI


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return cli(*args, module="arca_sweep.grade", quiet=False, check=False, timeout=120, env=cli_env())


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cli_grades_a_file_and_writes_results(tmp_path):
    rows = [
        {"response": respond("\\frac{1}{2}"), "gold": "0.5"},
        {"response": respond("12"), "gold": "Adding gives $\\boxed{12}$."},  # a solution as gold
        {"response": respond("4"), "gold": "5"},
        {"response": respond("9^{9^{9^{9^{9}}}}"), "gold": "5"},
    ]
    data = write_jsonl(
        tmp_path / "in.jsonl",
        [json.dumps(row) for row in rows[:2]] + [""] + [json.dumps(row) for row in rows[2:]],
    )
    out = tmp_path / "results.jsonl"
    proc = run_cli(
        data, "--pred-field", "response", "--gold-field", "gold", "--timeout-s", "1.5", "--out", out
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert {k: summary[k] for k in ("n", "correct", "accuracy", "timeouts", "errors")} == {
        "n": 4,
        "correct": 2,
        "accuracy": 0.5,
        "timeouts": 1,
        "errors": 0,
    }
    assert summary["seconds"] > 0 and summary["items_per_s"] > 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["index"], r["line"], r["correct"], r["status"]) for r in records] == [
        (0, 1, True, "ok"),
        (1, 2, True, "ok"),
        (2, 4, False, "ok"),
        (3, 5, False, "timeout"),
    ]


def test_cli_missing_file(tmp_path):
    proc = run_cli(tmp_path / "nope.jsonl", "--pred-field", "p", "--gold-field", "g")
    assert proc.returncode == 2
    assert "nope.jsonl: no such file" in proc.stderr
    assert proc.stdout == ""


def test_cli_non_json_line_names_the_line(tmp_path):
    data = write_jsonl(
        tmp_path / "in.jsonl", ['{"p": "\\\\boxed{1}", "g": "1"}', '{"p": "x", "g": "1"}', "{not json"]
    )
    proc = run_cli(data, "--pred-field", "p", "--gold-field", "g")
    assert proc.returncode == 2
    assert "in.jsonl:3: not valid JSON" in proc.stderr
    assert proc.stdout == ""


def test_cli_missing_field_is_found_before_grading(tmp_path):
    good = json.dumps({"p": respond("9^{9^{9^{9^{9}}}}"), "g": "1"})
    data = write_jsonl(tmp_path / "in.jsonl", [good] * 5 + ['{"p": "\\\\boxed{1}", "answer": "1"}'])
    out = tmp_path / "results.jsonl"
    proc = run_cli(data, "--pred-field", "p", "--gold-field", "g", "--timeout-s", "30", "--out", out)
    assert proc.returncode == 2
    assert "in.jsonl:6: missing field 'g'" in proc.stderr
    assert proc.stdout == "" and not out.exists()  # nothing graded: no summary, no results file


def test_cli_rejects_bad_options(tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", ['{"p": "\\\\boxed{1}", "g": "1"}'])
    proc = run_cli(data, "--pred-field", "p", "--gold-field", "g", "--workers", "0")
    assert proc.returncode == 2
    assert "--workers" in proc.stderr
    proc = run_cli(
        data, "--pred-field", "p", "--gold-field", "g", "--out", tmp_path / "no" / "dir" / "r.jsonl"
    )
    assert proc.returncode == 2
    assert "no such directory" in proc.stderr


@pytest.mark.slow
def test_verdicts_do_not_depend_on_machine_load():
    """Slow but valid answers (big-integer work inside one C call) against a CPU-time limit: the same
    verdicts on an idle machine and beside two CPU-burning processes, where each answer's wall time grows
    (a wall-clock limit of 2.5 s flipped such items between runs). The limit is 4 s of CPU: the slowest
    valid item takes about 1.5 s of CPU on a quiet core and up to 2.5 s where cores are shared with CI's
    other worker (a 2.5 s CPU limit failed there once), while its wall time under load passes 4 s."""
    items = [
        (respond("3^{3000000} - 3^{3000000} + 7"), "7"),  # ~0.7 s of CPU
        (respond("3^{6000000} - 3^{6000000} + 7"), "7"),  # ~1.5 s
        (respond("\\frac{3}{6}"), "0.5"),
        (respond("9^{9^{9^{9}}}"), "1"),  # far over: a timeout either way
    ]
    expected = [(True, "ok"), (True, "ok"), (True, "ok"), (False, "timeout")]
    with Grader(workers=2, timeout_s=4.0) as idle_grader:  # fresh workers per pass: sympy caches powers
        idle = idle_grader.grade(items)
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        with Grader(workers=2, timeout_s=4.0) as busy_grader:
            busy = busy_grader.grade(items)
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    print("wall s idle:", [round(r.seconds, 2) for r in idle], "busy:", [round(r.seconds, 2) for r in busy])
    assert [(r.correct, r.status) for r in idle] == expected
    assert [(r.correct, r.status) for r in busy] == expected
