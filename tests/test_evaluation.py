"""Per-problem eval results (``arca_sweep.eval``): the file's records agree with the returned
metrics, ids are stable, answers bounded, and the write is atomic."""

from __future__ import annotations

import json

import pytest
import torch

from arca_sweep.arm_dir import atomic_write, results_path
from arca_sweep.eval import MAX_ANSWER_CHARS, evaluate, read_results
from arca_sweep.rollout import RolloutBatch
from arca_sweep.tasks import Problem
from arca_sweep.tasks.arith import ArithTask


class ScriptedEngine:
    """Returns fixed responses (one per prompt) of fixed token lengths, greedy only."""

    def __init__(self, texts: list[str], lengths: list[int]):
        self.texts, self.lengths = texts, lengths

    def generate(self, prompts, num_samples, max_new_tokens, greedy=False):
        assert num_samples == 1 and greedy and len(prompts) == len(self.texts)
        width = max(self.lengths)
        mask = torch.tensor([[j < n for j in range(width)] for n in self.lengths])
        return RolloutBatch(
            prompt_ids=torch.zeros(len(prompts), 1, dtype=torch.long),
            prompt_mask=torch.ones(len(prompts), 1, dtype=torch.bool),
            response_ids=torch.zeros(len(prompts), width, dtype=torch.long),
            response_mask=mask,
            finish_reasons=["stop" if n < width else "length" for n in self.lengths],
            texts=self.texts,
        )


class TemplateTokenizer:
    def apply_chat_template(self, messages, tokenize, add_generation_prompt, enable_thinking):
        return messages[0]["content"]

    def __call__(self, text, add_special_tokens):
        return {"input_ids": [ord(c) for c in text[:8]]}


def test_results_file_matches_metrics(tmp_path):
    task = ArithTask()
    problems = task.eval_problems(4)
    long_box = "\\boxed{" + "9" * 1000 + "}"
    texts = [f"\\boxed{{{problems[0].answer}}}", "no box", long_box, f"x \\boxed{{{problems[3].answer}}}"]
    engine = ScriptedEngine(texts, [5, 7, 40, 3])
    out = results_path(tmp_path / "arm", 20)
    metrics = evaluate(engine, TemplateTokenizer(), task, problems, 40, output_path=out)
    assert out == tmp_path / "arm" / "eval" / "step_20.jsonl"
    assert metrics == {"eval/accuracy": 0.5, "eval/reward": 0.5, "eval/length": (5 + 7 + 40 + 3) / 4}
    rows = read_results(out)
    assert [r["correct"] for r in rows] == [1, 0, 0, 1]
    assert [r["id"] for r in rows] == [p.index for p in problems]
    assert [r["position"] for r in rows] == [0, 1, 2, 3]
    assert [r["response_tokens"] for r in rows] == [5, 7, 40, 3]
    assert [r["finish"] for r in rows] == ["stop", "stop", "length", "stop"]
    assert rows[0]["answer"] == problems[0].answer == rows[0]["gold"] and rows[1]["answer"] is None
    assert len(rows[2]["answer"]) == MAX_ANSWER_CHARS
    assert sum(r["correct"] for r in rows) / len(rows) == metrics["eval/accuracy"]
    assert list(out.parent.iterdir()) == [out], "no temporary file left behind"


def test_breakdown_and_row_ids(tmp_path):
    problems = [
        Problem(0, "q0", "1", {"level": 1, "subject": "Algebra", "unique_id": "test/algebra/1.json"}),
        Problem(1, "q1", "2", {"level": 1, "subject": "Geometry", "unique_id": "test/geometry/2.json"}),
        Problem(2, "q2", "3", {"level": None, "subject": "Algebra"}),
    ]
    task = ArithTask()
    engine = ScriptedEngine(["\\boxed{1}", "\\boxed{5}", "\\boxed{3}"], [2, 2, 2])
    out = tmp_path / "r.jsonl"
    metrics = evaluate(engine, TemplateTokenizer(), task, problems, 8, output_path=out)
    assert metrics["eval/accuracy/level/1"] == 0.5 and metrics["eval/accuracy/subject/Algebra"] == 1.0
    rows = read_results(out)
    assert [r["id"] for r in rows] == ["test/algebra/1.json", "test/geometry/2.json", 2]
    assert rows[0]["level"] == 1 and rows[0]["subject"] == "Algebra"
    assert "level" not in rows[2] and rows[2]["subject"] == "Algebra"
    # without an output path nothing is written, the metrics are the same
    assert evaluate(engine, TemplateTokenizer(), task, problems, 8) == metrics


def test_atomic_write_keeps_old_content_on_failure(tmp_path):
    path = tmp_path / "eval" / "step_0.jsonl"
    atomic_write(path, json.dumps({"id": 0, "correct": 1}) + "\n")
    with pytest.raises(UnicodeEncodeError):  # fails mid-write: the temporary file exists by then
        atomic_write(path, json.dumps({"id": 0}) + "\n" + "\ud800")
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"id": 0, "correct": 1}]
    assert list(path.parent.iterdir()) == [path]


def partial_credit(text, answer):
    """1 for the right boxed answer, 0.4 for a wrong one in a box (format credit), 0 without a box."""
    if "\\boxed{" not in text:
        return 0.0
    return 1.0 if f"\\boxed{{{answer}}}" in text else 0.4


@pytest.mark.parametrize("judge", ["threshold", "attribute"])
def test_accuracy_counts_correct_answers_not_rewards(tmp_path, judge):
    """Issue 20: a reward giving 0.4 for a well-formatted wrong answer made eval/accuracy 0.775 while the
    file held 10/16 correct. Now accuracy is the share of correct answers and the mean reward apart."""
    from arca_sweep.tasks.jsonl import JsonlTask

    reward = partial_credit
    if judge == "attribute":

        def reward(text, answer):
            return partial_credit(text, answer) * 5 - 5  # -5 .. 0: no threshold would do

        reward.correct = lambda text, answer: f"\\boxed{{{answer}}}" in text
    problems = [Problem(i, f"q{i}", str(i)) for i in range(16)]
    texts = [f"\\boxed{{{i}}}" for i in range(10)] + ["\\boxed{x}"] * 5 + ["none"]
    task = JsonlTask(problems, problems, reward)
    out = tmp_path / "step_2.jsonl"
    metrics = evaluate(
        ScriptedEngine(texts, [3] * 16), TemplateTokenizer(), task, problems, 8, output_path=out
    )
    rows = read_results(out)
    assert sum(r["correct"] for r in rows) == 10
    assert metrics["eval/accuracy"] == 10 / 16
    want_reward = (10 * 1.0 + 5 * 0.4) / 16 if judge == "threshold" else (10 * 0 + 5 * -3 + -5) / 16
    assert metrics["eval/reward"] == pytest.approx(want_reward)
    assert [r["reward"] for r in rows][9:11] == ([1.0, 0.4] if judge == "threshold" else [0.0, -3.0])


def test_a_full_disk_during_the_eval_write_names_the_file(tmp_path):
    from arca_sweep.arm_dir import ArmStateError
    from tests.helpers import tmpfs

    with tmpfs(tmp_path / "disk", "size=64k") as disk:
        (disk / "filler").write_bytes(b"\0" * 60_000)
        task = ArithTask()
        problems = task.eval_problems(64)
        engine = ScriptedEngine(["\\boxed{1} " + "x" * 300] * 64, [3] * 64)
        out = disk / "arm" / "eval" / "step_0.jsonl"
        with pytest.raises(ArmStateError, match="no space left on device while writing .*step_0.jsonl"):
            evaluate(engine, TemplateTokenizer(), task, problems, 8, output_path=out)
        assert not out.exists() and not list(out.parent.glob("*.tmp"))
