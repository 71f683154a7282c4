"""Rollout engines: sample G responses per prompt and report what the sampler saw.

An engine turns templated prompt token ids into a :class:`RolloutBatch`. The learner never asks
how: ``rollout=hf`` uses transformers ``generate`` on the live peft model; ``rollout=vllm`` an
in-process vLLM engine that receives the new weights through :meth:`sync`; ``rollout=auto`` picks
vLLM when a CUDA device and vLLM are present, otherwise HF.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import torch

log = logging.getLogger(__name__)

# rollout.guard_max_logp_diff when null, by the engine's dtype. Measured on the tiny model (BENCHMARKS.md):
# float32 engines agree with the learner to ~1e-5 in max |diff| per step; half precision rounds each
# token's log-prob by up to ~0.1, and a token in the tail of the distribution by more.
GUARD_DEFAULTS = {"float32": 1e-2, "bfloat16": 2.0, "float16": 1.0}


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


class RolloutEngine(Protocol):
    def generate(
        self, prompts: list[list[int]], num_samples: int, max_new_tokens: int, greedy: bool = False
    ) -> RolloutBatch: ...

    def sync(self, model) -> None:
        """Make the engine sample from ``model``'s current weights (after each learner update)."""


def resolve_engine_name(name: str) -> str:
    """``auto``: vllm when a CUDA device and vLLM are present, otherwise hf."""
    if name != "auto":
        return name
    from arca_sweep.rollout.vllm import vllm_available

    chosen = "vllm" if torch.cuda.is_available() and vllm_available() else "hf"
    log.info(
        "rollout=auto: using rollout=%s (CUDA: %s, vLLM installed: %s)",
        chosen,
        torch.cuda.is_available(),
        vllm_available(),
    )
    return chosen


def build_engine(rollout_cfg, model, tokenizer) -> RolloutEngine:
    name = resolve_engine_name(rollout_cfg.name)
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
