"""The ``jsonl`` task: a user's prompts and answers from a JSONL file, graded by a user's reward function.

    python -m arca_sweep data=jsonl data.path=rows.jsonl data.reward=my_rewards:exact_match

Each line is an object with the prompt under ``prompt`` (or ``question``) and the gold answer under
``answer`` (any JSON value, passed to the reward as a string); other fields go to ``Problem.meta``.
Training rows come in a ``data.seed`` order shared by every arm (one seeded permutation per epoch, as
``data=math``). Evaluation uses ``data.eval_path`` (same format) in file order when given, else the
training file's first rows in file order (``data.path`` null: the packaged example rows): then the eval set is not held out, so set ``data.eval_path``
for a real evaluation. ``reward(response_text, answer) -> float`` must return a finite number within
``data.reward_timeout_s`` and must not raise or exit; otherwise the run stops naming the function and the row.
Built eval-only (an eval set), the task reads its eval rows alone: ``data.eval_path``, else the
``data.path`` file (or the packaged example rows).
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable
from pathlib import Path

import numpy as np

from arca_sweep.errors import DataError
from arca_sweep.tasks import Problem
from arca_sweep.tasks.rows import RowsTask, read_file

EXAMPLE_ROWS = Path(__file__).resolve().parents[1] / "assets" / "examples" / "arith_rows.jsonl"


def rows_to_problems(rows: list[dict], source: str) -> list[Problem]:
    """:class:`Problem` rows in file order; a row without a usable prompt or answer is a :class:`DataError`
    naming the file, the row and what is wrong (before any model loads)."""
    problems = []
    for i, row in enumerate(rows):
        where = f"{source}: row {i + 1}"
        prompt = row.get("prompt", row.get("question"))
        if not isinstance(prompt, str) or not prompt.strip():
            got = "none" if prompt is None else f"{type(prompt).__name__} {str(prompt)[:40]!r}"
            raise DataError(
                f"{where} needs a non-empty text 'prompt' (or 'question'); it has {got}. Fix the row."
            )
        if "answer" not in row:
            raise DataError(
                f"{where} has no 'answer'; every row needs the gold answer its reward compares with"
            )
        gold = row["answer"]
        if gold is None or (isinstance(gold, str) and not gold.strip()):
            raise DataError(f"{where} has an empty answer ({gold!r}); give the gold answer or drop the row")
        answer = gold if isinstance(gold, str) else json.dumps(gold)
        meta = {k: v for k, v in row.items() if k not in ("prompt", "question", "answer")}
        problems.append(Problem(index=i, question=prompt.strip(), answer=answer, meta=meta))
    if not problems:
        raise DataError(f"{source}: no rows (the file is empty); give it one JSON object per line")
    return problems


class JsonlTask(RowsTask):
    def __init__(
        self,
        train: list[Problem],
        eval_rows: list[Problem],
        reward_fn: Callable,
        seed: int = 0,
        prompt_fits: Callable[[str], bool] | None = None,
        timeout_s: float | None = None,
        correct_at: float = 1.0,
        eval_only: bool = False,
    ):
        """``timeout_s``: the reward's wall-time limit per call (None: none). ``prompt_fits(question)`` False: the
        row is skipped and counted (``data/*_skipped_too_long``). ``eval_only``: ``train`` is ignored (an eval set)."""
        self._data_stats = {}
        self.eval_only = eval_only
        splits = {"eval": eval_rows} if eval_only else {"train": train, "eval": eval_rows}
        if prompt_fits is not None:
            for split, rows in splits.items():
                kept = [p for p in rows if prompt_fits(p.question)]
                self._data_stats[f"data/{split}_skipped_too_long"] = len(rows) - len(kept)
                if not kept:
                    raise ValueError(f"data=jsonl: every {split} row is longer than data.max_prompt_tokens")
                splits[split] = kept
        self.train, self.eval = splits.get("train", []), splits["eval"]
        self.reward_fn, self.seed = reward_fn, seed
        self.timeout_s, self.correct_at = timeout_s, correct_at
        self.name = f"{getattr(reward_fn, '__module__', '?')}:{getattr(reward_fn, '__name__', '?')}"

    @classmethod
    def from_config(
        cls, cfg, prompt_fits: Callable[[str], bool] | None = None, eval_only: bool = False
    ) -> JsonlTask:
        from arca_sweep.plugins import load_callable

        path = Path(cfg.path).expanduser() if cfg.path is not None else EXAMPLE_ROWS
        if eval_only:  # the eval rows alone: data.eval_path, else the training file's rows
            source = Path(cfg.eval_path).expanduser() if cfg.eval_path else path
            train, evals = [], rows_to_problems(read_file(source), str(source))
        else:
            train = rows_to_problems(read_file(path), str(path))
            evals = (
                rows_to_problems(read_file(Path(cfg.eval_path).expanduser()), cfg.eval_path)
                if cfg.eval_path
                else train
            )
        reward = load_callable(cfg.reward, "data.reward")
        return cls(
            train,
            evals,
            reward,
            seed=cfg.seed,
            prompt_fits=prompt_fits,
            timeout_s=cfg.get("reward_timeout_s"),
            correct_at=cfg.get("correct_at", 1.0),
            eval_only=eval_only,
        )

    def reward(self, response_text: str, problem: Problem) -> float:
        """The plug-in's reward, under its contract: a finite real number (an int or bool counts), returned
        within ``data.reward_timeout_s``; anything else stops the run naming ``data.reward`` and the row."""
        from arca_sweep.plugins import PluginFailure, call_plugin

        where = f"on problem {problem.index} (answer {problem.answer[:60]!r})"
        value = call_plugin(
            self.reward_fn,
            (response_text, problem.answer),
            {},
            key="data.reward",
            where=where,
            timeout_s=self.timeout_s,
            limit_key="data.reward_timeout_s",
        )
        if not isinstance(value, numbers.Real) or (hasattr(value, "ndim") and value.ndim):
            raise PluginFailure(
                f"data.reward {self.name} returned {type(value).__name__} {repr(value)[:60]} {where}; a reward "
                "must be a real number (float, int or bool)"
            )
        try:
            value = float(value)
        except OverflowError:  # an int past float's range
            value = math.inf
        if not math.isfinite(value):
            raise PluginFailure(
                f"data.reward {self.name} returned the non-finite reward {value} {where}; a reward must be a "
                "finite number"
            )
        return value

    def correct(self, response_texts: list[str], problems: list[Problem], rewards: list[float]) -> list[bool]:
        """Which eval answers are correct: the reward function's own ``correct(response_text, answer)``
        attribute where it has one (a bool, under the plug-in contract), else reward >= ``data.correct_at``."""
        judge = getattr(self.reward_fn, "correct", None)
        if not callable(judge):
            return [r >= self.correct_at for r in rewards]
        from arca_sweep.plugins import PluginFailure, call_plugin

        out = []
        for text, p in zip(response_texts, problems, strict=True):
            where = f"on problem {p.index}"
            verdict = call_plugin(
                judge,
                (text, p.answer),
                {},
                key="data.reward's correct",
                where=where,
                timeout_s=self.timeout_s,
                limit_key="data.reward_timeout_s",
            )
            if isinstance(verdict, np.bool_):
                verdict = bool(verdict)
            if not (
                isinstance(verdict, bool) or (isinstance(verdict, numbers.Integral) and verdict in (0, 1))
            ):
                raise PluginFailure(
                    f"data.reward {self.name}.correct returned {type(verdict).__name__} {repr(verdict)[:60]} "
                    f"{where}; it must return True or False"
                )
            out.append(bool(verdict))
        return out

    def rewards(self, response_texts: list[str], problems: list[Problem]) -> list[float]:
        return [self.reward(t, p) for t, p in zip(response_texts, problems, strict=True)]

    @property
    def stats(self) -> dict[str, float]:
        return dict(self._data_stats)

    def close(self) -> None:
        pass
