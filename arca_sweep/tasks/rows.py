"""Tasks over rows: reading a local rows file, the seeded prompt order shared by every arm, and
:class:`RowsTask`, the base of ``MathTask`` (:mod:`arca_sweep.tasks.math`) and ``JsonlTask``
(:mod:`arca_sweep.tasks.jsonl`).
"""

from __future__ import annotations

import functools
import random
from pathlib import Path

from arca_sweep.errors import DataError, DataFileNotFound, json_value, utf8_text
from arca_sweep.tasks import Problem

# ---------------------------------------------------------------------------- reading rows


def read_file(path: Path) -> list[dict]:
    """The rows of a local ``.jsonl`` / ``.json`` (one object per line, or one JSON array) or ``.parquet``
    file; :class:`DataError` names the file and line of anything that is not a JSON object."""
    if not path.is_file():
        raise DataFileNotFound(f"data file not found: {path} (absolute: {path.absolute()})")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet

        try:
            return pyarrow.parquet.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow's ArrowInvalid and friends
            raise DataError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})") from None
    if suffix not in (".jsonl", ".json"):
        raise DataError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .json or .parquet")
    text = utf8_text(path.read_bytes(), path)
    if text.lstrip().startswith("["):
        rows = json_value(text, f"{path}:1")
        numbered = list(enumerate(rows, 1))
    else:
        numbered = []
        for line_no, line in enumerate(text.splitlines(), 1):
            if line.strip():
                value = json_value(line, f"{path}:{line_no}")
                numbered.append((line_no, value))
    for line_no, row in numbered:
        if not isinstance(row, dict):
            raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
    return [row for _, row in numbered]


# ---------------------------------------------------------------------------- the prompt order


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, size: int) -> tuple[int, ...]:
    order = list(range(size))
    random.Random(f"math-order:{seed}:{epoch}").shuffle(order)  # str seeds hash stably (sha512)
    return tuple(order)


def prompt_order(seed: int, step: int, num_prompts: int, size: int) -> list[int]:
    """Row indices of a step: positions ``step * num_prompts ...`` of the stream that concatenates one
    seeded permutation of ``range(size)`` per epoch (epoch ``e`` shuffled by ``(seed, e)``). Every row once
    per epoch; a step that crosses an epoch boundary takes the end of one permutation and the start of
    the next. A pure function of its arguments."""
    if step < 0 or num_prompts < 1 or size < 1:
        raise ValueError(f"need step >= 0, num_prompts >= 1, size >= 1; got {step}, {num_prompts}, {size}")
    positions = range(step * num_prompts, (step + 1) * num_prompts)
    return [_epoch_permutation(seed, p // size, size)[p % size] for p in positions]


# ---------------------------------------------------------------------------- the task


class RowsTask:
    """A task over loaded rows: ``self.train`` in a ``self.seed`` order shared by every arm
    (:func:`prompt_order`), ``self.eval`` in file order. ``MathTask`` and ``JsonlTask``.

    ``eval_only`` (an eval set, ``build_task(..., eval_only=True)``): only the eval rows were loaded, and the
    ``train_*`` methods raise :class:`RuntimeError`."""

    train: list[Problem]
    eval: list[Problem]
    seed: int
    eval_only: bool = False

    def _check_training(self) -> None:
        if self.eval_only:
            raise RuntimeError(
                f"{type(self).__name__} was built eval-only (an eval set, build_task(..., eval_only=True)): "
                "it loaded no training rows, so it has no train_indices or train_problem"
            )

    def train_indices(self, step: int, num_prompts: int) -> list[int]:
        self._check_training()
        return prompt_order(self.seed, step, num_prompts, len(self.train))

    def train_problem(self, index: int) -> Problem:
        self._check_training()
        return self.train[index]

    def eval_problems(self, num: int) -> list[Problem]:
        """The first ``num`` eval rows in file order (all of them when ``num`` >= their number)."""
        return self.eval[:num]
