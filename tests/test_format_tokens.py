"""Format tokens (SPEC "Diagnostics": whitespace, punctuation, special and template tokens): Qwen3's
chat-template and thinking tags, and Unicode punctuation, count as format; content does not."""

from __future__ import annotations

import copy

import pytest

from arca_sweep.diagnostics.step import FormatTokens, is_format_text


@pytest.mark.parametrize(
    "text",
    ["<think>", "</think>", "<think>\n", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<tool_call>"]
    + ["\n\n", " ", "}.", "{", "，", "。", "：", "“", "”", "—", "…", "、", "「", "」", "¡", "\u200b", ""],
)
def test_template_tags_whitespace_and_unicode_punctuation_are_format(text):
    assert is_format_text(text)


@pytest.mark.parametrize("text", ["\\boxed", "19", " the", "数", "x", "think", "<thinking>", "π", "é"])
def test_content_is_not_format(text):
    assert not is_format_text(text)


def test_qwen3_thinking_tags_added_as_plain_tokens_are_format(tiny_tokenizer):
    """Qwen3 adds <think> and </think> as non-special tokens: they must count all the same."""
    tok = copy.deepcopy(tiny_tokenizer)
    tok.add_tokens(["<think>", "</think>"], special_tokens=False)
    think, end = tok.convert_tokens_to_ids(["<think>", "</think>"])
    assert think not in tok.all_special_ids
    ids = tok("<think>\n12 + 7 = 19\n</think>", add_special_tokens=False)["input_ids"]
    fmt = FormatTokens(tok)
    flags = {tok.decode([i]): fmt.is_format(i) for i in ids}
    assert flags["<think>"] and flags["</think>"] and flags["\n"]
    assert not flags["1"] if "1" in flags else not flags["12"]
    for i in tok.all_special_ids:  # <|im_start|>, <|im_end|>, <|endoftext|>
        assert fmt.is_format(i)
