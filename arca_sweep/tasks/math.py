"""The ``math`` task: competition problems from MATH (Hendrycks et al. 2021), graded with math-verify.

Rows come from a local JSONL/Parquet file (``data.path``, ``data.eval_path``) or from the HF hub
(``data.hub_id`` with ``data.hub_configs``, ``data.split``; the same ``eval_*`` keys for evaluation).
Both row formats work: MATH (``problem``, ``level`` "Level 3", ``type``, ``solution``) and MATH-500
(``problem``, ``solution``, ``answer``, ``subject``, ``level`` 3, ``unique_id``). The gold answer is
``answer`` when present, else the last ``\\boxed{}`` of ``solution``. A row without a problem or a gold
answer is skipped and counted, never fatal.

Other schemas (the benchmarks of ``conf/data/``: AIME, AMC, Minerva, OlympiadBench) name their columns in
``data.fields``, our field -> their column, e.g. ``{problem: question, answer: final_answer, id: id}``
(:data:`FIELDS`; :func:`gold_text` says how an int, float or list answer becomes text). Built eval-only (an
eval set, ``build_task(..., eval_only=True)``) the task reads no training source at all.

``data.levels`` and ``data.subjects`` filter the training rows only: the eval set is the benchmark as
given (e.g. all of MATH-500), and its accuracy is broken down by level and subject anyway. Subjects match
case-insensitively, with "&" read as "and" and spaces as "_", so ``counting_and_probability`` (the
EleutherAI/hendrycks_math config name) selects "Counting & Probability".

Reward: 1.0 when the response's last boxed answer is equivalent to the gold answer, else 0.0, graded in
:class:`arca_sweep.grade.Grader`'s worker processes; a timeout or a worker error scores 0 and is counted.
:meth:`MathTask.equivalent` asks the same grader whether two extracted answers are the same (majority vote).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path

from arca_sweep.errors import DataError, UserError
from arca_sweep.grade import MAX_ANSWER_CHARS, Grader, extract_boxed, gold_answer
from arca_sweep.tasks import Problem
from arca_sweep.tasks.rows import RowsTask, read_file

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
_LEVEL = re.compile(r"(?:level\s*)?([1-5])", re.IGNORECASE)
_SKIP_REASONS = ("no_answer", "empty_problem", "too_long")
# Our fields -> the row columns read for each when data.fields does not name one, tried in order.
DEFAULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "problem": ("problem",),
    "answer": ("answer",),
    "solution": ("solution",),
    "id": ("unique_id",),  # becomes meta["unique_id"], which pairs a problem's records across arms
    "level": ("level",),
    "subject": ("subject", "type"),
}
FIELDS = tuple(DEFAULT_COLUMNS)  # the valid keys of data.fields
_DOLLARS = re.compile(r"(\${1,2})([^$]+)\1")  # $x$ or $$x$$ around the whole answer


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
                "files (JSONL, JSON or Parquet, with the dataset's own columns): "
                "data.path=/path/to/math_train.jsonl for training rows, "
                "data.eval_path=/path/to/math500_test.jsonl for evaluation rows"
            ) from None
    return rows


# ---------------------------------------------------------------------------- rows to problems


def field_errors(data_cfg, prefix: str = "data") -> list[str]:
    """What is wrong with ``<prefix>.fields`` (a data config's column names): each key that is not one of
    :data:`FIELDS`, named with the valid ones, and each column that is not a non-empty string."""
    return _fields_errors(getattr(data_cfg, "fields", None) or {}, f"{prefix}.fields")


def _fields_errors(fields: Mapping, where: str) -> list[str]:
    errors = []
    for key, column in fields.items():
        if key not in DEFAULT_COLUMNS:
            errors.append(f"{where} has the unknown key {key!r}; valid keys: {', '.join(FIELDS)}")
        elif not isinstance(column, str) or not column:
            errors.append(f"{where}.{key}={column!r} must be a column name (a non-empty string)")
    return errors


def row_columns(fields: Mapping[str, str] | None = None) -> dict[str, tuple[str, ...]]:
    """Each of :data:`FIELDS` -> the row columns read for it: the one ``fields`` names, else
    :data:`DEFAULT_COLUMNS`. A bad ``fields`` raises :class:`arca_sweep.config.ConfigError`."""
    fields = dict(fields or {})
    if errors := _fields_errors(fields, "data.fields"):
        from arca_sweep.config import ConfigError

        raise ConfigError("; ".join(errors))
    return {name: (fields[name],) if name in fields else default for name, default in DEFAULT_COLUMNS.items()}


def _column_value(row: dict, columns: tuple[str, ...]):
    """The first of ``columns`` that the row holds a value in (not None, not ""), else None."""
    for column in columns:
        value = row.get(column)
        if value is not None and not (isinstance(value, str) and not value.strip()):
            return value
    return None


def _scalar_text(value) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value) if value.bit_length() < 4 * MAX_ANSWER_CHARS else None  # str() refuses huge ints
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return str(int(value)) if value.is_integer() else format(Decimal(repr(value)), "f")
    if not isinstance(value, str):
        return None
    text = value.strip()
    if (m := _DOLLARS.fullmatch(text)) and not m[2].endswith("\\"):  # $x$ -> x, but not $5\$
        text = m[2].strip()
    return text or None


def gold_text(value) -> str | None:
    """A gold answer column's value as the text the grader compares, or None when it holds no answer.

    A string, stripped, and unwrapped from a surrounding ``$...$`` or ``$$...$$``; an int (AIME) as its
    digits; a finite float (AMC's 27.0) as ``27``, or ``0.25`` in plain decimals; a list (OlympiadBench's
    ``final_answer``) of such values: the single one, or several joined by ``", "`` as OlympiadBench's and
    the usual evaluators' graders do, so ``["$3$", "$-3$"]`` gives ``3, -3`` (math-verify reads that as the
    set or tuple of both). Anything else (bool, NaN, dict, a nested or empty list, a list with a blank
    element) is None. A text longer than :data:`arca_sweep.grade.MAX_ANSWER_CHARS` is not an answer: None.
    """
    if isinstance(value, list | tuple):
        if not 0 < len(value) <= MAX_ANSWER_CHARS:
            return None
        parts = [_scalar_text(part) for part in value]
        text = None if None in parts else ", ".join(parts)
    else:
        text = _scalar_text(value)
    return text if text is not None and len(text) <= MAX_ANSWER_CHARS else None


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


def to_problem(index: int, row: dict, columns: dict[str, tuple[str, ...]] | None = None) -> Problem | str:
    """The :class:`Problem` of a row, or the reason it is skipped: ``"empty_problem"`` or ``"no_answer"``.

    ``columns`` (:func:`row_columns`, default :data:`DEFAULT_COLUMNS`) names the row's columns. The gold
    answer is :func:`gold_text` of the answer column, else the last boxed answer of the solution column; a
    string or int id becomes ``meta["unique_id"]``. A missing column or a value of the wrong type is a skip
    or a None in ``meta``, never an error."""
    columns = columns or DEFAULT_COLUMNS
    text = _column_value(row, columns["problem"])
    if not isinstance(text, str) or not text.strip():
        return "empty_problem"
    answer = gold_text(_column_value(row, columns["answer"]))
    if answer is None:
        answer = gold_answer({"solution": _column_value(row, columns["solution"])})
    if answer is None or len(answer) > MAX_ANSWER_CHARS:
        return "no_answer"
    subject = _column_value(row, columns["subject"])
    meta = {
        "level": parse_level(_column_value(row, columns["level"])),
        "subject": subject if isinstance(subject, str) else None,
    }
    unique_id = _column_value(row, columns["id"])
    if isinstance(unique_id, str) or (isinstance(unique_id, int) and not isinstance(unique_id, bool)):
        meta["unique_id"] = unique_id
    return Problem(index=index, question=f"{text.strip()}\n\n{INSTRUCTION}", answer=answer, meta=meta)


def build_problems(
    rows: list[dict],
    levels: list[int] | None = None,
    subjects: list[str] | None = None,
    prompt_fits: Callable[[str], bool] | None = None,
    fields: Mapping[str, str] | None = None,
) -> tuple[list[Problem], Counter]:
    """The usable rows in order, indexed 0..n-1, and the count of each skip reason and of ``"filtered"``.

    ``levels`` keeps rows whose level is one of them (an unknown level is dropped); ``subjects`` keeps rows
    whose subject matches one of them by :func:`subject_key`. None keeps all. A row whose question
    ``prompt_fits`` rejects is skipped as ``"too_long"``. ``fields``: ``data.fields`` (:func:`row_columns`).
    """
    columns = row_columns(fields)
    keep_levels = None if levels is None else set(levels)
    keep_subjects = None if subjects is None else {subject_key(s) for s in subjects}
    problems: list[Problem] = []
    counts: Counter = Counter({reason: 0 for reason in (*_SKIP_REASONS, "filtered")})
    for row in rows:
        problem = to_problem(len(problems), row, columns) if isinstance(row, dict) else "empty_problem"
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
    filtered out, and the cumulative grader timeouts and errors (eval-only: the eval and grader counts). The
    grader starts on the first reward or :meth:`equivalent` call; :meth:`close` stops it for good.
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
        fields: Mapping[str, str] | None = None,
        eval_only: bool = False,
    ):
        """``fields``: ``data.fields`` (:func:`row_columns`). ``eval_only``: an eval set; ``train_rows`` is
        ignored and the ``train_*`` methods raise."""
        self.seed, self.eval_only = seed, eval_only
        self._data_stats = {}
        if not eval_only:
            self.train, train_counts = build_problems(train_rows, levels, subjects, prompt_fits, fields)
            if not self.train:
                raise DataError(
                    f"no training rows left: {len(train_rows)} loaded, skipped {dict(train_counts)} "
                    f"(data.levels={levels}, data.subjects={subjects})"
                )
            self._data_stats["data/train_rows"] = len(self.train)
        else:
            self.train, train_counts = [], None
        self.eval, eval_counts = build_problems(eval_rows, prompt_fits=prompt_fits, fields=fields)
        if not self.eval:
            raise DataError(f"no eval rows left: {len(eval_rows)} loaded, skipped {dict(eval_counts)}")
        self.grader_workers, self.grader_timeout_s = grader_workers, grader_timeout_s
        self.grader: Grader | None = None
        self._closed = False
        self._data_stats["data/eval_rows"] = len(self.eval)
        for split, counts in (("train", train_counts), ("eval", eval_counts)):
            if counts is not None:
                self._data_stats.update({f"data/{split}_skipped_{r}": counts[r] for r in _SKIP_REASONS})
        if train_counts is not None:
            self._data_stats["data/train_filtered"] = train_counts["filtered"]
        self._grade_counts = {"reward/timeouts": 0, "reward/errors": 0}

    @classmethod
    def from_config(
        cls, cfg, prompt_fits: Callable[[str], bool] | None = None, eval_only: bool = False
    ) -> MathTask:
        """The task of a data config; ``eval_only`` (an eval set): its eval source alone is read."""
        fields = dict(cfg.get("fields") or {})
        row_columns(fields)  # a bad data.fields fails before any download
        train_rows = [] if eval_only else load_rows(cfg.path, cfg.hub_id, cfg.hub_configs, cfg.split)
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
            fields=fields,
            eval_only=eval_only,
        )

    @property
    def stats(self) -> dict[str, int]:
        return {**self._data_stats, **self._grade_counts}

    def _graded(self, pairs: list[tuple[str, str]]) -> list:
        """The grader's results for ``(response_text, gold)`` pairs; the grader starts on first use."""
        if self._closed:
            raise RuntimeError("MathTask is closed")
        if self.grader is None:
            self.grader = Grader(workers=self.grader_workers, timeout_s=self.grader_timeout_s)
        return self.grader.grade(pairs)

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
        results = self._graded([(text, p.answer) for text, p in zip(response_texts, problems, strict=True)])
        self._grade_counts["reward/timeouts"] += sum(r.status == "timeout" for r in results)
        self._grade_counts["reward/errors"] += sum(r.status == "error" for r in results)
        return [1.0 if r.correct else 0.0 for r in results]

    def equivalent(self, pairs: list[tuple[str, str]]) -> list[bool]:
        """Whether each ``(a, b)`` pair of extracted answers (box contents) is the same answer by this task's
        grader, for grouping sampled answers into classes (majority vote).

        math-verify is not symmetric (``verify(gold, pred)``: a gold ``x=5`` accepts ``5``), so both directions
        are graded, ``("\\boxed{a}", b)`` and ``("\\boxed{b}", a)``, in the reward's worker processes under
        its time limit, and the pair is equivalent only when both pass: a symmetric relation that never merges
        answers one reading would tell apart. Equal non-empty strings are equivalent without grading. An empty
        answer, one longer than ``MAX_ANSWER_CHARS``, one whose braces do not close inside its box, and any
        pair with a timeout or error in either direction are not equivalent. Not counted in ``stats``."""
        if self._closed:
            raise RuntimeError("MathTask is closed")
        for index, pair in enumerate(pairs):
            if len(pair) != 2 or not all(isinstance(text, str) for text in pair):
                raise TypeError(f"pairs[{index}] must be an (answer: str, answer: str) tuple")
        verdicts: list[bool] = []
        to_grade: dict[int, tuple[str, str]] = {}
        for index, (a, b) in enumerate(pairs):
            a, b = a.strip(), b.strip()
            verdicts.append(bool(a) and a == b)
            if not verdicts[-1] and _box_content(a) and _box_content(b):
                to_grade[index] = (a, b)
        items = [
            item for a, b in to_grade.values() for item in ((f"\\boxed{{{a}}}", b), (f"\\boxed{{{b}}}", a))
        ]
        results = self._graded(items) if items else []
        for k, index in enumerate(to_grade):
            verdicts[index] = results[2 * k].correct and results[2 * k + 1].correct
        return verdicts

    def close(self) -> None:
        """Stop the grader's workers. Idempotent; rewards are refused afterwards."""
        self._closed = True
        if self.grader is not None:
            self.grader.close()

    def __enter__(self) -> MathTask:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _box_content(answer: str) -> bool:
    """``answer`` (stripped) is what :func:`extract_boxed` gives back from ``\\boxed{answer}``: non-empty, short
    enough to grade, its braces closing inside the box (so ``1} \\boxed{2`` cannot pose as ``2``)."""
    return 0 < len(answer) <= MAX_ANSWER_CHARS and extract_boxed(f"\\boxed{{{answer}}}") == answer
