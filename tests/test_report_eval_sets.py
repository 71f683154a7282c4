"""The report's eval-set and power sections (``arca_sweep.report.eval_sets``) on a synthetic sweep dir: two
cells x two seeds, the run's own eval rows and two eval sets (one only in one cell), n = 4 samples per
problem with k = 2, 4, ties and samples without an answer. Every printed number is recomputed from the
per-problem files with slow, obviously-correct references (pass@k and maj@k by enumerating k-subsets)."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import yaml

from arca_sweep.arm_dir import ArmStateError
from arca_sweep.eval.sampled import problem_metrics
from arca_sweep.report import build_report
from arca_sweep.report.power import power_analysis
from arca_sweep.report.stats import bootstrap_interval, paired_difference
from tests.test_report import parse_cell, parse_table

N_SAMPLES = 4
KS = [2, 4]
FINAL_STEP = 3
# eval set (None: the run's own eval rows) -> data config name, problem ids, the credits that evaluate it
SETS = {
    None: ("arith", list(range(24)), ("arca", "uniform")),
    "small": ("arith_small", [f"s{i}" for i in range(20)], ("arca", "uniform")),
    "hard": ("math500", list(range(100, 112)), ("arca",)),
}
HEADINGS = {
    None: "### arith (the run's eval rows)",
    "small": "### small (data: arith_small)",
    "hard": "### hard (data: math500)",
}
METRICS = ["accuracy", "mean@4", "pass@2", "pass@4", "maj@2", "maj@4", "length", "sampled_length"]
ANSWERS = ["g", "w1", "w2", None]  # "g" is the gold answer; None: no answer
SKILL = {"arca": [0.5, 0.2, 0.1, 0.2], "uniform": [0.3, 0.3, 0.2, 0.2]}
# the first problems' samples: a 1-1 tie with two silent samples, all silent, 2-2 ties, a three-way tie
FORCED = [["g", "w1", None, None], [None] * 4, ["g", "w1", "g", "w1"], ["w1", "w2", "g", None]]
TOL = 5e-4 + 1e-9  # printed with 3 decimals


# ------------------------------------------------------------------------------------------------
# A synthetic sweep dir
# ------------------------------------------------------------------------------------------------


def fake_record(rng, pid, position: int, credit: str) -> dict:
    answers = (
        FORCED[position] if position < len(FORCED) else list(rng.choice(ANSWERS, N_SAMPLES, p=SKILL[credit]))
    )
    answers = [None if a is None else str(a) for a in answers]
    classes: dict = {}
    samples = [
        {
            "answer": a,
            "class": None if a is None else classes.setdefault(a, len(classes)),
            "correct": int(a == "g"),
            "response_tokens": int(rng.integers(5, 60)),
            "finish": "stop" if a is not None else "length",
        }
        for a in answers
    ]
    return {
        "id": pid,
        "position": position,
        "correct": int(rng.random() < SKILL[credit][0] + 0.1),
        "answer": "g",
        "gold": "g",
        "response_tokens": int(rng.integers(5, 50)),
        "finish": "stop",
        "samples": samples,
    }


def old_record(rng, pid, position: int) -> dict:
    """A record of a version before sampled evals: no samples, no response_tokens."""
    return {"id": pid, "position": position, "correct": int(rng.random() < 0.4), "answer": "g"}


def write_arm(
    sweep_dir: Path, credit: str, seed: int, rng, old: bool = False, drop: dict | None = None
) -> Path:
    """A finished arm; ``old``: of a version before eval sets (no eval section, records without samples);
    ``drop``: {eval set: number of trailing problems its final eval lacks}."""
    arm = sweep_dir / f"credit={credit},seed={seed}"
    (arm / ".hydra").mkdir(parents=True)
    sets = [s for s, (_, _, credits) in SETS.items() if credit in credits and not (old and s)]
    config = {"credit": {"name": credit}, "seed": seed, "data": {"name": "arith", "eval_size": None}}
    if not old:
        config["eval"] = {
            "sets": {s: {"name": SETS[s][0], "eval_size": len(SETS[s][1])} for s in sets if s},
            "n": N_SAMPLES,
            "temperature": 0.6,
            "top_p": 0.95,
            "k": KS,
            "max_new_tokens": None,
        }
    (arm / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (arm / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"credit={credit}", f"seed={seed}"]))
    records = [{"step": 0}] + [
        {"step": s, "reward/mean": float(rng.uniform())} for s in range(1, FINAL_STEP + 1)
    ]
    for step in (0, FINAL_STEP):
        for s in sets:
            ids = SETS[s][1]
            if step == FINAL_STEP and drop and s in drop:
                ids = ids[: -drop[s]]
            rows = [
                old_record(rng, i, p) if old else fake_record(rng, i, p, credit) for p, i in enumerate(ids)
            ]
            path = arm / "eval" / (s or "") / f"step_{step}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            prefix = "eval/" if s is None else f"eval/{s}/"
            values = [reference_values(r) for r in rows]
            records[step] |= {prefix + m: float(np.mean([v[m] for v in values])) for m in values[0]}
    (arm / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (arm / "summary.json").write_text(json.dumps({"steps": FINAL_STEP}))
    return arm


def make_sweep(root: Path) -> Path:
    rng = np.random.default_rng(7)
    sweep_dir = root / "sweep"
    for credit in ("arca", "uniform"):
        for seed in (0, 1):
            write_arm(
                sweep_dir, credit, seed, rng, drop={"small": 2} if (credit, seed) == ("uniform", 1) else None
            )
    return sweep_dir


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, str]:
    sweep_dir = make_sweep(tmp_path_factory.mktemp("eval_sets"))
    return sweep_dir, build_report(sweep_dir).read_text()


# ------------------------------------------------------------------------------------------------
# Slow references
# ------------------------------------------------------------------------------------------------


def reference_pass(correct: list[int], k: int) -> float:
    subsets = list(combinations(range(len(correct)), k))
    return sum(any(correct[i] for i in s) for s in subsets) / len(subsets)


def reference_maj(classes: list, correct: list[int], k: int) -> float:
    """Each k-subset votes (no answer: no vote); the winning classes split the point evenly."""
    right = {c: bool(ok) for c, ok in zip(classes, correct, strict=True) if c is not None}
    total = 0.0
    subsets = list(combinations(range(len(classes)), k))
    for s in subsets:
        votes = Counter(classes[i] for i in s if classes[i] is not None)
        if votes:
            top = max(votes.values())
            winners = [c for c, v in votes.items() if v == top]
            total += sum(right[c] for c in winners) / len(winners)
    return total / len(subsets)


def reference_values(record: dict) -> dict[str, float]:
    out = {"accuracy": float(record["correct"])}
    if "response_tokens" in record:
        out["length"] = float(record["response_tokens"])
    samples = record.get("samples")
    if samples:
        correct = [s["correct"] for s in samples]
        classes = [s["class"] for s in samples]
        out[f"mean@{len(samples)}"] = sum(correct) / len(samples)
        for k in KS:
            out[f"pass@{k}"] = reference_pass(correct, k)
            out[f"maj@{k}"] = reference_maj(classes, correct, k)
        out["sampled_length"] = sum(s["response_tokens"] for s in samples) / len(samples)
    return out


def final_values(sweep_dir: Path, credit: str, seed: int, eval_set: str | None) -> list[tuple]:
    """``[(id, {metric: value})]`` of the arm's final eval, in file order."""
    path = sweep_dir / f"credit={credit},seed={seed}" / "eval" / (eval_set or "") / f"step_{FINAL_STEP}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [(r["id"], reference_values(r)) for r in rows]


def matrix(per_arm: list[list[tuple]], metric: str) -> np.ndarray:
    """``[arms, problems]`` over the problems every arm has, in the first arm's order."""
    common = [pid for pid, _ in per_arm[0] if all(pid in dict(rows) for rows in per_arm[1:])]
    return np.array([[dict(rows)[pid][metric] for pid in common] for rows in per_arm])


def assert_cell(printed: str, *want: float) -> None:
    got = parse_cell(printed)
    assert len(got) == len(want) and np.allclose(got, want, rtol=0, atol=TOL), (printed, want)


# ------------------------------------------------------------------------------------------------
# The eval-set tables
# ------------------------------------------------------------------------------------------------


def test_every_number_of_every_eval_set_table(sweep):
    sweep_dir, text = sweep
    assert (
        text.index("## Paired comparison")
        < text.index("## Eval sets (finished arms)")
        < text.index("## Power")
    )
    for eval_set, (_, _, credits) in SETS.items():
        rows = parse_table(text, HEADINGS[eval_set])
        assert [(r["credit"], r["metric"]) for r in rows] == [(c, m) for c in credits for m in METRICS]
        per_arm = {c: [final_values(sweep_dir, c, seed, eval_set) for seed in (0, 1)] for c in credits}
        for row in rows:
            credit, metric = row["credit"], row["metric"]
            arm_means = [np.mean([v[metric] for _, v in values]) for values in per_arm[credit]]
            assert_cell(row["value"], np.mean(arm_means), statistics.stdev(arm_means))
            m = matrix(per_arm[credit], metric)
            e = bootstrap_interval(m)
            assert_cell(row["95% CI"], e.low, e.high)
            assert (row["seeds"], row["problems"]) == ("2", str(m.shape[1]))
            if len(credits) == 1:
                assert "baseline" not in row  # no baseline cell has this set: no comparison columns
                continue
            if credit == "uniform":
                assert [row[c] for c in ("baseline", "difference", "p", "verdict")] == ["-"] * 4
                continue
            both = matrix(per_arm["arca"] + per_arm["uniform"], metric)
            d = paired_difference(both[:2], both[2:], binary=metric == "accuracy")
            assert row["baseline"] == "credit=uniform"
            assert_cell(row["difference"], d.diff)
            assert_cell(row["diff 95% CI"], d.low, d.high)
            assert abs(float(row["p"]) - d.p_value) <= 5e-5 + 1e-12
            want = (
                "no difference shown"
                if not d.shown
                else ("higher" if d.diff > 0 else "lower") + " than baseline"
            )
            assert row["verdict"] == want
    # the second seed of uniform lacks two "small" problems: the intervals use the 18 every seed has
    assert {r["problems"] for r in parse_table(text, HEADINGS["small"]) if r["credit"] == "uniform"} == {"18"}


def test_the_sampled_metrics_see_ties_and_silent_samples(sweep):
    """The references against problem_metrics on every record, and the forced first problems by hand."""
    sweep_dir, _ = sweep
    for path in sweep_dir.glob("*/eval/**/step_*.jsonl"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            assert problem_metrics(record, KS) == pytest.approx(reference_values(record))
    values = dict(final_values(sweep_dir, "arca", 0, None))
    tie, silent, two_two, three_way = (values[i] for i in range(4))
    # ["g", "w1", -, -]: of the 6 pairs, {g, w1} ties (1/2), {g, -} wins, {w1, -} loses, {-, -} is silent
    assert tie["maj@2"] == pytest.approx((0.5 + 2) / 6) and tie["pass@2"] == pytest.approx(3 / 6)
    assert tie["maj@4"] == 0.5 and tie["mean@4"] == 0.25
    assert silent["maj@2"] == silent["pass@4"] == 0.0
    assert two_two["maj@4"] == 0.5 and two_two["maj@2"] == pytest.approx((1 + 4 * 0.5) / 6)
    assert three_way["maj@4"] == pytest.approx(1 / 3)


def test_legend_names_the_sampling_settings(sweep):
    _, text = sweep
    section = text.split("## Eval sets")[1].split("## Power")[0]
    assert section.count("n = 4, temperature = 0.6, top_p = 0.95") == 3
    assert "Chen et al. 2021" in section and "ties split evenly" in section


# ------------------------------------------------------------------------------------------------
# Power
# ------------------------------------------------------------------------------------------------


def test_power_table_matches_power_analysis_of_the_differences(sweep):
    sweep_dir, text = sweep
    rows = parse_table(text, "## Power")
    shares = [m for m in METRICS if "length" not in m]
    labels = {s: HEADINGS[s].removeprefix("### ") for s in SETS}
    assert [(r["eval set"], r["credit"], r["metric"]) for r in rows] == [
        (labels[s], "arca", m) for s in (None, "small") for m in shares
    ]
    for row in rows:
        eval_set = next(s for s, label in labels.items() if label == row["eval set"])
        per_arm = [final_values(sweep_dir, c, seed, eval_set) for c in ("arca", "uniform") for seed in (0, 1)]
        both = matrix(per_arm, row["metric"])
        d = both[:2] - both[2:]
        p = power_analysis(d, delta=0.02)
        assert_cell(row["difference"], d.mean())
        assert_cell(row["MDE (80%)"], p.mde)
        assert row["seeds × problems"] == f"2 × {d.shape[1]}"
        assert row["seeds for ±0.02"] == (str(p.seeds_needed) if p.seeds_needed else "unreachable")
        assert row["problems at these seeds"] == (str(p.units_needed) if p.units_needed else "unreachable")
        low, high = parse_cell(row["95% CI"])
        if not low <= 0 <= high:
            assert row["verdict"] == "difference shown"
        elif abs(d.mean()) < p.mde:
            assert row["verdict"] == "underpowered"
        assert "one seed" not in row["verdict"]
    under = sum(r["verdict"] == "underpowered" for r in rows)
    summary = text.split("## Power")[1].split("## Regime shares")[0]
    assert under, "the test's sweep (2 seeds, 20 problems) cannot see most of its differences"
    assert f"This sweep is underpowered for {under} of the {len(rows)} differences it reports" in summary


# ------------------------------------------------------------------------------------------------
# Older arms and damaged files
# ------------------------------------------------------------------------------------------------


def test_older_arms_still_report_accuracy(tmp_path):
    """Baseline arms of a version before eval sets (no eval section, no samples, no response_tokens), one
    of them without per-problem files: accuracy is reported for both cells, its interval "-" where a file
    is missing, and only accuracy pairs; one seed: McNemar, and the power verdict says it is optimistic."""
    rng = np.random.default_rng(3)
    sweep_dir = tmp_path / "sweep"
    for seed in (0, 1):
        write_arm(sweep_dir, "arca", seed, rng)
        old = write_arm(sweep_dir, "uniform", seed, rng, old=True)
    for path in (old / "eval").glob("step_*.jsonl"):
        path.unlink()
    text = build_report(sweep_dir).read_text()
    rows = {(r["credit"], r["metric"]): r for r in parse_table(text, HEADINGS[None])}
    assert [m for c, m in rows if c == "uniform"] == ["accuracy"]
    old_row = rows[("uniform", "accuracy")]
    seed0 = np.mean([v["accuracy"] for _, v in final_values(sweep_dir, "uniform", 0, None)])
    logged = json.loads((old / "metrics.jsonl").read_text().splitlines()[FINAL_STEP])["eval/accuracy"]
    assert_cell(old_row["value"], np.mean([seed0, logged]), statistics.stdev([seed0, logged]))
    assert old_row["95% CI"] == old_row["problems"] == "-"
    assert rows[("arca", "accuracy")]["verdict"] == "no paired results"  # seed 1 of uniform has no file
    assert rows[("arca", "mean@4")]["verdict"] == "no paired results"
    assert "### small" in text and "### hard" in text  # arca's sets, without the older cell

    one_seed = tmp_path / "one_seed"
    write_arm(one_seed, "arca", 0, rng)
    write_arm(one_seed, "uniform", 0, rng, old=True)
    text = build_report(one_seed).read_text()
    (row,) = [
        r for r in parse_table(text, HEADINGS[None]) if r["credit"] == "arca" and r["metric"] == "accuracy"
    ]
    x, b = (matrix([final_values(one_seed, c, 0, None)], "accuracy") for c in ("arca", "uniform"))
    d = paired_difference(x, b, binary=True)
    assert abs(float(row["p"]) - d.p_value) <= 5e-5 + 1e-12  # McNemar's exact test
    (power_row,) = parse_table(text, "## Power")
    assert power_row["verdict"].endswith("between-seed variance unknown (one seed): optimistic")
    assert power_row["seeds for ±0.02"] == "unknown (one seed)"
    assert_cell(power_row["MDE (80%)"], power_analysis(x - b).mde)


DAMAGE = {  # how: (sample, key, value) of record 6's samples, and what the report must say
    "correct 2": (1, "correct", 2, "sample 1 has correct 2, not 0 or 1"),
    "class a string": (0, "class", "a", "sample 0 has class 'a', not an integer or null"),
    "negative length": (2, "response_tokens", -3, "sample 2 has response_tokens -3, not a token count"),
    "samples not a list": (None, None, {"a": 1}, "has samples {'a': 1}, not a list"),
    "a sample lost": (None, None, "drop", "has 3 samples, record 1 has 4"),
    "not an object": (None, None, ["x"] * 4, "sample 0 has 'x', not an object"),
}


@pytest.mark.parametrize("how", list(DAMAGE))
def test_damaged_samples_are_refused_naming_the_file(tmp_path, how):
    rng = np.random.default_rng(4)
    arm = write_arm(tmp_path, "arca", 0, rng)
    write_arm(tmp_path, "uniform", 0, rng)
    path = arm / "eval" / "small" / f"step_{FINAL_STEP}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    index, key, value, message = DAMAGE[how]
    if index is not None:
        rows[5]["samples"][index][key] = value
    elif value == "drop":
        rows[5]["samples"].pop()
    else:
        rows[5]["samples"] = value
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ArmStateError) as info:
        build_report(tmp_path)
    assert f"{path}: record 6 (id 's5')" in str(info.value) and message in str(info.value)
    assert "Re-run that arm's command" in str(info.value)
    assert not (tmp_path / "report.md").exists()


def test_an_impossible_set_accuracy_in_metrics_is_refused(tmp_path):
    rng = np.random.default_rng(5)
    arm = write_arm(tmp_path, "arca", 0, rng)
    path = arm / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[FINAL_STEP]["eval/small/accuracy"] = 1.5
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(ArmStateError, match=r"has impossible values \(eval/small/accuracy = 1.5\)") as info:
        build_report(tmp_path)
    assert str(path) in str(info.value)
