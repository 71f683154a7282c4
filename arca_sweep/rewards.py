"""Answer verifiers. Model output is untrusted input: nothing here evaluates it.

A reward function takes the decoded response text and the gold answer and returns 0.0 or 1.0.
It never raises on any text and runs in time linear in the text's length.
"""

from __future__ import annotations

import re

from arca_sweep.grade import extract_boxed

# Look only at the tail of a response: a pathological 1 MB answer costs no more than a short one.
MAX_CHARS = 4000
MAX_DIGITS = 30  # the longest integer answer read
# ASCII digits only (``\d`` alone would take Arabic-Indic or fullwidth digits), and U+2212 as a minus.
_INTEGER = re.compile(rf"[+\-\u2212]?[0-9]{{1,{MAX_DIGITS}}}")


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
    return 1.0 if int(_ascii_minus(content)) == int(answer) else 0.0


def _ascii_minus(text: str) -> str:
    """An :data:`_INTEGER` match with its minus (perhaps U+2212) as ``-``."""
    return text.replace("\u2212", "-")


# A number: digits, optionally grouped or with a fraction (``1,000``, ``3.5``), so that the last *number* is
# found, not the last digits of one. Unambiguous (each separator needs a digit after it): linear time.
_NUMBER = re.compile(r"[+\-\u2212]?[0-9]+(?:[.,][0-9]+)*")


def last_integer(text: str) -> str | None:
    """The last number in the text's tail when it is an integer of at most 30 digits, else None.

    ``The answer is 66.`` gives ``66``; ``47 - 19 = -5`` gives ``-5``; ``\\boxed{12}`` gives ``12``. The last
    number wins even when it is not an integer: ``66, or 3.5`` and ``1,000`` give None, and so does a run of
    more than 30 digits. Linear in the tail's length.
    """
    last = None
    for last in _NUMBER.finditer(text[-MAX_CHARS:]):  # noqa: B007 (only the last match is wanted)
        pass
    if last is None or not _INTEGER.fullmatch(last.group()):
        return None
    return _ascii_minus(last.group())


def last_integer_reward(text: str, answer: str) -> float:
    """1.0 when the response's last number (:func:`last_integer`) is an integer equal to ``answer``, else 0.0."""
    value = last_integer(text)
    return 0.0 if value is None else float(int(value) == int(answer))
