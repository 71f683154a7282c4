"""The ``math`` task: competition problems from MATH (Hendrycks et al. 2021), graded with math-verify.

Rows come from a local JSONL/Parquet file (``data.path``, ``data.eval_path``) or from the HF hub
(``data.hub_id`` with ``data.hub_configs``, ``data.split``; the same ``eval_*`` keys for evaluation).
Both row formats work: MATH (``problem``, ``level`` "Level 3", ``type``, ``solution``) and MATH-500
(``problem``, ``solution``, ``answer``, ``subject``, ``level`` 3, ``unique_id``). The gold answer is
``answer`` when present, else the last ``\\boxed{}`` of ``solution``. A row without a problem or a gold
answer is skipped and counted, never fatal.

``data.levels`` and ``data.subjects`` filter the training rows only: the eval set is the benchmark as
given (e.g. all of MATH-500), and its accuracy is broken down by level and subject anyway. Subjects match
case-insensitively, with "&" read as "and" and spaces as "_", so ``counting_and_probability`` (the
EleutherAI/hendrycks_math config name) selects "Counting & Probability".

Reward: 1.0 when the response's last boxed answer is equivalent to the gold answer, else 0.0, graded in
:class:`arca_sweep.grade.Grader`'s worker processes; a timeout or a worker error scores 0 and is counted.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from arca_sweep.errors import DataError, UserError
from arca_sweep.grade import Grader, gold_answer
from arca_sweep.tasks import Problem
from arca_sweep.tasks.rows import RowsTask, read_file

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
_LEVEL = re.compile(r"(?:level\s*)?([1-5])", re.IGNORECASE)
_SKIP_REASONS = ("no_answer", "empty_problem", "too_long")


class DatasetUnavailableError(UserError, RuntimeError):
    """A hub dataset could not be loaded (offline, unreachable, or not on the hub)."""


# ---------------------------------------------------------------------------- loading rows


def load_rows(
    path: str | None = None,
    hub_id: str | None = None,
    hub_configs: list[str] | None = None,
    split: str = "train",
) -> list[dict]:
    """The raw rows of a local file (``path`` wins when given) or of a hub dataset.

    Local: ``.jsonl`` / ``.json`` (one object per line, or one JSON array) or ``.parquet``. Hub:
    ``datasets.load_dataset(hub_id, config, split=split)`` for each of ``hub_configs`` in order, concatenated
    (no configs: the dataset's default). A hub that cannot be reached raises :class:`DatasetUnavailableError`
    naming the dataset and the local-file options.
    """
    if path is not None:
        return read_file(Path(path).expanduser())
    if not hub_id:
        raise DataError("no data source: give a local file (data.path / data.eval_path) or a hub id")
    import datasets

    rows: list[dict] = []
    for config in list(hub_configs or []) or [None]:
        try:
            rows.extend(datasets.load_dataset(hub_id, config, split=split).to_list())
        except OSError as exc:  # ConnectionError, OfflineModeIsEnabled, DatasetNotFoundError, HTTP errors
            wanted = hub_id + (f" (config {config})" if config else "") + f", split {split!r}"
            cause = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            raise DatasetUnavailableError(
                f"could not load the hub dataset {wanted}: {cause}. To run without the hub, pass local "
                "files (JSONL or Parquet, MATH or MATH-500 rows): data.path=/path/to/math_train.jsonl for "
                "training rows, data.eval_path=/path/to/math500_test.jsonl for evaluation rows"
            ) from None
    return rows


# ---------------------------------------------------------------------------- rows to problems


def parse_level(value) -> int | None:
    """``"Level 3"``, ``"3"`` or ``3`` give 3; anything else (``"Level ?"``, None, 7) gives None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if 1 <= value <= 5 else None
    if isinstance(value, str) and (m := _LEVEL.fullmatch(value.strip())):
        return int(m[1])
    return None


def subject_key(subject: str) -> str:
    """``"Counting & Probability"`` and ``"counting_and_probability"`` both give ``counting_and_probability``."""
    return "_".join(subject.lower().replace("&", " and ").split())


def to_problem(index: int, row: dict) -> Problem | str:
    """The :class:`Problem` of a row, or the reason it is skipped: ``"empty_problem"`` or ``"no_answer"``."""
    text = row.get("problem")
    if not isinstance(text, str) or not text.strip():
        return "empty_problem"
    answer = gold_answer(row)
    if answer is None:
        return "no_answer"
    subject = row.get("subject") or row.get("type")
    meta = {"level": parse_level(row.get("level")), "subject": subject if isinstance(subject, str) else None}
    if row.get("unique_id") is not None:
        meta["unique_id"] = row["unique_id"]
    return Problem(index=index, question=f"{text.strip()}\n\n{INSTRUCTION}", answer=answer, meta=meta)


def build_problems(
    rows: list[dict],
    levels: list[int] | None = None,
    subjects: list[str] | None = None,
    prompt_fits: Callable[[str], bool] | None = None,
) -> tuple[list[Problem], Counter]:
    """The usable rows in order, indexed 0..n-1, and the count of each skip reason and of ``"filtered"``.

    ``levels`` keeps rows whose level is one of them (an unknown level is dropped); ``subjects`` keeps rows
    whose subject matches one of them by :func:`subject_key`. None keeps all. A row whose question
    ``prompt_fits`` rejects is skipped as ``"too_long"``.
    """
    keep_levels = None if levels is None else set(levels)
    keep_subjects = None if subjects is None else {subject_key(s) for s in subjects}
    problems: list[Problem] = []
    counts: Counter = Counter({reason: 0 for reason in (*_SKIP_REASONS, "filtered")})
    for row in rows:
        problem = to_problem(len(problems), row)
        if isinstance(problem, Problem) and prompt_fits is not None and not prompt_fits(problem.question):
            problem = "too_long"
        if isinstance(problem, str):
            counts[problem] += 1
        elif (keep_levels is not None and problem.meta["level"] not in keep_levels) or (
            keep_subjects is not None and subject_key(problem.meta["subject"] or "") not in keep_subjects
        ):
            counts["filtered"] += 1
        else:
            problems.append(problem)
    return problems, counts


# ---------------------------------------------------------------------------- the task


class MathTask(RowsTask):
    """Training rows in a ``data.seed`` order shared by every arm; eval rows in file order.

    ``stats`` (logged every step): rows kept and skipped per reason for train and eval, training rows
    filtered out, and the cumulative grader timeouts and errors. The grader starts on the first reward
    call; :meth:`close` stops it for good.
    """

    def __init__(
        self,
        train_rows: list[dict],
        eval_rows: list[dict],
        seed: int = 0,
        levels: list[int] | None = None,
        subjects: list[str] | None = None,
        grader_workers: int = 2,
        grader_timeout_s: float = 5.0,
        prompt_fits: Callable[[str], bool] | None = None,
    ):
        self.seed = seed
        self.train, train_counts = build_problems(train_rows, levels, subjects, prompt_fits)
        self.eval, eval_counts = build_problems(eval_rows, prompt_fits=prompt_fits)
        if not self.train:
            raise DataError(
                f"no training rows left: {len(train_rows)} loaded, skipped {dict(train_counts)} "
                f"(data.levels={levels}, data.subjects={subjects})"
            )
        if not self.eval:
            raise DataError(f"no eval rows left: {len(eval_rows)} loaded, skipped {dict(eval_counts)}")
        self.grader_workers, self.grader_timeout_s = grader_workers, grader_timeout_s
        self.grader: Grader | None = None
        self._closed = False
        self._data_stats = {"data/train_rows": len(self.train), "data/eval_rows": len(self.eval)}
        for split, counts in (("train", train_counts), ("eval", eval_counts)):
            self._data_stats.update({f"data/{split}_skipped_{r}": counts[r] for r in _SKIP_REASONS})
        self._data_stats["data/train_filtered"] = train_counts["filtered"]
        self._grade_counts = {"reward/timeouts": 0, "reward/errors": 0}

    @classmethod
    def from_config(cls, cfg, prompt_fits: Callable[[str], bool] | None = None) -> MathTask:
        train_rows = load_rows(cfg.path, cfg.hub_id, cfg.hub_configs, cfg.split)
        eval_rows = load_rows(cfg.eval_path, cfg.eval_hub_id, cfg.eval_hub_configs, cfg.eval_split)
        return cls(
            train_rows,
            eval_rows,
            seed=cfg.seed,
            levels=None if cfg.levels is None else list(cfg.levels),
            subjects=None if cfg.subjects is None else list(cfg.subjects),
            grader_workers=cfg.grader_workers,
            grader_timeout_s=cfg.grader_timeout_s,
            prompt_fits=prompt_fits,
        )

    @property
    def stats(self) -> dict[str, int]:
        return {**self._data_stats, **self._grade_counts}

    def reward(self, response_text: str, problem: Problem) -> float:
        return self.rewards([response_text], [problem])[0]

    def rewards(self, response_texts: list[str], problems: list[Problem]) -> list[float]:
        """1.0 for each response whose last boxed answer equals its problem's gold answer, else 0.0."""
        if len(response_texts) != len(problems):
            raise ValueError(f"{len(response_texts)} responses for {len(problems)} problems")
        if self._closed:
            raise RuntimeError("MathTask is closed")
        if not response_texts:
            return []
        if self.grader is None:
            self.grader = Grader(workers=self.grader_workers, timeout_s=self.grader_timeout_s)
        pairs = [(text, p.answer) for text, p in zip(response_texts, problems, strict=True)]
        results = self.grader.grade(pairs)
        self._grade_counts["reward/timeouts"] += sum(r.status == "timeout" for r in results)
        self._grade_counts["reward/errors"] += sum(r.status == "error" for r in results)
        return [1.0 if r.correct else 0.0 for r in results]

    def close(self) -> None:
        """Stop the grader's workers. Idempotent; rewards are refused afterwards."""
        self._closed = True
        if self.grader is not None:
            self.grader.close()

    def __enter__(self) -> MathTask:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
