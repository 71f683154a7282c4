"""What an eval scores and how (the config's ``eval`` section): the run's own eval rows and each
``eval.sets`` entry as an :class:`EvalSet`, the sampled part's settings, and their names in metrics and files.

A set's name is its key in ``eval.sets``; its metrics are ``eval/<name>/...`` and its per-problem results
``eval/<name>/step_<n>.jsonl``; the run's own set keeps ``eval/...`` and ``eval/step_<n>.jsonl``. Each set is
a data config whose eval rows are scored (``data.eval_size`` of them, else ``budget.eval_size``); its
training rows are never read.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from arca_sweep.errors import DataError, UserError
from arca_sweep.eval.sampled import default_ks

SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
# metric names under eval/ that a set's name would shadow
RESERVED = ("accuracy", "reward", "length", "sampled_length")


@dataclass
class EvalSet:
    name: str | None  # None: the run's own eval rows
    task: object  # arca_sweep.tasks.Task
    problems: list
    enable_thinking: bool
    owned: bool  # built for the eval (closed by close_sets); the run's own task is the run's to close

    @property
    def prefix(self) -> str:
        return "eval/" if self.name is None else f"eval/{self.name}/"


def resolved_ks(eval_cfg) -> tuple[int, ...]:
    """``eval.k``, sorted and deduplicated, or its default for ``eval.n`` (:func:`default_ks`)."""
    if eval_cfg.k is None:
        return tuple(default_ks(eval_cfg.n))
    return tuple(sorted(set(eval_cfg.k)))


def max_new_tokens(eval_cfg, budget) -> int:
    return budget.max_new_tokens if eval_cfg.max_new_tokens is None else eval_cfg.max_new_tokens


def sampling_seed(seed: int, step: int, set_name: str | None) -> int:
    """The seed of the sampled answers of one eval: a pure function of the run seed, the step and the set's
    name (not its place in ``eval.sets``: adding or reordering sets leaves each set's samples as they were),
    drawn apart from the training RNG (an arm's training does not depend on its eval settings)."""
    name = int.from_bytes(hashlib.sha256((set_name or "").encode()).digest()[:4], "big")
    return int(np.random.SeedSequence([seed, step, name, 0xE7A1]).generate_state(1)[0] & 0x7FFFFFFF)


def eval_errors(cfg) -> list[str]:
    """What is wrong with the ``eval`` section: the counts, the sampling settings, the k list, the set names."""
    e, errors = cfg.eval, []
    if e.n < 0:
        errors.append(f"eval.n={e.n} must be >= 0 (0: greedy only)")
    if not 0.01 <= e.temperature <= 100:
        errors.append(
            f"eval.temperature={e.temperature} must be in [0.01, 100] (below 0.01 vLLM clamps it and HF's "
            "logits overflow; for argmax answers the greedy pass is always there)"
        )
    if not 0.0 < e.top_p <= 1.0:
        errors.append(f"eval.top_p={e.top_p} must be in (0, 1]")
    if e.k is not None:
        bad = [k for k in e.k if not 1 <= k <= max(e.n, 0)]
        if bad:
            errors.append(
                f"eval.k={list(e.k)}: each k must be in [1, eval.n={e.n}] (pass@k and maj@k draw k of the n "
                "samples); raise eval.n or drop " + ", ".join(map(str, bad))
            )
    if e.max_new_tokens is not None and e.max_new_tokens < 1:
        errors.append(f"eval.max_new_tokens={e.max_new_tokens} must be >= 1, or null")
    for name in e.sets:
        if not SET_NAME.fullmatch(str(name)) or name in RESERVED:
            errors.append(
                f"eval.sets.{name}: a set's name must be 1-64 letters, digits, '_' or '-' (starting with a letter "
                f"or digit) and not one of {', '.join(RESERVED)}: it names the set's metrics and files"
            )
    for key, d in [("data", cfg.data), *((f"eval.sets.{n}", d) for n, d in e.sets.items())]:
        if d.eval_size is not None and d.eval_size < 1:
            errors.append(f"{key}.eval_size={d.eval_size} must be >= 1, or null (budget.eval_size)")
    return errors


def set_size(data_cfg, budget) -> int:
    return budget.eval_size if data_cfg.eval_size is None else data_cfg.eval_size


def build_eval_sets(cfg, task, tokenizer) -> list[EvalSet]:
    """The run's own eval rows (from ``task``, the run's task) and every ``eval.sets`` entry, built eval-only;
    a set's prompts longer than its ``max_prompt_tokens`` (or the model's context minus the eval's new tokens)
    are skipped and counted as a run's are."""
    from arca_sweep.preflight import prompt_token_limit
    from arca_sweep.tasks import build_task
    from arca_sweep.train import prompt_fitter

    own = task.eval_problems(set_size(cfg.data, cfg.budget))
    sets = [EvalSet(None, task, check_unique_ids(own, "data"), cfg.data.enable_thinking, False)]
    room = SimpleNamespace(max_new_tokens=max_new_tokens(cfg.eval, cfg.budget))
    try:
        for name, data_cfg in cfg.eval.sets.items():
            key = f"eval.sets.{name}"
            try:
                limit = prompt_token_limit(data_cfg, cfg.model, room)
                fits = prompt_fitter(tokenizer, limit, data_cfg.enable_thinking)
                set_task = build_task(data_cfg, fits, eval_only=True)
            except (UserError, ValueError) as exc:  # the task's own words name data.*: say which set
                raise DataError(
                    f"eval set {name!r} (its keys: {key}.eval_path, {key}.path, ...): {exc}"
                ) from None
            problems = set_task.eval_problems(set_size(data_cfg, cfg.budget))
            sets.append(EvalSet(name, set_task, problems, data_cfg.enable_thinking, True))
            check_unique_ids(problems, key)
    except BaseException:
        close_sets(sets)
        raise
    return sets


def check_unique_ids(problems: list, key: str) -> list:
    """``problems``, refused with a :class:`DataError` when two share an id (the eval files pair arms by id)."""
    from arca_sweep.eval import problem_id

    seen: dict = {}
    for p in problems:
        pid = problem_id(p)
        if pid in seen:
            raise DataError(
                f"{key}: eval rows {seen[pid]} and {p.index} have the same id {pid!r}; the eval files pair arms "
                f"by id, so ids must be unique: point {key}.fields.id at a unique column (or drop it: rows are "
                "then numbered)"
            )
        seen[pid] = p.index
    return problems


def close_sets(sets: list[EvalSet]) -> None:
    for s in sets:
        if s.owned:
            s.task.close()


def evaluate_sets(engine, tokenizer, sets: list[EvalSet], cfg, step: int, path_of=None) -> dict:
    """Every set's eval at ``step`` (:func:`arca_sweep.eval.evaluate`): its metrics under its prefix, its
    task's counters (skipped rows, grader timeouts) for a set built here, and ``perf/eval_s``, the seconds
    of the whole eval. ``path_of(eval_set)``: where its per-problem results go (None: not written)."""
    from arca_sweep.eval import Sampling, evaluate

    t0 = time.time()
    ks, metrics = resolved_ks(cfg.eval), {}
    for s in sets:
        sampling = None
        if cfg.eval.n > 0:
            seed = sampling_seed(cfg.seed, step, s.name)
            sampling = Sampling(cfg.eval.n, cfg.eval.temperature, cfg.eval.top_p, ks, seed)
        metrics.update(
            evaluate(
                engine,
                tokenizer,
                s.task,
                s.problems,
                max_new_tokens(cfg.eval, cfg.budget),
                s.enable_thinking,
                None if path_of is None else path_of(s),
                sampling,
                s.prefix,
            )
        )
        if s.owned:
            metrics.update({s.prefix + k: v for k, v in s.task.stats.items()})
    metrics["perf/eval_s"] = time.time() - t0
    return metrics


def eval_tokens(sets: list[EvalSet], cfg) -> int:
    """The most tokens one eval generates: every set's problems, a greedy answer and ``eval.n`` samples each,
    at the eval's new tokens (for rollout=auto's estimate of a run)."""
    return sum(len(s.problems) for s in sets) * (1 + cfg.eval.n) * max_new_tokens(cfg.eval, cfg.budget)
