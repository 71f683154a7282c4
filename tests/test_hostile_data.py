"""Untrusted data files: a Latin-1 file, a 200k-deep JSON row and a 10 MB prompt give a message naming the
file and line, or a counted skip; never a traceback, never a huge allocation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from arca_sweep.errors import DataError
from arca_sweep.grade.__main__ import load_pairs
from arca_sweep.tasks.math import MathTask, load_rows
from arca_sweep.train import prompt_fitter
from tests.helpers import cli, cli_env

DEEP = "[" * 200_000 + "]" * 200_000
ROW = {"problem": "What is $1+1$?", "solution": "$\\boxed{2}$", "p": "\\boxed{2}", "g": "2"}


def latin1_file(path: Path) -> Path:
    path.write_bytes(
        (json.dumps(ROW) + "\n").encode()
        + json.dumps({**ROW, "problem": "Café?"}, ensure_ascii=False).encode("latin-1")
    )
    return path


def deep_file(path: Path) -> Path:
    path.write_text(json.dumps(ROW) + "\n\n" + DEEP + "\n")
    return path


def test_loader_names_the_file_and_line(tmp_path):
    with pytest.raises(DataError, match=r"rows\.jsonl:2: not UTF-8 text \(byte 0xe9.*iconv -f latin1"):
        load_rows(path=str(latin1_file(tmp_path / "rows.jsonl")))
    with pytest.raises(DataError, match=r"deep\.jsonl:3: JSON nested too deeply"):
        load_rows(path=str(deep_file(tmp_path / "deep.jsonl")))
    (tmp_path / "deep.json").write_text(DEEP)  # one JSON array file
    with pytest.raises(DataError, match=r"deep\.json:1: JSON nested too deeply"):
        load_rows(path=str(tmp_path / "deep.json"))
    with pytest.raises(DataError, match=r"rows\.jsonl:2: not UTF-8"):
        load_pairs(latin1_file(tmp_path / "rows.jsonl"), "p", "g")
    with pytest.raises(DataError, match=r"deep\.jsonl:3: JSON nested too deeply"):
        load_pairs(deep_file(tmp_path / "deep.jsonl"), "p", "g")


@pytest.mark.parametrize("make", [latin1_file, deep_file], ids=["latin1", "deep"])
def test_grade_cli_reports_bad_files_without_traceback(tmp_path, make):
    path = make(tmp_path / "in.jsonl")
    proc = cli(
        path,
        "--pred-field",
        "p",
        "--gold-field",
        "g",
        module="arca_sweep.grade",
        quiet=False,
        check=False,
        timeout=120,
        env=cli_env(),
    )
    line = 2 if make is latin1_file else 3
    assert proc.returncode == 2 and f"in.jsonl:{line}: " in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_long_prompts_are_skipped_and_counted_cheaply(tiny_tokenizer):
    fits = prompt_fitter(tiny_tokenizer, 100)  # a short question's prompt is 65 tokens
    rows = [
        ROW,
        {**ROW, "problem": "x" * 10_000_000},  # 10 MB
        {**ROW, "problem": " ".join(["seven"] * 12)},  # a little over 100 tokens
        {**ROW, "problem": "What is $2+2$?", "solution": "$\\boxed{4}$"},
    ]
    seen = []  # every text the tokenizer is given: the 10 MB row is rejected by length, never tokenized
    templated = tiny_tokenizer.apply_chat_template
    tiny_tokenizer.apply_chat_template = lambda messages, **kw: (
        seen.append(messages[0]["content"]) or templated(messages, **kw)
    )
    try:
        task = MathTask(rows, rows, prompt_fits=fits)
    finally:
        del tiny_tokenizer.apply_chat_template
    assert seen and max(map(len, seen)) < 1000
    assert [task.train_problem(i).answer for i in range(2)] == ["2", "4"]
    assert task.stats["data/train_skipped_too_long"] == 2 and task.stats["data/eval_skipped_too_long"] == 2
    assert task.stats["data/train_rows"] == 2
    assert prompt_fitter(tiny_tokenizer, None) is None


@pytest.mark.slow
def test_run_with_a_10mb_row_and_a_latin1_file(tmp_path):
    """Through the CLI: a 10 MB row (first in the eval file, so the step-0 eval would meet it) is skipped and
    counted, and memory stays small; a Latin-1 training file stops before any model loads."""
    rows = [json.dumps({"problem": f"What is ${k}+{k}$?", "answer": str(2 * k)}) for k in range(1, 6)]
    huge = json.dumps({"problem": "Compute " + "1+" * 5_000_000 + "1.", "answer": "5000001"})
    (tmp_path / "train.jsonl").write_text("\n".join([huge, *rows]) + "\n")
    (tmp_path / "eval.jsonl").write_text("\n".join([huge, *rows]) + "\n")
    assert (tmp_path / "train.jsonl").stat().st_size > 10_000_000
    common = [
        "data=math",
        "budget=smoke",
        "budget.steps=1",
        "budget.eval_size=4",
        "threads=1",
        "logger.progress=false",
    ]
    arm = tmp_path / "arm"
    with (tmp_path / "run.err").open("w") as err:
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "arca_sweep",
                *common,
                f"data.path={tmp_path / 'train.jsonl'}",
                f"data.eval_path={tmp_path / 'eval.jsonl'}",
                f"hydra.run.dir={arm}",
            ],
            cwd=tmp_path,
            env=cli_env(),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak memory, not the session's
    child.returncode = os.waitstatus_to_exitcode(status)
    assert child.returncode == 0, (tmp_path / "run.err").read_text()[-3000:]
    last = json.loads((arm / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["data/train_skipped_too_long"] == 1 and last["data/eval_skipped_too_long"] == 1
    assert last["data/train_rows"] == 5
    peak_gib = usage.ru_maxrss / 2**20
    print(f"peak RSS of the run: {peak_gib:.2f} GiB")
    assert peak_gib < 3.0, f"peak RSS {peak_gib:.1f} GiB"

    latin1_file(tmp_path / "latin1.jsonl")
    proc = cli(
        *common,
        f"data.path={tmp_path / 'latin1.jsonl'}",
        f"data.eval_path={tmp_path / 'eval.jsonl'}",
        f"hydra.run.dir={tmp_path / 'arm2'}",
        cwd=tmp_path,
        quiet=False,
        check=False,
        env=cli_env(),
    )
    assert proc.returncode == 2 and "latin1.jsonl:2: not UTF-8 text" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Loading weights" not in proc.stderr
