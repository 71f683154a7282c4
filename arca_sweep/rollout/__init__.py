"""Rollout engines: sample G responses per prompt and report what the sampler saw.

An engine turns templated prompt token ids into a :class:`RolloutBatch`. The learner never asks
how: ``rollout=hf`` uses transformers ``generate`` on the live peft model; ``rollout=vllm`` an
in-process vLLM engine that receives the new weights through :meth:`sync`; ``rollout=auto`` picks
the engine expected to finish the run's rollouts first (:func:`resolve_engine_name`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Protocol

import torch

log = logging.getLogger(__name__)

# rollout.guard_max_logp_diff when null, by the engine's dtype. Measured on the tiny model (BENCHMARKS.md):
# float32 engines agree with the learner to ~1e-5 in max |diff| per step; half precision rounds each
# token's log-prob by up to ~0.1, and a token in the tail of the distribution by more.
GUARD_DEFAULTS = {"float64": 1e-2, "float32": 1e-2, "bfloat16": 2.0, "float16": 1.0}


class EngineWeightsMismatch(RuntimeError):
    """The rollout engine sampled from other weights than the learner scored with."""


@dataclass
class RolloutBatch:
    """``B`` = prompts * samples; prompt-major (rows ``i*G .. i*G+G-1`` share prompt ``i``)."""

    prompt_ids: torch.Tensor  # [B, P] left-padded
    prompt_mask: torch.Tensor  # [B, P] bool
    response_ids: torch.Tensor  # [B, R] right-padded
    response_mask: torch.Tensor  # [B, R] bool: response tokens through the first EOS
    finish_reasons: list[str]  # "stop" (EOS sampled) or "length"
    texts: list[str]  # decoded responses, special tokens skipped
    sampling_logprobs: torch.Tensor | None = None  # [B, R] the sampler's log-probs (after temperature/top_p)


def _pad_to(x: torch.Tensor, width: int, value, left: bool) -> torch.Tensor:
    pad = x.new_full((x.shape[0], width - x.shape[1]), value)
    return torch.cat([pad, x] if left else [x, pad], 1)


def concat_batches(parts: list[RolloutBatch], pad_id: int) -> RolloutBatch:
    """The rows of ``parts`` in order, prompts left-padded and responses right-padded to the widest."""
    if len(parts) == 1:
        return parts[0]
    p = max(b.prompt_ids.shape[1] for b in parts)
    r = max(b.response_ids.shape[1] for b in parts)
    logprobs = None
    if all(b.sampling_logprobs is not None for b in parts):
        logprobs = torch.cat([_pad_to(b.sampling_logprobs, r, 0.0, False) for b in parts])
    return RolloutBatch(
        prompt_ids=torch.cat([_pad_to(b.prompt_ids, p, pad_id, True) for b in parts]),
        prompt_mask=torch.cat([_pad_to(b.prompt_mask, p, False, True) for b in parts]),
        response_ids=torch.cat([_pad_to(b.response_ids, r, pad_id, False) for b in parts]),
        response_mask=torch.cat([_pad_to(b.response_mask, r, False, False) for b in parts]),
        finish_reasons=[x for b in parts for x in b.finish_reasons],
        texts=[x for b in parts for x in b.texts],
        sampling_logprobs=logprobs,
    )


def take_rows(batch: RolloutBatch, rows: list[int]) -> RolloutBatch:
    """The batch of ``rows`` (in that order)."""
    index = torch.tensor(rows, dtype=torch.long)
    pick = lambda x: None if x is None else x[index.to(x.device)]  # noqa: E731
    return RolloutBatch(
        prompt_ids=pick(batch.prompt_ids),
        prompt_mask=pick(batch.prompt_mask),
        response_ids=pick(batch.response_ids),
        response_mask=pick(batch.response_mask),
        finish_reasons=[batch.finish_reasons[i] for i in rows],
        texts=[batch.texts[i] for i in rows],
        sampling_logprobs=pick(batch.sampling_logprobs),
    )


class RolloutEngine(Protocol):
    def generate(
        self,
        prompts: list[list[int]],
        num_samples: int,
        max_new_tokens: int,
        greedy: bool = False,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        positions: list[int] | None = None,
    ) -> RolloutBatch:
        """``num_samples`` responses per prompt; ``temperature``/``top_p`` override ``rollout``'s for this
        call. A sampled call's draws are keyed by ``seed`` (None: one draw from the project's RNG,
        :func:`call_seed`) and by each row's place: ``positions[i]`` is prompt i's position in the whole call
        (None: ``range(len(prompts))``; a rank of a data-parallel arm generates a share of the prompts), so a
        row's sample does not depend on which rows share its batch or its process."""

    def sync(self, model) -> None:
        """Make the engine sample from ``model``'s current weights (after each learner update)."""


SEED_RANGE = 2**31 - 1  # vLLM's per-request seeds are 32-bit


def call_seed(seed: int | None, greedy: bool) -> int | None:
    """The seed of one ``generate`` call: the caller's (an eval's samples: the training RNG is left alone),
    one draw from the project's RNG stream for a training rollout, None for argmax decoding."""
    if greedy:
        return None
    if seed is not None:
        return seed
    return int(torch.randint(0, SEED_RANGE, ()))


def row_seed(seed: int, position: int, sample: int) -> int:
    """The seed of sample ``sample`` of the prompt at ``position`` in a call seeded ``seed`` (63 bits)."""
    import hashlib

    digest = hashlib.blake2b(f"{seed}:{position}:{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


# CPU generation measured on a quiet 2-core machine, float32, rank-8 adapter, 2026-12-01, HF with
# oneDNN matmuls and the inverse-CDF sampler (scripts/bench_rollout.py, BENCHMARKS.md "rollout=auto"):
# (parameters of the model, HF tokens/s, vLLM merged-sync tokens/s, vLLM start-up s, vLLM sync s per
# step). Merged is vLLM's faster mode on CPU (adapter sync: 0.55-0.94x HF).
CPU_MEASURED = {
    "tiny": (0.8e6, 9689.6, 15608.8, 10.0, 0.016),
    "qwen3-1.7b-width-2-layers": (0.41e9, 160.1, 252.2, 18.0, 1.816),
}
# vLLM must win by this factor: the measured speed-ups moved by 2-3x between runs on a loaded machine.
AUTO_MARGIN = 1.25


def run_tokens(budget, eval_tokens: int | None = None) -> int:
    """Tokens a run generates at most: training rollouts plus its evals (step 0, every eval_every, last), each
    ``eval_tokens`` (every set's problems x (1 + eval.n) answers x the eval's new tokens; None: the greedy
    pass on ``budget.eval_size`` problems)."""
    train = budget.steps * budget.prompts_per_step * budget.group_size * budget.max_new_tokens
    evals = 1 + (budget.steps // budget.eval_every if budget.eval_every else 0) + 1
    per_eval = budget.eval_size * budget.max_new_tokens if eval_tokens is None else eval_tokens
    return train + evals * per_eval


def cpu_rollout_seconds(n_params: int, budget, eval_tokens: int | None = None) -> dict[str, float]:
    """Estimated rollout seconds of a run on CPU per engine, from :data:`CPU_MEASURED`.

    Tokens/s scale as 1 / parameters from the nearest measured model (generation is bound by
    the weights each token reads); vLLM pays its start-up once and a sync per step:
    ``hf = tokens / r_hf``, ``vllm = start * s + tokens / r_vllm + steps * sync * s``, ``s = n / n_ref``.
    """
    ref = min(CPU_MEASURED.values(), key=lambda m: abs(math.log(n_params / m[0])))
    n_ref, hf_rate, vllm_rate, start_s, sync_s = ref
    scale = n_params / n_ref
    tokens = run_tokens(budget, eval_tokens)
    return {
        "hf": tokens * scale / hf_rate,
        "vllm": start_s * max(1.0, scale) + tokens * scale / vllm_rate + budget.steps * sync_s * scale,
    }


def resolve_engine_name(name: str, model=None, budget=None, eval_tokens: int | None = None) -> str:
    """``auto``: vllm on a CUDA device with vLLM installed. On CPU with vLLM installed: vllm when its
    estimated rollout time for the whole run (start-up and syncs included, :func:`cpu_rollout_seconds`)
    beats HF's by :data:`AUTO_MARGIN`, otherwise hf (also without ``model`` and ``budget``)."""
    if name != "auto":
        return name
    from arca_sweep.rollout.vllm import vllm_available

    why = f"CUDA: {torch.cuda.is_available()}, vLLM installed: {vllm_available()}"
    chosen = "vllm" if torch.cuda.is_available() and vllm_available() else "hf"
    if not torch.cuda.is_available() and vllm_available() and model is not None and budget is not None:
        est = cpu_rollout_seconds(sum(p.numel() for p in model.parameters()), budget, eval_tokens)
        chosen = "vllm" if est["vllm"] * AUTO_MARGIN < est["hf"] else "hf"
        why += f", estimated rollout s for the run: hf {est['hf']:.0f}, vllm {est['vllm']:.0f}"
    log.info("rollout=auto: using rollout=%s (%s)", chosen, why)
    return chosen


def build_engine(rollout_cfg, model, tokenizer, budget=None, eval_tokens: int | None = None) -> RolloutEngine:
    """``budget``: the run's (steps, prompts, group size, tokens) and ``eval_tokens`` (the tokens of one eval,
    :func:`run_tokens`), for rollout=auto's choice on CPU."""
    name = resolve_engine_name(rollout_cfg.name, model, budget, eval_tokens)
    if name == "hf":
        from arca_sweep.rollout.hf import HFEngine

        return HFEngine(rollout_cfg, model, tokenizer)
    if name == "vllm":
        from arca_sweep.rollout.vllm import VLLMEngine

        return VLLMEngine(rollout_cfg, model, tokenizer)
    raise ValueError(f"rollout.name={rollout_cfg.name!r}; valid: auto, hf, vllm")


def guard_bound(rollout_cfg, learner_dtype: torch.dtype) -> float | None:
    """The largest |sampler - learner| log-prob difference a step may show (None: guard off).

    Off under top-p < 1: the sampler renormalizes over the nucleus, the learner scores the full
    distribution, so their log-probs differ by design (by -log of the nucleus mass).
    """
    bound = rollout_cfg.guard_max_logp_diff
    if rollout_cfg.top_p < 1.0 and bound is None:
        return None
    if bound is None:
        dtypes = {str(learner_dtype).removeprefix("torch."), rollout_cfg.dtype} - {None}
        return max(GUARD_DEFAULTS[d] for d in dtypes)
    return None if bound < 0 else bound


def check_engine_weights(logp_diff_max: float, bound: float | None, step: int) -> None:
    """Stop the run when the engine's sampling log-probs drift from the learner's beyond ``bound``."""
    if bound is not None and not logp_diff_max <= bound:
        raise EngineWeightsMismatch(
            f"step {step}: the rollout engine's sampling log-probs differ from the learner's by up to "
            f"{logp_diff_max:.3g} (> rollout.guard_max_logp_diff={bound:g}): the engine's weights do not "
            "match the learner's (a stale or missing adapter sync). Raise the bound only if the engine "
            "legitimately computes in lower precision."
        )


def eos_token_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS and the generation config's (Qwen3 chat: <|im_end|> and <|endoftext|>)."""
    eos = {tokenizer.eos_token_id}
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    eos |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
    return sorted(eos)


def finish_masks(response_ids: torch.Tensor, eos_ids: list[int]) -> tuple[torch.Tensor, list[str]]:
    """Mask through the first EOS (inclusive) of each row, and its finish reason."""
    is_eos = torch.isin(response_ids, torch.tensor(eos_ids, device=response_ids.device))
    seen_before = (is_eos.cumsum(1) - is_eos.long()) > 0
    mask = ~seen_before
    reasons = ["stop" if row.any() else "length" for row in is_eos]
    return mask, reasons
