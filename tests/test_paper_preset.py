"""experiment=paper and the Qwen3 presets, without a download: the same architecture built from
config (Qwen3-1.7B's width and vocabulary, 2 layers), random weights, saved as a local checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from arca_sweep.config import validate
from arca_sweep.learner import Learner, LearnerSettings
from arca_sweep.model import load_policy
from arca_sweep.testing import make_batch, make_config, random_qwen3
from tests.helpers import cli, records


def test_paper_preset_composes_with_the_papers_settings():
    cfg = make_config("experiment=paper")
    validate(cfg)
    assert cfg.model.hub_id == "Qwen/Qwen3-1.7B" and cfg.data.name == "math500"
    assert cfg.data.eval_hub_id == "HuggingFaceH4/MATH-500"
    assert cfg.budget.group_size == 8 and cfg.loss.beta == 0.0 and cfg.rollout.temperature == 1.0
    assert cfg.rank.alpha == 2 * cfg.rank.r == 16
    for r in (8, 16):
        assert make_config("experiment=paper", f"rank={r}").rank.alpha == 2 * r


@pytest.mark.slow
@pytest.mark.parametrize("model", ["qwen3_1_7b", "qwen3_0_6b"])
def test_qwen3_presets_instantiate_and_score_full_vocabulary(tmp_path, model, tiny_tokenizer):
    """LoRA on all seven linear projections of every layer, and a learner step over the 151,936-token
    vocabulary in chunks, on the preset's architecture."""
    cfg = make_config(
        f"model={model}",
        f"model.path={random_qwen3(tmp_path / model, model)}",
        "rank=16",
        "learner.chunk_size=256",
    )
    validate(cfg)
    policy = load_policy(cfg.model, cfg.rank, torch.device("cpu"), seed=0)
    lora = [n for n, _ in policy.named_parameters() if "lora_A" in n]
    assert len(lora) == 2 * 7
    assert all(p.shape[0] == 16 for n, p in policy.named_parameters() if "lora_A" in n)
    assert policy.get_base_model().lm_head.weight.shape[0] == 151_936
    batch = make_batch(
        tiny_tokenizer, ["<|im_start|>user\nCompute 1 + 2.<|im_end|>\n"], ["1 + 2 = 3\n\\boxed{3}"]
    )
    result = Learner(policy, LearnerSettings.from_config(cfg), temperature=1.0).step(
        batch, torch.tensor([1.0])
    )
    assert torch.isfinite(result.logp[batch.response_mask]).all() and result.grad_norm > 0


@pytest.mark.slow
def test_math_run_on_the_tiny_model_with_local_files(tmp_path):
    """data=math end to end offline: local fixture files, the real grader, a completed run."""
    train = [
        {
            "problem": f"What is {a} + {a}?",
            "solution": f"It is $\\boxed{{{2 * a}}}$.",
            "level": "Level 1",
            "type": "Prealgebra",
        }
        for a in range(12)
    ]
    train.append({"problem": "No answer here.", "solution": "None.", "level": "Level 2", "type": "Algebra"})
    evals = [
        {
            "problem": "What is 2 + 2?",
            "answer": "4",
            "solution": "\\boxed{4}",
            "subject": "Prealgebra",
            "level": 1,
        },
        {
            "problem": "What is 3 + 3?",
            "answer": "6",
            "solution": "\\boxed{6}",
            "subject": "Algebra",
            "level": 2,
        },
    ]
    for name, rows in (("train.jsonl", train), ("eval.jsonl", evals)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    arm = tmp_path / "arm"
    cli(
        "data=math",
        f"data.path={tmp_path / 'train.jsonl'}",
        f"data.eval_path={tmp_path / 'eval.jsonl'}",
        "budget=smoke",
        "budget.eval_size=2",
        "data.grader_workers=1",
        f"hydra.run.dir={arm}",
        cwd=tmp_path,
    )
    rows = records(arm)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert rows[-1]["data/train_skipped_no_answer"] == 1 and rows[-1]["data/train_rows"] == 12
    assert all(0.0 <= r["reward/mean"] <= 1.0 for r in rows[1:])
    summary = json.loads((arm / "summary.json").read_text())
    assert set(summary["eval/final_breakdown"]) == {
        "eval/accuracy/level/1",
        "eval/accuracy/level/2",
        "eval/accuracy/subject/Algebra",
        "eval/accuracy/subject/Prealgebra",
    }
