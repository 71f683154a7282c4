"""Grade a JSONL file of responses against gold answers; print one JSON summary on stdout.

    python -m arca_sweep.grade samples.jsonl --pred-field response --gold-field answer \\
        [--timeout-s 5] [--workers 2] [--out results.jsonl]

The gold field holds a bare answer, or a solution whose last ``\\boxed{}``/``\\fbox{}`` is the answer.
The whole file is checked before any grading starts; bad input exits with code 2 and says what and where.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from arca_sweep.errors import DataError, json_value, utf8_text
from arca_sweep.grade import Grader, extract_boxed


class InputError(Exception):
    """Bad input file: the message names the problem and the line."""


def positive(kind):
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m arca_sweep.grade", description=__doc__.split("\n")[0])
    parser.add_argument("file", type=Path, help="JSONL, one JSON object a line (blank lines are skipped)")
    parser.add_argument("--pred-field", required=True, help="field with the model's response text")
    parser.add_argument("--gold-field", required=True, help="field with the gold answer or a boxed solution")
    parser.add_argument(
        "--timeout-s",
        type=positive(float),
        default=5.0,
        help="CPU-time limit per item (its worker's own; a wall-clock backstop is 10x that)",
    )
    parser.add_argument("--workers", type=positive(int), default=2, help="grading worker processes")
    parser.add_argument("--out", type=Path, help="write one JSON line per item: index, line, correct, status")
    return parser.parse_args(argv)


def load_pairs(path: Path, pred_field: str, gold_field: str) -> tuple[list[tuple[str, str]], list[int]]:
    """The (pred, gold answer) pairs of the file and their 1-based line numbers; InputError on bad input."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    pairs, line_numbers = [], []
    lines = utf8_text(path.read_bytes(), path).split("\n")  # DataError names the line of a bad byte
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_number}"
        row = json_value(line, where)  # DataError for bad or too deeply nested JSON
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
        for field in (pred_field, gold_field):
            if field not in row:
                raise InputError(f"{where}: missing field {field!r}")
            if not isinstance(row[field], str):
                raise InputError(
                    f"{where}: field {field!r} must be a string, got {type(row[field]).__name__}"
                )
        gold = row[gold_field]
        if "\\boxed" in gold or "\\fbox" in gold:
            gold = extract_boxed(gold)
            if gold is None:
                raise InputError(f"{where}: field {gold_field!r} has a \\boxed/\\fbox that is not closed")
        if not gold.strip():
            raise InputError(f"{where}: field {gold_field!r} is empty")
        pairs.append((row[pred_field], gold))
        line_numbers.append(line_number)
    if not pairs:
        raise InputError(f"{path}: no records")
    return pairs, line_numbers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        pairs, line_numbers = load_pairs(args.file, args.pred_field, args.gold_field)
        if args.out is not None and not args.out.parent.is_dir():
            raise InputError(f"--out {args.out}: no such directory {args.out.parent}")
    except (InputError, DataError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    start = time.monotonic()
    with Grader(workers=args.workers, timeout_s=args.timeout_s) as grader:
        results = grader.grade(pairs, progress=sys.stderr.isatty())
        timeouts, errors = grader.timeouts, grader.errors
    seconds = time.monotonic() - start
    if args.out is not None:
        with args.out.open("w", encoding="utf-8") as out:
            for index, (line_number, result) in enumerate(zip(line_numbers, results, strict=True)):
                record = {
                    "index": index,
                    "line": line_number,
                    "correct": result.correct,
                    "status": result.status,
                }
                out.write(json.dumps(record) + "\n")
    correct = sum(result.correct for result in results)
    summary = {
        "n": len(results),
        "correct": correct,
        "accuracy": correct / len(results),
        "timeouts": timeouts,
        "errors": errors,
        "seconds": round(seconds, 3),
        "items_per_s": round(len(results) / seconds, 1),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
