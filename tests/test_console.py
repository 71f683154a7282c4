"""An arm's console output (arca_sweep/progress.py): progress lines at their cadence, the closing and
skip lines, library noise demoted; and a demo sweep's log written to a file, through the CLI."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys

import pytest

from arca_sweep.progress import VLLM_EXPECTED, Progress, _ExpectedVllmWarnings, closing_line, skip_line


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "arca_sweep.train"]


def metrics(step: int, acc: float | None = None) -> dict:
    m = {"step": step, "reward/mean": 0.5, "credit/gini/mean": 0.25}
    return m if acc is None else {**m, "eval/accuracy": acc}


def test_progress_lines_every_n_steps_and_the_last(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    clock = Clock()
    arm = tmp_path / "credit=arca"
    arm.mkdir()
    (arm / "metrics.jsonl").write_text('{"step": 0, "eval/accuracy": 0.635}\n')  # a fresh run's initial eval
    p = Progress(arm, 0, 25, live=False, every=10, every_s=0, clock=clock)
    for step in range(1, 26):
        clock.now += 2.0
        p.update(step, metrics(step, 0.7 if step == 20 else None))
    out = lines(caplog)
    assert out[0] == "arm credit=arca: steps 1..25"
    assert [int(re.search(r"^step (\d+)/25", s)[1]) for s in out[1:]] == [10, 20, 25]
    assert out[1] == "step 10/25: reward 0.500, gini 0.250, eval acc 0.635 (step 0) | 2.00 s/step, 30 s left"
    assert "eval acc 0.700 |" in out[2] and "eval acc 0.700 (step 20)" in out[3] and "0 s left" in out[3]


def test_progress_lines_at_least_every_m_seconds(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    clock = Clock()
    p = Progress(tmp_path / "arm", 4, 100, live=False, every=0, every_s=60, clock=clock)
    for step in range(5, 101):
        clock.now += 25.0  # a line every third step (75 s >= 60 s), and the last
        p.update(step, metrics(step))
    steps = [int(re.search(r"^step (\d+)/100", s)[1]) for s in lines(caplog)[1:]]
    assert steps == list(range(7, 101, 3)) and steps[-1] == 100
    assert "eval acc -" in lines(caplog)[1]


def test_closing_and_skip_lines(tmp_path):
    summary = {
        "steps": 60,
        "wall_s": 73.4,
        "eval/accuracy_initial": 0.635,
        "eval/accuracy_final": 0.74,
        "run_means": {"reward/mean": 0.61, "credit/gini/mean": 0.292, "credit/etr/mean": 0.706},
    }
    arm = tmp_path / "credit=arca"
    assert closing_line(arm, summary) == (
        "arm credit=arca finished: 60 steps in 1:13 min; eval acc 0.635 -> 0.740, reward 0.610, "
        f"gini 0.292, etr 0.706; results in {arm}"
    )
    assert skip_line(arm, summary) == (
        f"arm already finished, skipping: {arm} (eval acc 0.635 -> 0.740; summary.json)"
    )
    assert "\n" not in skip_line(arm, summary)


@pytest.mark.parametrize("text", VLLM_EXPECTED)
def test_expected_vllm_warnings_are_info(text):
    vllm_logger = logging.getLogger("vllm")
    before = vllm_logger.level
    try:
        f = _ExpectedVllmWarnings()
        record = logging.LogRecord("vllm.worker", logging.WARNING, __file__, 1, f"x {text} y", None, None)
        vllm_logger.setLevel(logging.WARNING)
        assert not f.filter(record) and record.levelname == "INFO"
        vllm_logger.setLevel(logging.INFO)
        assert f.filter(record)
        other = logging.LogRecord("vllm.worker", logging.WARNING, __file__, 1, "out of memory", None, None)
        mine = logging.LogRecord("arca_sweep.x", logging.WARNING, __file__, 1, f"{text}", None, None)
        vllm_logger.setLevel(logging.WARNING)
        assert f.filter(other) and other.levelname == "WARNING"
        formatted = logging.LogRecord("vllm.x", logging.WARNING, __file__, 1, "%s", (f"a {text} b",), None)
        assert not f.filter(formatted) and formatted.levelname == "INFO"  # matched after formatting
        assert f.filter(mine) and mine.levelname == "WARNING"
    finally:
        vllm_logger.setLevel(before)


SHORT_DEMO = """# @package _global_
# experiment=demo with fewer, smaller steps; as many progress lines per arm as the demo (every 2 of 12 steps)
defaults:
  - demo
  - _self_
budget: {steps: 12, eval_every: 4, eval_size: 32, prompts_per_step: 4, group_size: 4}
logger: {progress_every: 2}
"""


@pytest.mark.slow
def test_demo_log_in_a_file_is_short_and_says_where_each_arm_is(tmp_path):
    """The demo's five arms, shortened to small steps (a user experiment config, so the arms keep the
    demo's short names) with the demo's six progress lines per arm, stdout and stderr into a file:
    under 10 KB, one line per progress interval per arm, each arm's closing line with its dir, no bar
    refreshes, no library noise; relaunched, each finished arm says so in one line."""
    (tmp_path / "mine" / "experiment").mkdir(parents=True)
    (tmp_path / "mine" / "experiment" / "short_demo.yaml").write_text(SHORT_DEMO)
    sweep, log_path = tmp_path / "sweep", tmp_path / "demo.log"
    cmd = [
        sys.executable,
        "-m",
        "arca_sweep",
        "experiment=short_demo",
        f"hydra.searchpath=[file://{tmp_path / 'mine'}]",
        "threads=1",
        "-m",
        f"hydra.sweep.dir={sweep}",
    ]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    with log_path.open("w") as f:
        subprocess.run(
            cmd, cwd=tmp_path, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=600, check=True
        )
    text = log_path.read_text()
    arms = sorted(p for p in sweep.iterdir() if (p / "summary.json").is_file())
    assert [a.name for a in arms] == [
        f"credit={c},experiment=short_demo"
        for c in sorted(["uniform", "surprisal", "entropy", "divergence", "arca"])
    ]
    assert len(text.encode()) < 10_000 and "\r" not in text, text
    for noise in ("Loading weights", "WARNING", "it/s]", "Warning"):
        assert noise not in text, (noise, text)
    for arm in arms:
        own = text.split(f"arm {arm.name}: steps 1..12\n")[1].split("[HYDRA]")[0]  # up to the next arm
        progress = re.findall(r"\] - step (\d+)/12: reward [\d.]+, gini [\d.]+, eval acc [\d.]+", own)
        assert progress == ["2", "4", "6", "8", "10", "12"], (arm.name, own)
        closing = [s for s in own.splitlines() if f"arm {arm.name} finished: 12 steps" in s]
        assert len(closing) == 1 and closing[0].endswith(f"results in {arm}"), own

    with log_path.open("w") as f:
        subprocess.run(
            cmd, cwd=tmp_path, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=600, check=True
        )
    again = log_path.read_text()
    skipped = [s for s in again.splitlines() if "arm already finished, skipping" in s]
    assert sorted(s.split("skipping: ")[1].split(" (")[0] for s in skipped) == [str(a) for a in arms]
    assert not any(s.strip() in ("{", "}") for s in again.splitlines()), again
