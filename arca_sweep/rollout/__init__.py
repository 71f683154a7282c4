"""Rollout engines: sample G responses per prompt and report what the sampler saw.

An engine turns templated prompt token ids into a :class:`RolloutBatch`. The learner never asks
how: ``rollout=hf`` uses transformers ``generate`` on the live peft model; later engines (vLLM)
plug in behind the same two methods and receive the new weights through :meth:`sync`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


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


def build_engine(rollout_cfg, model, tokenizer) -> RolloutEngine:
    from arca_sweep.rollout.hf import HFEngine

    engines = {"hf": HFEngine}
    if rollout_cfg.name not in engines:
        raise ValueError(f"rollout.name={rollout_cfg.name!r}; valid: {sorted(engines)}")
    return engines[rollout_cfg.name](rollout_cfg, model, tokenizer)


def finish_masks(response_ids: torch.Tensor, eos_ids: list[int]) -> tuple[torch.Tensor, list[str]]:
    """Mask through the first EOS (inclusive) of each row, and its finish reason."""
    is_eos = torch.isin(response_ids, torch.tensor(eos_ids, device=response_ids.device))
    seen_before = (is_eos.cumsum(1) - is_eos.long()) > 0
    mask = ~seen_before
    reasons = ["stop" if row.any() else "length" for row in is_eos]
    return mask, reasons
