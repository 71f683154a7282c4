"""Example plug-ins, the defaults of ``conf/credit/custom.yaml`` and ``conf/data/jsonl.yaml``: copy one
into your own module and point ``credit.target`` / ``data.reward`` at it (README, "Plug-ins")."""

from __future__ import annotations

import re

import torch

from arca_sweep.rewards import boxed_integer_reward, last_boxed


def later_tokens_weight(stats, ctx, *, power: float = 1.0) -> torch.Tensor:
    """A custom credit method: salience ``s_t = t^power`` (1-based position), so later tokens weigh more.
    Reads no model quantity (``needs`` is empty)."""
    position = stats.mask.long().cumsum(dim=-1).float()
    return torch.where(stats.mask, position**power, 0.0)


later_tokens_weight.needs = set()


def boxed_match(response_text: str, answer: str) -> float:
    """A custom reward: 1.0 when the last ``\\boxed{}`` holds ``answer``: as integers when the answer is
    one, else as text with surrounding spaces ignored (``\\boxed{x = 2}`` for the answer ``x = 2``)."""
    if re.fullmatch(r"\s*[+-]?[0-9]{1,30}\s*", answer):
        return boxed_integer_reward(response_text, answer.strip())
    content = last_boxed(response_text)
    return float(content is not None and content.strip() == answer.strip())
