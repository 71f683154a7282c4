"""The arms of a sweep dir as the report reads them: each arm's config, ``metrics.jsonl``,
``samples.jsonl``, its per-problem eval files (``eval/step_<n>.jsonl`` and ``eval/<set>/step_<n>.jsonl``)
and whether it finished (``summary.json``); their cells over the sweep's axes and per-unit results. Every
read of an arm's files is in this module."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import yaml

from arca_sweep import heatmap
from arca_sweep.arm_dir import METRICS, SAMPLES, ArmDir, ArmStateError, read_jsonl, results_path
from arca_sweep.arm_dir.names import unquote
from arca_sweep.diagnostics import REGIMES
from arca_sweep.eval.sampled import problem_metrics
from arca_sweep.eval.sets import resolved_ks
from arca_sweep.report.stats import as_number, last_quarter, mean


class NotASweepError(ValueError):
    """The directory holds no arm (no subdirectory with ``.hydra/config.yaml``)."""


# ------------------------------------------------------------------------------------------------
# Reading the arms
# ------------------------------------------------------------------------------------------------

# Overrides that cannot change an arm's results: never part of its cell (SPEC: statistics of a comparison).
NEUTRAL_KEYS = {
    "seed",
    "threads",
    "device",
    "accept_changed_inputs",
    "credit.timeout_s",
    "data.reward_timeout_s",
}
NEUTRAL_PREFIXES = ("logger", "hydra", "dist")  # dist: how many processes ran an arm, never its result
_DIR_ITEM = re.compile(r",(?=[+~]*[\w./-]+=)")  # a comma that starts the next key=value of a dir name


def is_neutral(key: str) -> bool:
    """``seed``, ``threads``, ``device``, ``logger``/``logger.*`` and ``hydra.*`` do not define a cell."""
    return key in NEUTRAL_KEYS or any(key == p or key.startswith(p + ".") for p in NEUTRAL_PREFIXES)


def parse_override(text: str) -> tuple[str, str]:
    """``rank='16'`` -> ``("rank", "16")``; ``+optim.foo=1`` -> ``("optim.foo", "1")``."""
    key, _, value = str(text).partition("=")
    return key.lstrip("+~").strip(), unquote(value.strip())


@dataclass
class Arm:
    path: Path
    credit: str  # the training signal (credit.name of its config)
    rank: int | str
    seed: int | str
    overrides: dict[str, str] = field(default_factory=dict)  # every non-neutral override of the arm
    config: dict = field(default_factory=dict)  # .hydra/config.yaml
    choices: dict = field(default_factory=dict)  # config group choices (.hydra/hydra.yaml)
    records: list[dict] = field(default_factory=list)  # metrics.jsonl
    samples: list[dict] = field(default_factory=list)  # samples.jsonl
    finished: bool = False  # summary.json is there and whole
    cell: tuple = ()  # ((axis, value), ...) over the sweep's axes; set by load_arms
    # {eval set: {problem id key: {metric: value}} | None} of the final evals read so far (final_eval)
    final_evals: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def steps(self) -> list[dict]:
        """The training steps' records (step >= 1)."""
        return [r for r in self.records if r.get("step", 0) >= 1]

    @property
    def label(self) -> str:
        return cell_label(self.cell)

    def value(self, key: str) -> str:
        """The arm's value of ``key``: its override, else its config group choice, else its config entry."""
        if key in self.overrides:
            return self.overrides[key]
        if self.choices.get(key) is not None:
            return str(self.choices[key])
        node = self.config
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return "-"
            node = node[part]
        return str(node)


def cell_label(cell: tuple) -> str:
    """``credit=arca, credit.normalize=mean``; ``all arms`` for a sweep without axes."""
    return ", ".join(f"{k}={v}" for k, v in cell) or "all arms"


def _yaml(path: Path):
    """A ``.hydra`` YAML file's content, None when absent; an :class:`ArmStateError` naming it when damaged."""
    if not path.is_file():
        return None
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        cause = str(exc).splitlines()[0][:120]
        raise ArmStateError(
            f"{path} is not readable YAML ({type(exc).__name__}: {cause}): the arm's labels are damaged. Restore "
            "it from the arm's launch (the overrides are also in summary.json), or move the arm out of the sweep dir"
        ) from None


def all_overrides(path: Path) -> dict[str, str]:
    """The arm's overrides: from ``.hydra/overrides.yaml``, else parsed from its dir name."""
    listed = _yaml(path / ".hydra" / "overrides.yaml")
    if not isinstance(listed, list):
        # the dir name's escapes (arca_sweep.main.run_name) undone: %2F is /, %27 ', %22 ", %25 %
        listed = [
            item.replace("%2F", "/").replace("%27", "'").replace("%22", '"').replace("%25", "%")
            for item in _DIR_ITEM.split(path.name)
            if "=" in item
        ]
    return dict(parse_override(o) for o in listed)


def read_cell_overrides(path: Path) -> dict[str, str]:
    """The arm's non-neutral overrides (those that define its cell)."""
    return {k: v for k, v in all_overrides(path).items() if not is_neutral(k)}


def load_arm(path: Path) -> Arm:
    config = _yaml(path / ".hydra" / "config.yaml") or {}
    hydra = (_yaml(path / ".hydra" / "hydra.yaml") or {}).get("hydra") or {}
    return Arm(
        path=path,
        credit=str((config.get("credit") or {}).get("name", "?")),
        rank=(config.get("rank") or {}).get("r", "?"),
        seed=config.get("seed", all_overrides(path).get("seed", "?")),
        overrides=read_cell_overrides(path),
        config=config,
        choices=(hydra.get("runtime") or {}).get("choices") or {},
        records=read_metrics(path / METRICS),
        samples=read_jsonl(path / SAMPLES, bad_lines="skip"),
        finished=_summary_ok(path),
    )


def _summary_ok(path: Path) -> bool:
    """Whether the arm finished: :meth:`ArmDir.read_summary` reads a JSON object (a cut one is not)."""
    try:
        return isinstance(ArmDir(path).read_summary(), dict)
    except (ArmStateError, OSError):
        return False


def sweep_axes(arms: list[Arm]) -> list[str]:
    """The keys whose values differ between arms (seed and neutral keys aside), sorted. Every
    override counts, whatever config it names: ``optim.lr=...`` is an axis like ``credit=...``."""
    keys = sorted({k for arm in arms for k in arm.overrides})
    return [k for k in keys if len({arm.value(k) for arm in arms}) > 1]


def natural_key(value: str) -> tuple:
    """Numbers before words, numbers by value: ``4 < 8 < 64 < arca``."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def load_arms(sweep_dir: Path) -> list[Arm]:
    """Every arm under ``sweep_dir``, each with its cell over the sweep's axes, sorted by cell, seed, name."""
    if not sweep_dir.is_dir():
        raise NotASweepError(f"{sweep_dir} is not a directory")
    arms = [load_arm(p) for p in sorted(sweep_dir.iterdir()) if (p / ".hydra" / "config.yaml").is_file()]
    if not arms:
        raise NotASweepError(
            f"{sweep_dir} is not a sweep dir: no arm subdirectory with .hydra/config.yaml "
            "(pass the hydra.sweep.dir of a multirun, e.g. outputs/multirun/<date>_<time>)"
        )
    axes = sweep_axes(arms)
    for arm in arms:
        arm.cell = tuple((k, arm.value(k)) for k in axes)
    return sorted(arms, key=lambda a: (cell_sort_key(a.cell), natural_key(str(a.seed)), a.name))


def cell_sort_key(cell: tuple) -> tuple:
    return tuple(natural_key(v) for _, v in cell)


def run_mean(arm: Arm, key: str) -> float | None:
    """Mean of ``key`` over the arm's training steps (null values skipped)."""
    return mean(r.get(key) for r in arm.steps)


def accuracy(arm: Arm, which: str) -> float | None:
    """``initial``: eval accuracy of the first record holding one (step 0); ``final``: of the last."""
    evals = [v for v in (as_number(r.get("eval/accuracy")) for r in arm.records) if v is not None]
    if not evals:
        return None
    return evals[0] if which == "initial" else evals[-1]


def groups(arms: list[Arm]) -> dict[tuple, list[Arm]]:
    """Arms by cell (their seeds), in sorted order (arms are already sorted)."""
    out: dict[tuple, list[Arm]] = {}
    for arm in arms:
        out.setdefault(arm.cell, []).append(arm)
    return out


def signals_of(arms: list[Arm]) -> list[str]:
    """Every signal with shadow diagnostics in the arms' metrics, in display order."""
    names = {
        key.split("/")[1]
        for arm in arms
        for r in arm.steps
        for key in r
        if key.startswith("shadow/") and key.endswith("/regime/uniform")
    }
    return heatmap.ordered_signals(names)


def shadow_means(arms: list[Arm], signal: str) -> dict[str, float | None]:
    """Mean over all steps of all ``arms`` of the signal's shadow regime shares, Gini and ETR."""
    keys = {r: f"shadow/{signal}/regime/{r}" for r in REGIMES}
    keys |= {"gini": f"shadow/{signal}/gini/mean", "etr": f"shadow/{signal}/etr/mean"}
    return {name: mean(r.get(key) for arm in arms for r in arm.steps) for name, key in keys.items()}


# ------------------------------------------------------------------------------------------------
# Per-unit results, for intervals and paired comparisons
# ------------------------------------------------------------------------------------------------


def final_eval_step(arm: Arm, eval_set: str | None = None) -> int | None:
    """The step of the arm's last eval of ``eval_set`` (None: its own eval rows): the last ``metrics.jsonl``
    record with that set's accuracy (``eval/accuracy``, ``eval/<set>/accuracy``)."""
    key = f"{eval_prefix(eval_set)}accuracy"
    steps = [r["step"] for r in arm.records if as_number(r.get(key)) is not None]
    return steps[-1] if steps else None


def eval_correct(arm: Arm) -> dict | None:
    """``{problem id: 0/1}`` of the arm's last eval on its own eval rows (``eval/step_<n>.jsonl``); None
    when the arm has no such file (an older run, or a run without per-problem results)."""
    values = problem_values(arm, None, "accuracy")
    return None if values is None else {pid: int(v) for pid, v in values.items()}


# ------------------------------------------------------------------------------------------------
# Eval sets: the run's own eval rows (None) and each eval.sets entry, per-problem metrics of the final eval
# ------------------------------------------------------------------------------------------------

_EVAL_METRIC = re.compile(r"accuracy|length|sampled_length|(?:mean|pass|maj)@[1-9][0-9]*")


def eval_prefix(eval_set: str | None) -> str:
    """The metrics' prefix of an eval set: ``eval/`` for the run's own rows, ``eval/<set>/`` for a set."""
    return "eval/" if eval_set is None else f"eval/{eval_set}/"


def eval_config(arm: Arm) -> dict:
    """The arm's ``eval`` section (empty for arms of versions before eval sets)."""
    section = arm.config.get("eval")
    return section if isinstance(section, dict) else {}


def eval_set_names(arm: Arm) -> list[str | None]:
    """The arm's eval sets: None (its own eval rows), then its ``eval.sets`` names in config order."""
    sets = eval_config(arm).get("sets")
    return [None, *(str(name) for name in (sets if isinstance(sets, dict) else {}))]


def eval_data_name(arm: Arm, eval_set: str | None) -> str:
    """The data config name of an eval set: ``data.name``, or ``eval.sets.<set>.name``."""
    data = arm.config.get("data") if eval_set is None else (eval_config(arm).get("sets") or {}).get(eval_set)
    return str((data or {}).get("name", "?")) if isinstance(data, dict) else "?"


def eval_ks(arm: Arm) -> tuple[int, ...]:
    """The k of the arm's pass@k and maj@k (:func:`arca_sweep.eval.sets.resolved_ks` of its ``eval``)."""
    section = eval_config(arm)
    n, k = section.get("n", 0), section.get("k")
    if type(n) is not int or not (k is None or isinstance(k, list) and all(type(x) is int for x in k)):
        return ()  # no sampled eval, or a config this version cannot read: greedy metrics only
    return resolved_ks(SimpleNamespace(n=n, k=k))


def metric_order(metric: str) -> tuple:
    """accuracy, mean@n, pass@k, maj@k (k ascending), length, sampled_length."""
    name, _, k = metric.partition("@")
    rank = ["accuracy", "mean", "pass", "maj", "length", "sampled_length"]
    return (rank.index(name) if name in rank else len(rank), int(k) if k.isdigit() else 0, metric)


def final_eval(arm: Arm, eval_set: str | None) -> dict | None:
    """``{problem id key: {metric: value}}`` of the arm's final eval of ``eval_set`` (its eval file read
    by :func:`read_eval_results`, each record's values by :func:`arca_sweep.eval.sampled.problem_metrics`
    with the arm's ks; records without ``response_tokens`` have no ``length``); None without the file."""
    if eval_set not in arm.final_evals:
        step = final_eval_step(arm, eval_set)
        path = None if step is None else results_path(arm.path, step, eval_set)
        out = None
        if path is not None and path.is_file():
            ks = eval_ks(arm)
            out = {json.dumps(r["id"]): _problem_values(r, ks) for r in read_eval_results(path)} or None
        arm.final_evals[eval_set] = out
    return arm.final_evals[eval_set]


def _problem_values(record: dict, ks: tuple[int, ...]) -> dict[str, float]:
    if "response_tokens" in record:
        return problem_metrics(record, ks)
    values = problem_metrics({**record, "response_tokens": 0}, ks)  # a file of an earlier version
    del values["length"]
    return values


def problem_values(arm: Arm, eval_set: str | None, metric: str) -> dict | None:
    """``{problem id key: value}`` of ``metric`` at the arm's final eval of ``eval_set``; None without
    the eval file or when a problem lacks the metric."""
    rows = final_eval(arm, eval_set)
    if rows is None or any(metric not in v for v in rows.values()):
        return None
    return {pid: v[metric] for pid, v in rows.items()}


def eval_metrics(arm: Arm, eval_set: str | None) -> list[str]:
    """The metrics the arm has for ``eval_set`` (:func:`metric_order`): those every problem of its final
    eval file has; without the file, those its final eval record in ``metrics.jsonl`` logged."""
    rows = final_eval(arm, eval_set)
    if rows is not None:
        names = set.intersection(*(set(v) for v in rows.values()))
    else:
        names = {
            key.removeprefix(eval_prefix(eval_set))
            for key, value in _final_eval_record(arm, eval_set).items()
            if key.startswith(eval_prefix(eval_set)) and as_number(value) is not None
        }
        names = {m for m in names if _EVAL_METRIC.fullmatch(m)}
    return sorted(names, key=metric_order)


def eval_value(arm: Arm, eval_set: str | None, metric: str) -> float | None:
    """The arm's final ``metric`` on ``eval_set``: the mean over its eval file's problems, else (no file)
    the value its final eval record in ``metrics.jsonl`` logged, else None."""
    values = problem_values(arm, eval_set, metric)
    if values is not None:
        return mean(values.values())
    if final_eval(arm, eval_set) is not None:
        return None
    return as_number(_final_eval_record(arm, eval_set).get(eval_prefix(eval_set) + metric))


def _final_eval_record(arm: Arm, eval_set: str | None) -> dict:
    step = final_eval_step(arm, eval_set)
    return next((r for r in arm.records if r["step"] == step), {})


REPORT_HINT = (
    "the file was changed after its run wrote it. Re-run that arm's command to rewrite its records (a finished "
    "arm: delete summary.json first; metrics.jsonl is restored from the checkpoint, an eval file by its eval), "
    "or move the arm out of the sweep dir"
)


_SET_ACCURACY = re.compile(r"eval/(?:[^/]+/)?accuracy")  # eval/accuracy, eval/<set>/accuracy


def read_metrics(path: Path) -> list[dict]:
    """An arm's ``metrics.jsonl``, refusing damage: only a torn last line (a running arm's) is dropped, with a
    warning; any other bad line, a step that is not a non-negative integer, or a step recorded twice is an
    :class:`ArmStateError` naming the file, the line and what to do (:data:`REPORT_HINT`)."""
    records = read_jsonl(path, bad_lines="torn", hint=REPORT_HINT)
    for number, r in enumerate(records, 1):
        step = r.get("step")
        if type(step) is not int or step < 0:
            raise ArmStateError(
                f"{path}: record {number} has step {step!r}, not a step number: {REPORT_HINT}"
            )
        if step != number - 1:  # the writer logs steps 0, 1, 2, ... each once
            what = "recorded twice" if step < number - 1 else f"after step {number - 2}: steps are missing"
            raise ArmStateError(f"{path}: record {number} is step {step}, {what}: {REPORT_HINT}")
        bad = [k for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)]
        for key, acc in r.items():
            if _SET_ACCURACY.fullmatch(key) and acc is not None:
                if type(acc) not in (int, float) or not 0 <= acc <= 1:
                    bad.append(f"{key} = {acc!r}")
        if bad:  # the writer turns non-finite numbers into null, and an accuracy is a share
            raise ArmStateError(
                f"{path}: step {step} has impossible values ({', '.join(map(str, bad))}): {REPORT_HINT}"
            )
    return records


def _is_01(value) -> bool:
    return type(value) in (int, bool) and value in (0, 1)


def _is_length(value) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and value >= 0


def read_eval_results(path: Path) -> list[dict]:
    """An eval file (``eval/step_<n>.jsonl``, ``eval/<set>/step_<n>.jsonl``), refusing damage as
    :func:`read_metrics` does: every record has an ``id`` (a string or an integer) seen once in the file, a
    ``correct`` of 0 or 1 and, where present, a non-negative ``response_tokens``; its ``samples`` (absent in
    files of earlier versions) are a list of objects, each with a ``correct`` of 0 or 1, a ``class`` that is
    an integer or null and a non-negative ``response_tokens``, as many in every record as in the first."""
    rows = read_jsonl(path, bad_lines="torn", hint=REPORT_HINT)
    seen: dict[str, int] = {}
    for number, r in enumerate(rows, 1):
        pid, correct = r.get("id"), r.get("correct")
        if type(pid) not in (int, str):
            raise ArmStateError(f"{path}: record {number} has id {pid!r}, not a problem id: {REPORT_HINT}")
        where = f"{path}: record {number} (id {pid!r})"
        if not _is_01(correct):
            raise ArmStateError(f"{where} has correct {correct!r}, not 0 or 1: {REPORT_HINT}")
        if "response_tokens" in r and not _is_length(r["response_tokens"]):
            raise ArmStateError(
                f"{where} has response_tokens {r['response_tokens']!r}, not a token count: {REPORT_HINT}"
            )
        _check_samples(r, where, _sample_count(rows[0]))
        key = json.dumps(pid)
        if key in seen:
            raise ArmStateError(
                f"{path}: problem id {pid!r} appears twice (records {seen[key]} and {number}): {REPORT_HINT}"
            )
        seen[key] = number
    return rows


def _sample_count(record: dict) -> int | None:
    samples = record.get("samples")
    return len(samples) if isinstance(samples, list) else None


def _check_samples(record: dict, where: str, count: int | None) -> None:
    """A record's ``samples`` as :func:`read_eval_results` requires them (``count``: the first record's)."""
    if "samples" not in record:
        if count is not None:
            raise ArmStateError(f"{where} has no samples, record 1 has {count}: {REPORT_HINT}")
        return
    samples = record["samples"]
    if not isinstance(samples, list):
        raise ArmStateError(f"{where} has samples {samples!r:.60}, not a list: {REPORT_HINT}")
    if len(samples) != count:
        first = "none" if count is None else count
        raise ArmStateError(f"{where} has {len(samples)} samples, record 1 has {first}: {REPORT_HINT}")
    for i, sample in enumerate(samples):
        problem = _sample_problem(sample)
        if problem:
            raise ArmStateError(f"{where}: sample {i} has {problem}: {REPORT_HINT}")


def _sample_problem(sample) -> str | None:
    """What is wrong with one entry of a record's ``samples``, None if nothing."""
    if not isinstance(sample, dict):
        return f"{sample!r:.60}, not an object"
    if not _is_01(sample.get("correct")):
        return f"correct {sample.get('correct')!r}, not 0 or 1"
    cls = sample.get("class")
    if cls is not None and type(cls) is not int:
        return f"class {cls!r}, not an integer or null"
    if not _is_length(sample.get("response_tokens")):
        return f"response_tokens {sample.get('response_tokens')!r}, not a token count"
    return None


def last_quarter_rewards(arm: Arm, key: str = "reward/mean") -> dict | None:
    """``{step: value}`` of ``key`` over the last quarter of the arm's training steps (ceil(T / 4))."""
    steps = last_quarter(arm.steps)
    out = {r["step"]: as_number(r.get(key)) for r in steps}
    out = {s: v for s, v in out.items() if v is not None}
    return out or None


def unit_matrix(per_seed: list[dict]) -> tuple[list, np.ndarray] | None:
    """Rows of ``{unit: value}`` (one per seed) as a ``[seeds, units]`` matrix over the units every
    row has, in the first row's order; None if a row is missing or no unit is shared."""
    if not per_seed or any(row is None for row in per_seed):
        return None
    units = [u for u in per_seed[0] if all(u in row for row in per_seed[1:])]
    if not units:
        return None
    return units, np.array([[row[u] for u in units] for row in per_seed], dtype=float)
