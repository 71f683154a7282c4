"""Per-step credit diagnostics (SPEC "Diagnostics"): the training signal's weights under
``credit/``, every signal's under ``shadow/<signal>/`` with its Spearman correlation to the
training signal, and which tokens are format tokens.

The statistics themselves (Gini, effective token ratio, regimes, Spearman) are in
:mod:`~arca_sweep.diagnostics.concentration`; the precision probe (``fidelity/<signal>/rel_err``) is
:mod:`~arca_sweep.diagnostics.fidelity`."""

from __future__ import annotations

import string
import unicodedata

import torch

from arca_sweep.diagnostics.concentration import spearman, summarize_weights

PUNCTUATION = set(string.punctuation)
# Chat-template and reasoning markup of the Qwen3 family (and ChatML): format, whatever the tokenizer
# marks special. Qwen3's <think> / </think> are added but not special tokens.
TEMPLATE_TAGS = frozenset(
    {
        "<think>",
        "</think>",
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
        "<tool_call>",
        "</tool_call>",
        "<tool_response>",
        "</tool_response>",
    }
)


def is_format_text(text: str) -> bool:
    """A token text that carries no content: a template tag (:data:`TEMPLATE_TAGS`, surrounding
    whitespace allowed), or only whitespace, ASCII punctuation, Unicode punctuation (categories
    ``P*``: ``。，：“”—…``) and invisible format characters (``Cf``: zero-width space, BOM)."""
    if text.strip() in TEMPLATE_TAGS:
        return True
    return all(
        ch.isspace()
        or ch in PUNCTUATION
        or unicodedata.category(ch)[0] == "P"
        or unicodedata.category(ch) == "Cf"
        for ch in text
    )


class FormatTokens:
    """Token ids that carry format, not content: special tokens, the tokenizer's added tokens (chat
    template, thinking and tool tags), and tokens whose text :func:`is_format_text` accepts (``\\n``,
    ``{``, ``}.``, ``，``; ``\\boxed`` is not)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
        self.cache: dict[int, bool] = {}

    def is_format(self, token_id: int) -> bool:
        if token_id not in self.cache:
            self.cache[token_id] = token_id in self.special or is_format_text(
                self.tokenizer.decode([token_id])
            )
        return self.cache[token_id]

    def mask(self, ids: torch.Tensor) -> torch.Tensor:
        flat = [self.is_format(int(i)) for i in ids.flatten().tolist()]
        return torch.tensor(flat, dtype=torch.bool, device=ids.device).view(ids.shape)


def credit_metrics(
    weights,
    shadow_weights: dict,
    mask,
    format_mask,
    training_signal: str,
    uniform_at: float,
    concentrated_at: float,
) -> dict[str, float]:
    thresholds = dict(uniform_at=uniform_at, concentrated_at=concentrated_at)
    out = {
        f"credit/{k}": v
        for k, v in summarize_weights(weights, mask, format_mask=format_mask, **thresholds).items()
    }
    for name, w in shadow_weights.items():
        on = ~w.isnan().any(-1)  # rows off the shadow sample (diagnostics.shadow_sample) are NaN
        w, w_mask, w_train = w[on], mask[on], weights[on]
        summary = summarize_weights(w, w_mask, **thresholds)
        for key in ("gini/mean", "etr/mean", "regime/uniform", "regime/middle", "regime/concentrated"):
            out[f"shadow/{name}/{key}"] = summary[key]
        rho = spearman(w, w_train, w_mask)
        rho = rho[~rho.isnan()]
        out[f"shadow/{name}/spearman"] = rho.mean().item() if rho.numel() else float("nan")
    return out
