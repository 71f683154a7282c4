"""The sweep report (``arca_sweep.report``) and token heatmaps (``arca_sweep.heatmap``): on a synthetic
sweep dir whose numbers the tests recompute independently, on degenerate sweeps, and (slow) on a
real smoke sweep."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.image import imread

from arca_sweep import heatmap
from arca_sweep.credit import shadow_names
from arca_sweep.report import build_report, main
from tests.helpers import cli, cli_env

SIGNALS = ["uniform", "surprisal", "entropy", "divergence", "arca"]
REGIMES = ["uniform", "middle", "concentrated"]
FIGURES = ["regime_shares.png", "gini_etr.png", "reward_accuracy.png"]
N_PROBLEMS = 40
TRUE_ACCURACY = {"arca": 0.7, "entropy": 0.5, "uniform": 0.5}
RUN_MEAN_KEYS = [
    ("gini", "credit/gini/mean"),
    ("etr", "credit/etr/mean"),
    *((r, f"credit/regime/{r}") for r in REGIMES),
    ("tokens/s", "perf/tokens_per_s"),
]

# ------------------------------------------------------------------------------------------------
# A synthetic sweep dir
# ------------------------------------------------------------------------------------------------


def _shares(rng) -> list[float]:
    return list(rng.dirichlet([1.0, 1.0, 1.0]))


def fake_metrics(rng, credit: str, steps: int) -> list[dict]:
    """Plausible metrics.jsonl records: step 0 holds only the initial eval; some values are null."""
    records = [{"step": 0, "eval/accuracy": float(rng.choice([0.25, 0.3125]))}]
    for step in range(1, steps + 1):
        r = {"step": step, "data/batch_hash": f"h{step}", "reward/mean": float(rng.uniform(0, 1))}
        for stat in ("gini", "etr"):
            for q in ("mean", "p10", "p50", "p90"):
                r[f"credit/{stat}/{q}"] = float(rng.uniform(0, 1))
        r |= {f"credit/regime/{k}": v for k, v in zip(REGIMES, _shares(rng), strict=True)}
        for signal in SIGNALS:
            r[f"shadow/{signal}/gini/mean"] = float(rng.uniform(0, 1))
            r[f"shadow/{signal}/etr/mean"] = float(rng.uniform(0, 1))
            r |= {f"shadow/{signal}/regime/{k}": v for k, v in zip(REGIMES, _shares(rng), strict=True)}
            r[f"shadow/{signal}/spearman"] = None if signal in ("uniform", credit) else float(rng.uniform())
        r["perf/tokens_per_s"] = None if step == 2 else float(rng.uniform(500, 1500))
        if step % 2 == 0 or step == steps:
            r["eval/accuracy"] = float(rng.uniform(0.2, 0.6))
        records.append(r)
    # an undefined statistic is logged as null
    records[1]["credit/gini/mean"] = None
    records[1]["shadow/arca/regime/uniform"] = None
    return records


def fake_sample(step: int, row: int, rng) -> dict:
    tokens = ["5", " +", " ", "7", "\n", "<script>", "\\boxed", "{", "12", "}", "<|im_end|>"]
    is_format = [t.strip() == "" or t in {" +", "{", "}", "<|im_end|>"} for t in tokens]
    weights = {s: [round(float(x), 4) for x in rng.gamma(1.0, 1.0, len(tokens))] for s in SIGNALS}
    weights["uniform"] = [1.0] * len(tokens)
    return {
        "step": step,
        "row": row,
        "question": "Compute 5 + 7. Put the final answer in \\boxed{}.",
        "reward": 1.0,
        "advantage": 0.5,
        "tokens": tokens,
        "is_format": is_format,
        "weights": weights,
    }


def write_arm(
    sweep_dir: Path, credit: str, rank: int, seed: int, steps: int, finished: bool, rng, samples: bool = True
) -> Path:
    arm = sweep_dir / f"budget=smoke,credit={credit},rank={rank},seed={seed}"
    (arm / ".hydra").mkdir(parents=True)
    config = {
        "model": {"name": "tiny"},
        "rank": {"r": rank, "alpha": 2.0 * rank},
        "credit": {"name": credit, "normalize": "mean"},
        "budget": {"steps": steps, "group_size": 4},
        "seed": seed,
    }
    (arm / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    overrides = [
        "budget=smoke",
        f"credit={credit}",
        f"rank='{rank}'",
        f"seed={seed}",
        "logger.progress=false",
    ]
    (arm / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    records = fake_metrics(rng, credit, steps)
    for r in records:
        if "eval/accuracy" in r:  # per-problem results whose mean is the logged accuracy
            correct = (rng.random(N_PROBLEMS) < TRUE_ACCURACY.get(credit, 0.5)).astype(int)
            r["eval/accuracy"] = float(correct.mean())
            rows = [{"id": i, "position": i, "correct": int(c), "answer": "1"} for i, c in enumerate(correct)]
            (arm / "eval").mkdir(exist_ok=True)
            (arm / "eval" / f"step_{r['step']}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    (arm / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if samples:
        lines = [fake_sample(step, row, rng) for step in (1, steps) for row in (0, 4)]
        (arm / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in lines))
    if finished:
        # deliberately wrong run means: the report must recompute everything from metrics.jsonl
        summary = {"eval/accuracy_initial": 9.0, "eval/accuracy_final": 9.0, "steps": steps, "wall_s": 1.0}
        summary["run_means"] = {k: 999.0 for k in records[-1] if k != "step"}
        (arm / "summary.json").write_text(json.dumps(summary))
    return arm


def make_sweep(root: Path, credits=("arca", "entropy"), ranks=(8, 16), seeds=(0, 1), steps: int = 5) -> Path:
    """Finished arms for credits x ranks x seeds (seed ``s`` runs ``steps + 2 s`` steps: pooling over
    steps and averaging arm means differ), plus one unfinished arm whose last line is torn."""
    rng = np.random.default_rng(0)
    sweep_dir = root / "sweep"
    for credit in credits:
        for rank in ranks:
            for seed in seeds:
                write_arm(sweep_dir, credit, rank, seed, steps + 2 * seed, finished=True, rng=rng)
    running = write_arm(sweep_dir, credits[0], ranks[0], 9, steps, finished=False, rng=rng)
    with (running / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "reward/me')  # a line being written
    (sweep_dir / "multirun.yaml").write_text("hydra: {}\n")
    return sweep_dir


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, Path]:
    sweep_dir = make_sweep(tmp_path_factory.mktemp("report"))
    return sweep_dir, build_report(sweep_dir)


# ------------------------------------------------------------------------------------------------
# An independent recomputation from the metrics files
# ------------------------------------------------------------------------------------------------


def finished_arms(sweep_dir: Path) -> list[tuple[dict, list[dict]]]:
    out = []
    for arm in sweep_dir.iterdir():
        if (arm / "summary.json").exists():
            config = yaml.safe_load((arm / ".hydra" / "config.yaml").read_text())
            records = [json.loads(line) for line in (arm / "metrics.jsonl").read_text().splitlines()]
            out.append((config, records))
    return out


def values(records: list[dict], key: str, first_step: int = 1) -> list[float]:
    return [r[key] for r in records if r["step"] >= first_step and r.get(key) is not None]


def cell_of(config: dict) -> tuple[str, str]:
    return config["credit"]["name"], str(config["rank"]["r"])


def mean_std(v: list[float]) -> tuple:
    """As the report prints it: mean ± sample std over seeds, the value alone for one seed."""
    return (np.mean(v), np.std(v, ddof=1)) if len(v) > 1 else (np.mean(v),)


def expected_final_table(sweep_dir: Path) -> dict[tuple[str, str], dict[str, tuple]]:
    cells: dict = {}
    for config, records in finished_arms(sweep_dir):
        cell = cells.setdefault(cell_of(config), {})
        evals = values(records, "eval/accuracy", first_step=0)
        cell.setdefault("final acc", []).append(evals[-1])
        cell.setdefault("initial acc", []).append(evals[0])
        rewards = values(records, "reward/mean")
        cell.setdefault("reward (last 1/4)", []).append(np.mean(rewards[-int(np.ceil(len(rewards) / 4)) :]))
        for column, key in RUN_MEAN_KEYS:
            cell.setdefault(column, []).append(np.mean(values(records, key)))
    out = {}
    for group, cell in cells.items():
        out[group] = {column: mean_std(v) for column, v in cell.items()}
        out[group]["initial acc"] = (np.mean(cell["initial acc"]),)
        out[group]["n seeds"] = (len(cell["final acc"]),)
    return out


def expected_regime_table(sweep_dir: Path) -> dict[tuple[str, str, str], dict[str, tuple]]:
    """Per cell and signal: each arm's mean over its steps, then mean ± std over the seeds."""
    per_seed: dict = {}
    for config, records in finished_arms(sweep_dir):
        logged = [s for s in shadow_names() if any(f"shadow/{s}/regime/uniform" in r for r in records)]
        for signal in logged:  # the five signals and the methods that define token weights
            keys = {k: f"shadow/{signal}/regime/{k}" for k in REGIMES}
            keys |= {"gini": f"shadow/{signal}/gini/mean", "etr": f"shadow/{signal}/etr/mean"}
            row = per_seed.setdefault((*cell_of(config), signal), {})
            for col, key in keys.items():
                row.setdefault(col, []).append(np.mean(values(records, key)))
    return {k: {col: mean_std(v) for col, v in row.items()} for k, row in per_seed.items()}


def parse_table(markdown: str, heading: str) -> list[dict[str, str]]:
    """The rows of the first markdown table after the line starting with ``heading``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    table = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            table.append([c.strip() for c in line.strip("|").split("|")])
        elif table:
            break
    head, rows = table[0], table[2:]
    return [dict(zip(head, row, strict=True)) for row in rows]


def parse_cell(cell: str) -> tuple[float, ...]:
    return tuple(float(x) for x in cell.strip("[]").replace(",", "±").split("±"))


def assert_matches(rows: list[dict], expected: dict, key_columns: tuple[str, ...]) -> None:
    assert {tuple(row[c] for c in key_columns) for row in rows} == set(expected)
    for row in rows:
        for column, want in expected[tuple(row[c] for c in key_columns)].items():
            got = parse_cell(row[column])
            assert len(got) == len(want), (column, row[column])
            # printed with 3 decimals
            assert np.allclose(got, want, rtol=0, atol=5e-4 + 1e-9), (row, column, want)


# ------------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------------


def test_report_files(sweep):
    sweep_dir, report = sweep
    assert report == sweep_dir / "report.md" and report.is_file()
    text = report.read_text()
    for png in FIGURES:
        assert f"]({png})" in text
        image = imread(sweep_dir / png)
        assert image.shape[0] > 100 and image.shape[1] > 100
        assert np.ptp(image[..., :3]) > 0.5, f"{png} is (nearly) one colour"
    page = (sweep_dir / "heatmaps.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "legend" in page
    for signal in SIGNALS:
        assert f"<th>{signal}</th>" in page or f'<th class="training">{signal}</th>' in page
    assert "&lt;script&gt;" in page and "<script" not in page
    # per cell, its first seed's first, middle and last sample steps (here 1 and 5), one rollout each
    assert page.count("<section>") == 4 * 2
    assert page.count("step 5 · row 0") == 4 and page.count("step 1 · row 0") == 4
    assert "credit=arca, rank=8, seed 0: trained with arca, step 5" in page


def test_report_lists_unfinished_arm(sweep):
    sweep_dir, report = sweep
    text = report.read_text()
    unfinished = sweep_dir / "budget=smoke,credit=arca,rank=8,seed=9"
    not_finished_part = text.split("Not finished")[1].split("Finished:")[0]
    assert f"`{unfinished}` (last logged step 5)" in not_finished_part
    assert "9 arms: 8 finished, 1 not finished." in text


def test_report_numbers_match_metrics(sweep):
    sweep_dir, report = sweep
    text = report.read_text()
    final = parse_table(text, "## Final table")
    assert len(final) == 4  # 2 credits x 2 ranks; the unfinished arm is not in it
    assert [(r["credit"], int(r["rank"])) for r in final] == sorted(
        (r["credit"], int(r["rank"])) for r in final
    )
    assert_matches(final, expected_final_table(sweep_dir), ("credit", "rank"))
    regimes = parse_table(text, "## Regime shares per signal")
    assert [r["signal"] for r in regimes[:5]] == SIGNALS
    assert_matches(regimes, expected_regime_table(sweep_dir), ("credit", "rank", "signal"))


def test_report_degenerate_sweeps(tmp_path):
    """One arm with one step (and nulls), an arm with no metrics yet, arms that differ in rank only."""
    rng = np.random.default_rng(1)
    single = tmp_path / "single"
    write_arm(single, "arca", 4, 0, steps=1, finished=True, rng=rng, samples=False)
    empty = single / "credit=entropy,rank=4"
    (empty / ".hydra").mkdir(parents=True)
    (empty / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"credit": {"name": "entropy"}}))
    text = build_report(single).read_text()
    assert f"`{empty}` (no metrics yet)" in text
    (row,) = parse_table(text, "## Final table")
    assert row["n seeds"] == "1" and "±" not in row["final acc"]  # one seed: the value alone
    assert row["tokens/s"] != "-" and row["gini"] == "-"  # the only step's gini is null
    assert row["credit"] == "arca" and row["budget"] == "smoke"  # the empty arm has no budget: an axis
    assert "No sample rollouts" in (single / "heatmaps.html").read_text()

    ranks_only = make_sweep(tmp_path / "ranks", credits=("arca",), ranks=(4, 8, 64), seeds=(0,), steps=2)
    text = build_report(ranks_only).read_text()
    assert [r["rank"] for r in parse_table(text, "## Final table")] == ["4", "8", "64"]
    assert {r["rank"] for r in parse_table(text, "## Regime shares per signal")} == {"4", "8", "64"}
    for png in FIGURES:
        assert imread(ranks_only / png).shape[1] > 100


def test_a_cut_summary_is_not_finished_and_a_torn_last_line_is_dropped(tmp_path):
    rng = np.random.default_rng(2)
    good = write_arm(tmp_path, "arca", 4, 0, steps=3, finished=True, rng=rng, samples=False)
    cut = write_arm(tmp_path, "uniform", 4, 0, steps=3, finished=True, rng=rng, samples=False)
    with open(good / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 4, "reward/me')  # a running arm's line, cut mid-write
    (cut / "summary.json").write_text('{"steps": ')
    with pytest.warns(UserWarning, match="dropped a torn last line"):
        text = build_report(tmp_path).read_text()
    assert "2 arms: 1 finished, 1 not finished." in text
    assert f"`{cut}`" in text.split("Not finished")[1].split("Finished:")[0]


DAMAGE = {
    # (file, how): what the report must say; issue 20 found each read as if whole
    ("metrics", "garbage mid-file"): "metrics.jsonl:2 is not a JSON record",
    ("metrics", "bad bytes"): "is not UTF-8 text",
    ("metrics", "string step"): "has step '2', not a step number",
    ("metrics", "step twice"): "is step 1, recorded twice",
    ("metrics", "line deleted"): "record 2 is step 2, after step 0: steps are missing",
    ("metrics", "accuracy 7.5"): "has impossible values (eval/accuracy = 7.5)",
    ("metrics", "NaN reward"): "has impossible values (reward/mean)",
    ("eval", "garbage lines"): "step_3.jsonl:3 is not a JSON record",
    ("eval", "duplicate ids"): "appears twice",
    ("eval", "correct yes"): "has correct 'yes', not 0 or 1",
    ("eval", "no id"): "has id None, not a problem id",
}


def damage(arm, where: str, how: str) -> None:
    path = arm / "metrics.jsonl" if where == "metrics" else arm / "eval" / "step_3.jsonl"
    lines = path.read_text().splitlines()
    rows = [json.loads(x) for x in lines]
    if how == "garbage mid-file":
        lines.insert(1, "{not json")
    elif how == "bad bytes":
        path.write_bytes(b"\x00\xff\xfe\n" + path.read_bytes())
        return
    elif how == "string step":
        lines.append(json.dumps({**rows[-1], "step": "2"}))
    elif how == "step twice":
        lines.append(json.dumps(rows[1]))
    elif how == "line deleted":
        del lines[1]
    elif how == "accuracy 7.5":
        lines[-1] = json.dumps({**rows[-1], "eval/accuracy": 7.5})
    elif how == "NaN reward":
        lines[1] = lines[1].replace(json.dumps(rows[1]["reward/mean"]), "NaN", 1)
        assert "NaN" in lines[1]
    elif how == "garbage lines":
        lines[2:2] = ["garbage"] * 14
    elif how == "duplicate ids":
        lines = [json.dumps({**r, "id": r["id"] if i % 3 else rows[0]["id"]}) for i, r in enumerate(rows)]
    elif how == "correct yes":
        lines[0] = json.dumps({**rows[0], "correct": "yes"})
    elif how == "no id":
        lines[1] = json.dumps({k: v for k, v in rows[1].items() if k != "id"})
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(("where", "how"), list(DAMAGE))
def test_a_damaged_record_stops_the_report_naming_the_file(tmp_path, capsys, where, how):
    rng = np.random.default_rng(2)
    arm = write_arm(tmp_path, "arca", 4, 0, steps=3, finished=True, rng=rng, samples=False)
    write_arm(tmp_path, "uniform", 4, 0, steps=3, finished=True, rng=rng, samples=False)
    assert (arm / "eval" / "step_3.jsonl").is_file()
    damage(arm, where, how)
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert DAMAGE[(where, how)] in err and str(arm) in err and "Re-run that arm's command" in err
    assert not (tmp_path / "report.md").exists()


def test_one_seed_comparison_uses_mcnemar_and_baseline_flag(tmp_path, capsys):
    sweep_dir = make_sweep(tmp_path, credits=("arca", "uniform"), ranks=(8,), seeds=(0,), steps=4)
    text = build_report(sweep_dir).read_text()
    (row,) = parse_table(text, "### Final eval accuracy")
    assert (row["credit"], row["baseline"], row["test"]) == ("arca", "credit=uniform", "McNemar exact")

    def final(credit: str) -> list[int]:
        arm = sweep_dir / f"budget=smoke,credit={credit},rank=8,seed=0"
        return list(per_problem(arm).values())

    x, b = final("arca"), final("uniform")
    n01 = sum(1 for xi, bi in zip(x, b, strict=True) if xi and not bi)
    n10 = sum(1 for xi, bi in zip(x, b, strict=True) if bi and not xi)
    n = n01 + n10
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(min(n01, n10) + 1)) / 2**n) if n else 1.0
    assert abs(float(row["p"]) - p) <= 5e-5 and float(row["difference"]) == pytest.approx(
        (n01 - n10) / len(x), abs=5e-4
    )

    main([str(sweep_dir), "--baseline", "credit=arca"])
    (row,) = parse_table((sweep_dir / "report.md").read_text(), "### Final eval accuracy")
    assert (row["credit"], row["baseline"]) == ("uniform", "credit=arca")
    assert float(row["difference"]) == pytest.approx((n10 - n01) / len(x), abs=5e-4)
    main([str(sweep_dir), "--baseline", "rank=4"])
    assert (
        "No baseline: this sweep does not vary rank (its axes: credit)"
        in (sweep_dir / "report.md").read_text()
    )
    with pytest.raises(SystemExit) as exit_info:
        main([str(sweep_dir), "--baseline", "uniform"])
    assert exit_info.value.code == 2 and "expected KEY=VALUE" in capsys.readouterr().err


def test_report_without_per_problem_files(tmp_path):
    """An older sweep (no eval/step_<n>.jsonl): accuracies still shown, intervals and pairs marked missing."""
    sweep_dir = make_sweep(tmp_path, credits=("arca", "uniform"), ranks=(8,), seeds=(0, 1), steps=4)
    for eval_dir in sweep_dir.glob("*/eval"):
        shutil.rmtree(eval_dir)
    text = build_report(sweep_dir).read_text()
    for row in parse_table(text, "## Final table"):
        assert row["acc 95% CI"] == "-" and row["final acc"] != "-"
    assert all(r["Wilson 95%"] == "-" for r in parse_table(text, "### Final accuracy per seed"))
    (row,) = parse_table(text, "### Final eval accuracy")
    assert row["verdict"] == "no paired results"


def test_report_nothing_finished(tmp_path):
    sweep_dir = tmp_path / "running"
    write_arm(sweep_dir, "arca", 8, 0, steps=2, finished=False, rng=np.random.default_rng(2))
    text = build_report(sweep_dir).read_text()
    assert "No arm finished yet." in text and "## Regime shares" not in text
    assert imread(sweep_dir / "gini_etr.png").shape[0] > 100
    assert "(not finished)" in (sweep_dir / "heatmaps.html").read_text()


# ------------------------------------------------------------------------------------------------
# Heatmaps
# ------------------------------------------------------------------------------------------------


def test_sample_html_escapes_and_marks_format_tokens():
    sample = {
        "step": 3,
        "row": 0,
        "question": "<b>2 & 3</b>",
        "reward": 0.0,
        "advantage": -1.0,
        "tokens": ["<script>", " ", "\n", 'a"b', "}"],
        "is_format": [False, True, True, False, True],
        "weights": {"arca": [0.0, 1.0, 2.0, 3.0, 5.0], "uniform": [1.0] * 5},
    }
    fragment = heatmap.sample_html(sample, training_signal="arca")
    assert "<script>" not in fragment and "&lt;script&gt;" in fragment
    assert "<b>" not in fragment and "&lt;b&gt;2 &amp; 3&lt;/b&gt;" in fragment
    assert 'a"b' not in fragment  # quotes escaped, in the text and in the tooltip
    # rows in display order; one span per token per row; format tokens outlined
    assert fragment.index("<th>uniform</th>") < fragment.index('<th class="training">arca</th>')
    assert fragment.count('class="tok') == 10
    assert fragment.count('class="tok fmt') == 6
    # whitespace is visible; the exact weight is in the tooltip; dark tokens get light text
    assert '<span class="ws">·</span>' in fragment and '<span class="ws">↵</span>' in fragment
    assert "w=5.000" in fragment and 'class="tok fmt dark"' in fragment
    # a signal the sample lacks: a row of missing weights
    only = heatmap.sample_html(sample, signals=["entropy"])
    assert "<th>entropy</th>" in only and only.count(heatmap.MISSING_COLOUR) == 5 and "arca" not in only


def test_colour_scale_monotone_log_and_fixed():
    grid = np.geomspace(0.01, 200.0, 400)
    rgb = np.array([heatmap.weight_rgb(w) for w in grid])
    assert (np.diff(rgb, axis=0) <= 0).all()  # every channel darkens as the weight grows
    luminance = rgb @ [0.299, 0.587, 0.114]
    assert luminance[-1] < luminance[0] - 150
    assert heatmap.weight_colour(0.0) == heatmap.weight_colour(0.1) == "#ffffff"
    assert heatmap.weight_colour(50.0) == heatmap.weight_colour(500.0) != heatmap.weight_colour(20.0)
    # weights between 1 and 50 read apart: each step of the legend is a visibly darker colour
    lum = {w: np.array(heatmap.weight_rgb(w)) @ [0.299, 0.587, 0.114] for w in (1, 3, 10, 20, 50)}
    assert all(lum[a] - lum[b] > 15 for a, b in [(1, 3), (3, 10), (10, 20), (20, 50)]), lum
    # log scale: equal ratios inside a stop interval move the colour equally
    r = [np.array(heatmap.weight_rgb(w), dtype=float) for w in (5.0, 5.0 * 2**0.5, 10.0)]
    assert np.allclose(r[1] - r[0], r[2] - r[1], atol=1.0)
    assert heatmap.weight_colour(None) == heatmap.weight_colour(float("nan")) == heatmap.MISSING_COLOUR


def test_page_html_is_standalone():
    page = heatmap.page_html("a <title>", [("arm <x>", "<figure>f</figure>")])
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<title>a &lt;title&gt;</title>" in page and "<h3>arm &lt;x&gt;</h3><figure>f</figure>" in page
    assert 'class="legend"' in page and "≥50" in page and "log scale" in page


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


def run_report_cli(sweep_dir: Path) -> subprocess.CompletedProcess:
    return cli(sweep_dir, module="arca_sweep.report", quiet=False, check=False, timeout=120, env=cli_env())


def test_cli_prints_report_path(tmp_path):
    sweep_dir = tmp_path / "sweep"
    write_arm(sweep_dir, "arca", 8, 0, steps=2, finished=True, rng=np.random.default_rng(3))
    out = run_report_cli(sweep_dir)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(sweep_dir / "report.md") and (sweep_dir / "report.md").is_file()


@pytest.mark.parametrize("make", ["missing", "no_arms"])
def test_cli_bad_dir_exits_2(tmp_path, capsys, make):
    bad = tmp_path / "bad"
    if make == "no_arms":
        (bad / "some_dir").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        main([str(bad)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert str(bad) in err and ("not a directory" if make == "missing" else "not a sweep dir") in err
    assert not (bad / "report.md").exists()


# ------------------------------------------------------------------------------------------------
# A real sweep
# ------------------------------------------------------------------------------------------------


def reference_bootstrap(values: np.ndarray, n_resamples: int = 10_000, seed: int = 0) -> np.ndarray:
    """The report's documented resampling (seeds [B, S], then problems [B, N], from default_rng(seed)),
    each resample's mean computed from its draw counts: (c_seeds @ values @ c_units) / (S N)."""
    n_seeds, n_units = values.shape
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(0, n_seeds, (n_resamples, n_seeds))
    unit_draws = rng.integers(0, n_units, (n_resamples, n_units))
    return np.array(
        [
            np.bincount(s, minlength=n_seeds) @ values @ np.bincount(u, minlength=n_units) / values.size
            for s, u in zip(seed_draws, unit_draws, strict=True)
        ]
    )


def reference_wilson(k: int, n: int) -> tuple[float, float]:
    z = 1.959963984540054
    p = k / n
    centre, half = p + z * z / (2 * n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def per_problem(arm: Path) -> dict:
    """{problem id: correct} of the arm's last eval, read straight from its eval/step_<n>.jsonl."""
    last = max(int(p.stem.split("_")[1]) for p in (arm / "eval").glob("step_*.jsonl"))
    rows = [json.loads(line) for line in (arm / "eval" / f"step_{last}.jsonl").read_text().splitlines()]
    return {r["id"]: r["correct"] for r in rows}


def assert_close(cell: str, want: float) -> None:
    assert abs(float(cell) - want) <= 5e-4 + 1e-9, (cell, want)


REAL_EVAL = ["eval.n=4", "eval.k=[2,4]", "+data@eval.sets.small=arith_small", "eval.sets.small.eval_size=8"]


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory) -> Path:
    """The issue's sweep over a non-default axis: credit.normalize x credit, two seeds, 2 steps; every eval
    samples 4 answers per problem and scores a second set (issue 21)."""
    root = tmp_path_factory.mktemp("real")
    sweep_dir = root / "sweep"
    cmd = [sys.executable, "-m", "arca_sweep", "credit.normalize=mean,softmax", "credit=arca,uniform"]
    cmd += [
        "budget=smoke",
        "budget.steps=2",
        "seed=0,1",
        *REAL_EVAL,
        f"hydra.sweep.dir={sweep_dir}",
        "logger.progress=false",
    ]
    run = subprocess.run([*cmd, "-m"], cwd=root, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    return sweep_dir


@pytest.mark.slow
def test_real_sweep_keeps_every_cell_apart(real_sweep):
    out = run_report_cli(real_sweep)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(real_sweep / "report.md")
    text = (real_sweep / "report.md").read_text()
    assert (
        "8 arms: 8 finished, 0 not finished. 4 cells over the sweep's axes (credit, credit.normalize)" in text
    )
    final = parse_table(text, "## Final table")
    cells = {(r["credit"], r["credit.normalize"]) for r in final}
    assert cells == {(c, n) for c in ("arca", "uniform") for n in ("mean", "softmax")} and len(final) == 4
    assert all(r["n seeds"] == "2" for r in final), "two seeds per cell, no cell merged"
    # each cell's numbers are its own arms' only
    by_cell: dict = {}
    for arm in real_sweep.iterdir():
        if (arm / "summary.json").exists():
            config = yaml.safe_load((arm / ".hydra" / "config.yaml").read_text())
            by_cell.setdefault((config["credit"]["name"], config["credit"]["normalize"]), []).append(arm)
    for row in final:
        arms = by_cell[(row["credit"], row["credit.normalize"])]
        finals = [
            values(records, "eval/accuracy", 0)[-1]
            for records in (
                [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()] for a in arms
            )
        ]
        assert_close(row["final acc"].split("±")[0], np.mean(finals))
    # every figure's legend names the cell by its axes
    from arca_sweep.report.data import load_arms
    from arca_sweep.report.figures import gini_etr_figure, regime_figure, reward_accuracy_figure

    arms = load_arms(real_sweep)
    want = {
        f"credit={c}, credit.normalize={n} (2 seeds)"
        for c in ("arca", "uniform")
        for n in ("mean", "softmax")
    }
    for figure in (reward_accuracy_figure(arms, 5), gini_etr_figure(arms, 5)):
        (legend,) = figure.legends
        assert {t.get_text() for t in legend.get_texts()} == want
    titles = {ax.get_title() for ax in regime_figure(arms).axes if ax.get_visible()}
    assert titles == want
    # the training signal's own shadow regimes are its credit regimes: same passes, same weights
    for arm in (a for group in by_cell.values() for a in group):
        config = yaml.safe_load((arm / ".hydra" / "config.yaml").read_text())
        for r in [json.loads(x) for x in (arm / "metrics.jsonl").read_text().splitlines()][1:]:
            assert r[f"shadow/{config['credit']['name']}/regime/uniform"] == pytest.approx(
                r["credit/regime/uniform"]
            )
    for png in FIGURES:
        image = imread(real_sweep / png)
        assert image.shape[0] > 100 and np.ptp(image[..., :3]) > 0.5
    page = (real_sweep / "heatmaps.html").read_text()
    assert all(signal in page for signal in SIGNALS) and "&lt;|im_end|&gt;" in page


@pytest.mark.slow
def test_real_sweep_intervals_and_p_values_recomputed_from_per_problem_files(real_sweep, tmp_path):
    """The report CLI's intervals and p-values against a recomputation from the arms' own files: as
    run (two steps: arca's first weights fall back to uniform on the fresh, zero adapter, so its arms
    match uniform's and the report must say "no difference shown"), then with some of arca/mean's
    final answers flipped in a copy of the sweep, so the paired numbers are not all zero."""
    check_against_files(real_sweep)
    flipped = tmp_path / "flipped"
    shutil.copytree(real_sweep, flipped)
    chosen = [a for a in flipped.glob("*credit.normalize=mean*") if ",credit=arca," in a.name]  # both seeds
    assert len(chosen) == 2, [a.name for a in flipped.iterdir()]
    for arm in chosen:
        last = max(arm.glob("eval/step_*.jsonl"), key=lambda p: int(p.stem.split("_")[1]))
        rows = [json.loads(line) for line in last.read_text().splitlines()]
        for r in rows[:5]:
            r["correct"] = 1 - r["correct"]
        last.write_text("".join(json.dumps(r) + "\n" for r in rows))
    diffs = check_against_files(flipped)
    assert any(abs(d) > 0 for d in diffs), "the flipped answers show in the paired difference"


@pytest.mark.slow
def test_real_sweep_eval_set_tables_recomputed_from_per_problem_files(real_sweep):
    """Issue 21's tables on a real sweep (two eval sets, n = 4): every value, interval and paired difference
    recomputed from the arms' eval files with slow references (every k-subset enumerated)."""
    import statistics

    from arca_sweep.report.stats import bootstrap_interval, paired_difference
    from tests.test_report_eval_sets import reference_values

    out = run_report_cli(real_sweep)
    assert out.returncode == 0, out.stderr
    text = (real_sweep / "report.md").read_text()
    arms = arms_by_cell(real_sweep)

    def values(arm: Path, eval_set: str | None) -> list[tuple]:
        path = arm / "eval" / (eval_set or "") / "step_2.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert all(len(r["samples"]) == 4 for r in rows)
        return [(r["id"], reference_values(r)) for r in rows]

    def matrix(cell, eval_set, metric) -> np.ndarray:
        return np.array([[v[metric] for _, v in values(arms[cell][seed], eval_set)] for seed in (0, 1)])

    metrics = ["accuracy", "mean@4", "pass@2", "pass@4", "maj@2", "maj@4", "length", "sampled_length"]
    for eval_set, heading in (
        (None, "### arith (the run's eval rows)"),
        ("small", "### small (data: arith_small)"),
    ):
        rows = parse_table(text, heading)
        assert len(rows) == 4 * len(metrics), [r["metric"] for r in rows]
        for row in rows:
            cell, metric = (row["credit"], row["credit.normalize"]), row["metric"]
            m = matrix(cell, eval_set, metric)
            assert m.shape == (2, 16 if eval_set is None else 8)
            means = m.mean(axis=1)
            want = [means.mean(), statistics.stdev(means)]
            assert np.allclose(parse_cell(row["value"]), want, atol=5e-4 + 1e-9), (row, want)
            e = bootstrap_interval(m)
            assert np.allclose(parse_cell(row["95% CI"]), [e.low, e.high], atol=5e-4 + 1e-9)
            if cell[0] == "uniform":
                continue
            base = matrix(("uniform", cell[1]), eval_set, metric)
            d = paired_difference(m, base, binary=metric == "accuracy")
            assert_close(row["difference"], d.diff)
            assert np.allclose(parse_cell(row["diff 95% CI"]), [d.low, d.high], atol=5e-4 + 1e-9)
    power = parse_table(text, "## Power")
    assert {r["metric"] for r in power} >= {"accuracy", "mean@4"} and all(r["verdict"] for r in power)


def arms_by_cell(sweep_dir: Path) -> dict:
    """``{(credit, credit.normalize): {seed: arm dir}}`` of the sweep's finished arms, from their configs."""
    arms: dict = {}
    for arm in sweep_dir.iterdir():
        if (arm / "summary.json").exists():
            config = yaml.safe_load((arm / ".hydra" / "config.yaml").read_text())
            key = (config["credit"]["name"], config["credit"]["normalize"])
            arms.setdefault(key, {})[config["seed"]] = arm
    return arms


def check_against_files(sweep_dir: Path) -> list[float]:
    """Run the report CLI on ``sweep_dir`` and recompute its intervals and p-values; return the paired
    accuracy differences it printed."""
    out = run_report_cli(sweep_dir)
    assert out.returncode == 0, out.stderr
    text = (sweep_dir / "report.md").read_text()
    arms = arms_by_cell(sweep_dir)
    ids = list(per_problem(arms[("arca", "mean")][0]))

    def matrix(cell) -> np.ndarray:
        return np.array([[per_problem(arms[cell][seed])[i] for i in ids] for seed in (0, 1)], dtype=float)

    def rewards(cell) -> np.ndarray:  # the last quarter of 2 steps: step 2
        rows = [
            [json.loads(x) for x in (arms[cell][seed] / "metrics.jsonl").read_text().splitlines()]
            for seed in (0, 1)
        ]
        return np.array([[r["reward/mean"] for r in recs if r["step"] == 2] for recs in rows])

    for row in parse_table(text, "## Final table"):
        means = reference_bootstrap(matrix((row["credit"], row["credit.normalize"])))
        low, high = row["acc 95% CI"].strip("[]").split(",")
        assert_close(low, np.percentile(means, 2.5))
        assert_close(high, np.percentile(means, 97.5))
    for row in parse_table(text, "### Final accuracy per seed"):
        correct = per_problem(arms[(row["credit"], row["credit.normalize"])][int(row["seed"])])
        k, n = sum(correct.values()), len(correct)
        assert row["correct / n"] == f"{k} / {n}"
        lo, hi = row["Wilson 95%"].strip("[]").split(",")
        assert_close(lo, reference_wilson(k, n)[0])
        assert_close(hi, reference_wilson(k, n)[1])
    printed = []
    sections = {"### Final eval accuracy": matrix, "### Mean training reward": rewards}
    for heading, extract in sections.items():
        rows = parse_table(text, heading)
        assert {(r["credit"], r["credit.normalize"]) for r in rows} == {("arca", "mean"), ("arca", "softmax")}
        for row in rows:
            normalize = row["credit.normalize"]
            assert row["baseline"] == f"credit=uniform, credit.normalize={normalize}"
            d = extract(("arca", normalize)) - extract(("uniform", normalize))
            means = reference_bootstrap(d)
            m = d.mean()
            assert_close(row["difference"], m)
            low, high = (float(x) for x in row["95% CI"].strip("[]").split(","))
            assert_close(low, np.percentile(means, 2.5))
            assert_close(high, np.percentile(means, 97.5))
            p = (1 + np.sum(np.abs(means - m) >= abs(m) - 1e-12)) / (len(means) + 1)
            assert abs(float(row["p"]) - min(1.0, p)) <= 5e-5 and row["test"] == "paired bootstrap"
            holds_zero = np.percentile(means, 2.5) <= 0 <= np.percentile(means, 97.5)
            assert (row["verdict"] == "no difference shown") == holds_zero
            if heading.startswith("### Final eval"):
                printed.append(float(row["difference"]))
    return printed


def test_the_report_reads_a_sweep_without_loading_torch():
    """The report, the regime names and the arm-dir readers it uses are torch-free (torch is only for runs)."""
    code = "import sys, arca_sweep.report; print('torch' in sys.modules)"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
