"""Answer verifiers. Model output is untrusted input: nothing here evaluates it.

A reward function takes the decoded response text and the gold answer and returns 0.0 or 1.0.
It never raises on any text and runs in time linear in the text's length.
"""

from __future__ import annotations

import re

# Look only at the tail of a response: a pathological 1 MB answer costs no more than a short one.
MAX_CHARS = 4000
_BOXED = re.compile(r"\\boxed\{([^{}]{0,64})\}")
_INTEGER = re.compile(r"[+-]?\d{1,30}")


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (without nested braces) in the text's tail, or None."""
    matches = _BOXED.findall(text[-MAX_CHARS:])
    return matches[-1].strip() if matches else None


def boxed_integer_reward(text: str, answer: str) -> float:
    """1.0 when the last ``\\boxed{}`` holds an integer equal to ``answer``, else 0.0.

    ``\\boxed{ -12 }`` and ``\\boxed{+7}`` parse; ``\\boxed{3.0}``, ``\\boxed{1,000}`` and text do not.
    """
    content = last_boxed(text)
    if content is None or not _INTEGER.fullmatch(content):
        return 0.0
    return 1.0 if int(content) == int(answer) else 0.0
