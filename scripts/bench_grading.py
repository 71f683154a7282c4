"""Grade MATH-500's reference solutions, then a shifted pairing, and print accuracy and items/s.

    python scripts/bench_grading.py [--path ../shared/data/math/math500_test.jsonl] [--workers 2]

1. reference: solution i against answer i. Every one should be correct.
2. shifted: solution i against answer i+1 (wrapping). Each should be wrong, except where the two
   answers are themselves equal (as strings, or by the grader: ``\\boxed{answer i}`` against answer i+1).
Exits 1 when either expectation fails, 0 otherwise, and 0 with a message when the file is absent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from arca_sweep.grade import Grader, GradeResult

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PATH = REPO_ROOT.parent / "shared" / "data" / "math" / "math500_test.jsonl"


def timed_grade(grader: Grader, name: str, pairs: list[tuple[str, str]]) -> list[GradeResult]:
    start = time.monotonic()
    results = grader.grade(pairs)
    seconds = time.monotonic() - start
    correct = sum(result.correct for result in results)
    statuses = {status: sum(r.status == status for r in results) for status in ("timeout", "error")}
    print(
        f"{name:>9}: n={len(results)} correct={correct} timeouts={statuses['timeout']} "
        f"errors={statuses['error']} seconds={seconds:.2f} items/s={len(results) / seconds:.1f}"
    )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--path", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout-s", type=float, default=5.0)
    args = parser.parse_args()
    if not args.path.is_file():
        print(f"skipped: {args.path} not found")
        return 0
    rows = [json.loads(line) for line in args.path.read_text(encoding="utf-8").splitlines() if line.strip()]
    answers = [row["answer"] for row in rows]
    following = answers[1:] + answers[:1]

    with Grader(workers=args.workers, timeout_s=args.timeout_s) as grader:
        reference = timed_grade(grader, "reference", [(row["solution"], row["answer"]) for row in rows])
        shifted = timed_grade(
            grader, "shifted", [(row["solution"], gold) for row, gold in zip(rows, following, strict=True)]
        )
        same = timed_grade(
            grader, "answers", [(f"\\boxed{{{a}}}", b) for a, b in zip(answers, following, strict=True)]
        )

    failed_reference = [i for i, result in enumerate(reference) if not result.correct]
    equal_answers = {i for i, result in enumerate(same) if result.correct or answers[i] == following[i]}
    unexpected = [i for i, result in enumerate(shifted) if result.correct != (i in equal_answers)]
    print(f"reference wrong: {len(failed_reference)}")
    print(f"shifted: equal answers {len(equal_answers)}, unexpected {len(unexpected)}")
    for i in failed_reference:
        print(f"  reference {rows[i].get('unique_id', i)}: answer {answers[i]!r}")
    for i in sorted(equal_answers):
        print(f"  equal answers {i}: {answers[i]!r} ~ {following[i]!r}, shifted graded {shifted[i].correct}")
    for i in unexpected:
        print(f"  unexpected {i}: {answers[i]!r} vs {following[i]!r}, shifted graded {shifted[i].correct}")
    return 1 if failed_reference or unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
