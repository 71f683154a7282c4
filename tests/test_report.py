"""The sweep report (``arca_sweep.report``) and token heatmaps (``arca_sweep.heatmap``): on a synthetic
sweep dir whose numbers the tests recompute independently, on degenerate sweeps, and (slow) on a
real smoke sweep."""

from __future__ import annotations

import json
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

SIGNALS = ["uniform", "surprisal", "entropy", "divergence", "arca"]
REGIMES = ["uniform", "middle", "concentrated"]
FIGURES = ["regime_shares.png", "gini_etr.png", "reward_accuracy.png"]
REPO = Path(__file__).resolve().parents[1]

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
    records = fake_metrics(rng, credit, steps)
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


def expected_final_table(sweep_dir: Path) -> dict[tuple[str, str], dict[str, tuple]]:
    cells: dict = {}
    for config, records in finished_arms(sweep_dir):
        cell = cells.setdefault((config["credit"]["name"], str(config["rank"]["r"])), {})
        evals = values(records, "eval/accuracy", first_step=0)
        cell.setdefault("final acc", []).append(evals[-1])
        cell.setdefault("initial acc", []).append(evals[0])
        for column, key in [
            ("gini", "credit/gini/mean"),
            ("etr", "credit/etr/mean"),
            *((r, f"credit/regime/{r}") for r in REGIMES),
            ("tokens/s", "perf/tokens_per_s"),
        ]:
            cell.setdefault(column, []).append(np.mean(values(records, key)))
    out = {}
    for group, cell in cells.items():
        out[group] = {column: (np.mean(v),) for column, v in cell.items()}
        if len(cell["final acc"]) > 1:  # mean ± sample std over seeds; one seed: the value alone
            out[group]["final acc"] = (np.mean(cell["final acc"]), np.std(cell["final acc"], ddof=1))
        out[group]["n seeds"] = (len(cell["final acc"]),)
    return out


def expected_regime_table(sweep_dir: Path) -> dict[tuple[str, str], dict[str, tuple]]:
    out = {}
    arms = finished_arms(sweep_dir)
    for rank in {str(c["rank"]["r"]) for c, _ in arms}:
        of_rank = [records for c, records in arms if str(c["rank"]["r"]) == rank]
        logged = [
            s for s in shadow_names() if any(f"shadow/{s}/regime/uniform" in r for rs in of_rank for r in rs)
        ]
        for signal in logged:  # the five signals and the methods that define token weights
            keys = {k: f"shadow/{signal}/regime/{k}" for k in REGIMES}
            keys |= {"gini": f"shadow/{signal}/gini/mean", "etr": f"shadow/{signal}/etr/mean"}
            out[(rank, signal)] = {
                col: (np.mean([v for records in of_rank for v in values(records, key)]),)
                for col, key in keys.items()
            }
    return out


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
    return tuple(float(x) for x in cell.split("±"))


def assert_matches(rows: list[dict], expected: dict, key_columns: tuple[str, str]) -> None:
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
    # the latest step's samples of each arm (finished or not), at most 12 sections
    assert 1 <= page.count("<section>") <= 12
    assert "step 5 · row 0" in page and "step 1 · row" not in page


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
    assert_matches(regimes, expected_regime_table(sweep_dir), ("rank", "signal"))


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
    assert "No sample rollouts" in (single / "heatmaps.html").read_text()

    ranks_only = make_sweep(tmp_path / "ranks", credits=("arca",), ranks=(4, 8, 64), seeds=(0,), steps=2)
    text = build_report(ranks_only).read_text()
    assert [r["rank"] for r in parse_table(text, "## Final table")] == ["4", "8", "64"]
    assert {r["rank"] for r in parse_table(text, "## Regime shares per signal")} == {"4", "8", "64"}
    for png in FIGURES:
        assert imread(ranks_only / png).shape[1] > 100


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


def test_colour_scale_monotone_and_fixed():
    grid = np.linspace(-0.5, 6.0, 200)
    rgb = np.array([heatmap.weight_rgb(w) for w in grid])
    assert (np.diff(rgb, axis=0) <= 0).all()  # every channel darkens as the weight grows
    luminance = rgb @ [0.299, 0.587, 0.114]
    assert luminance[-1] < luminance[0] - 150
    assert heatmap.weight_colour(0.0) == "#ffffff"
    assert heatmap.weight_colour(3.0) == heatmap.weight_colour(10.0) != heatmap.weight_colour(1.0)
    assert heatmap.weight_colour(None) == heatmap.weight_colour(float("nan")) == heatmap.MISSING_COLOUR


def test_page_html_is_standalone():
    page = heatmap.page_html("a <title>", [("arm <x>", "<figure>f</figure>")])
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<title>a &lt;title&gt;</title>" in page and "<h3>arm &lt;x&gt;</h3><figure>f</figure>" in page
    assert 'class="legend"' in page and "≥3" in page


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


def run_report_cli(sweep_dir: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "arca_sweep.report", str(sweep_dir)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)


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


@pytest.mark.slow
def test_report_of_real_smoke_sweep(tmp_path):
    sweep_dir = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "arca_sweep", "credit=arca,entropy", "rank=8", "budget=smoke"]
    cmd += [f"hydra.sweep.dir={sweep_dir}", "logger.progress=false", "-m"]
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run_report_cli(sweep_dir)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(sweep_dir / "report.md")
    text = (sweep_dir / "report.md").read_text()
    assert "2 arms: 2 finished, 0 not finished." in text
    assert_matches(parse_table(text, "## Final table"), expected_final_table(sweep_dir), ("credit", "rank"))
    regimes = parse_table(text, "## Regime shares per signal")
    assert_matches(regimes, expected_regime_table(sweep_dir), ("rank", "signal"))
    # the training signal's own shadow regimes are its credit regimes: same passes, same weights
    for config, records in finished_arms(sweep_dir):
        credit = config["credit"]["name"]
        for r in records[1:]:
            assert r[f"shadow/{credit}/regime/uniform"] == pytest.approx(r["credit/regime/uniform"])
    for png in FIGURES:
        image = imread(sweep_dir / png)
        assert image.shape[0] > 100 and np.ptp(image[..., :3]) > 0.5
    page = (sweep_dir / "heatmaps.html").read_text()
    assert all(signal in page for signal in SIGNALS) and "&lt;|im_end|&gt;" in page
