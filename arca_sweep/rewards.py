"""Answer verifiers. Model output is untrusted input: nothing here evaluates it.

A reward function takes the decoded response text and the gold answer and returns 0.0 or 1.0.
It never raises on any text and runs in time linear in the text's length.
"""

from __future__ import annotations

import re

from arca_sweep.grade import extract_boxed

# Look only at the tail of a response: a pathological 1 MB answer costs no more than a short one.
MAX_CHARS = 4000
_INTEGER = re.compile(r"[+-]?\d{1,30}")


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` in the text's tail (:func:`arca_sweep.grade.extract_boxed`).

    The last box wins even when its content is not an answer: ``\\boxed{5} ... \\boxed{\\frac{11}{2}}``
    gives ``\\frac{11}{2}``. An unclosed last box gives None. Linear in the tail's length.
    """
    return extract_boxed(text[-MAX_CHARS:])


def boxed_integer_reward(text: str, answer: str) -> float:
    """1.0 when the last ``\\boxed{}`` holds an integer equal to ``answer``, else 0.0.

    ``\\boxed{ -12 }`` and ``\\boxed{+7}`` parse; ``\\boxed{3.0}``, ``\\boxed{1,000}``, text and integers
    of more than 30 digits do not.
    """
    content = last_boxed(text)
    if content is None or not _INTEGER.fullmatch(content):
        return 0.0
    return 1.0 if int(content) == int(answer) else 0.0
