"""``arca-sweep-eval`` (arca_sweep/eval/cli.py) against what the README states and what runs logged."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

from arca_sweep.arm_dir import results_path
from arca_sweep.eval import read_results
from tests.helpers import REPO, cli, cli_env

README_BASE_ACCURACY = 0.635  # README "What the demo shows": the tiny model on the demo's 200 eval problems


def run_eval(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return cli(*args, "threads=1", cwd=cwd, module="arca_sweep.eval", quiet=False, check=check, env=cli_env())


def test_base_model_reproduces_the_readmes_accuracy(tmp_path):
    """The README's greedy base accuracy, with a sampled eval of a second set on top (issue 21): each set's
    file holds every sample, and the summary's metrics are the means of each file's per-problem values."""
    from arca_sweep.eval.sampled import problem_metrics

    assert f"base accuracy is {README_BASE_ACCURACY}" in (REPO / "README.md").read_text()
    sampled = ["eval.n=3", "eval.k=[1,3]", "+data@eval.sets.small=arith_small", "eval.sets.small.eval_size=6"]
    proc = run_eval("experiment=demo", *sampled, cwd=tmp_path)
    (out,) = (tmp_path / "outputs" / "eval").iterdir()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval/accuracy"] == README_BASE_ACCURACY and summary["problems"] == 200
    rows = read_results(out / "results.jsonl")
    assert [r["position"] for r in rows] == list(range(200)) and sum(r["correct"] for r in rows) == 127
    assert summary["adapter"] is None and "eval accuracy 0.635 (127/200)" in proc.stderr
    assert f"results in {out}" in proc.stderr
    assert summary["sets"] == {"small": {"data": "arith_small", "problems": 6}} and summary["perf/eval_s"] > 0
    for prefix, path, size in (
        ("eval/", out / "results.jsonl", 200),
        ("eval/small/", out / "small" / "results.jsonl", 6),
    ):
        rows = read_results(path)
        assert len(rows) == size and all(len(r["samples"]) == 3 for r in rows)
        values = [problem_metrics(r, (1, 3)) for r in rows]
        for key in ("accuracy", "mean@3", "pass@1", "pass@3", "maj@1", "maj@3", "length", "sampled_length"):
            assert summary[prefix + key] == pytest.approx(sum(v[key] for v in values) / size), key


@pytest.mark.slow
def test_a_trained_adapter_reproduces_its_runs_evals(tmp_path):
    """Train a short run hard enough to change its greedy answers, then evaluate its arm (its adapter,
    its own config) and the base model on the same config: each reproduces, problem by problem, the
    run's own final and initial eval."""
    arm = tmp_path / "arm"
    run = ["budget=smoke", "budget.steps=4", "budget.eval_size=48", "optim.lr=0.03", "credit=uniform"]
    cli(*run, "threads=1", f"hydra.run.dir={arm}", cwd=tmp_path)
    summary = json.loads((arm / "summary.json").read_text())
    final, initial = read_results(results_path(arm, 4)), read_results(results_path(arm, 0))
    assert final != initial, (
        "the run must have changed the model's greedy answers for this test to mean anything"
    )

    run_eval("--adapter", str(arm), "--out", str(tmp_path / "adapter"), cwd=tmp_path)
    got = json.loads((tmp_path / "adapter" / "summary.json").read_text())
    assert got["eval/accuracy"] == summary["eval/accuracy_final"] and got["adapter"] == str(arm / "adapter")
    assert read_results(tmp_path / "adapter" / "results.jsonl") == final

    run_eval(*run, "--out", str(tmp_path / "base"), cwd=tmp_path)
    base = json.loads((tmp_path / "base" / "summary.json").read_text())
    assert base["eval/accuracy"] == summary["eval/accuracy_initial"]
    assert read_results(tmp_path / "base" / "results.jsonl") == initial

    # --out an arm (or an earlier eval) is refused: the arm's summary stays the run's
    before = (arm / "summary.json").read_bytes()
    for out in (arm, tmp_path / "base"):
        proc = run_eval("--adapter", str(arm), "--out", str(out), cwd=tmp_path, check=False)
        assert proc.returncode == 2 and "refusing to overwrite" in proc.stderr, proc.stderr[-2000:]
    assert (arm / "summary.json").read_bytes() == before and not (arm / "results.jsonl").exists()

    # an arm whose .hydra/ is gone: its summary's overrides, said in the log; a damaged one: one error line
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(arm, bare)
    shutil.rmtree(bare / ".hydra")
    proc = run_eval("--adapter", str(bare), "--out", str(tmp_path / "bare_eval"), cwd=tmp_path)
    assert "has no .hydra/: using the overrides its summary.json lists" in proc.stderr
    assert read_results(tmp_path / "bare_eval" / "results.jsonl") == final
    shutil.copytree(arm / ".hydra", bare / ".hydra")
    (bare / ".hydra" / "overrides.yaml").write_text("{a: [1")
    proc = run_eval("--adapter", str(bare), "--out", str(tmp_path / "bad"), cwd=tmp_path, check=False)
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert (
        proc.returncode == 2 and len(errors) == 1 and "overrides.yaml or hydra.yaml is damaged" in errors[0]
    )

    # the arm's adapter dir itself works too; overrides on top of the arm's own (another eval set size)
    run_eval(
        "--adapter",
        str(arm / "adapter"),
        "budget.eval_size=8",
        "--out",
        str(tmp_path / "eight"),
        cwd=tmp_path,
    )
    assert read_results(tmp_path / "eight" / "results.jsonl") == final[:8]


def test_bad_input_fails_with_one_message_before_loading_anything(tmp_path):
    proc = run_eval("--adapter", str(tmp_path), cwd=tmp_path, check=False)
    assert proc.returncode != 0 and f"--adapter {tmp_path}: no adapter_config.json" in proc.stderr
    proc = run_eval("credit.normalize=softmaxx", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "credit.normalize='softmaxx'" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "outputs").exists()


def test_a_damaged_adapter_is_named_before_loading_anything(tmp_path):
    """Issue 20: a corrupt adapter_config.json gave peft's "Repo id must be ..."; no or cut weights crashed."""
    import shutil

    from safetensors.torch import save_file

    good = tmp_path / "good"
    good.mkdir()
    (good / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    save_file({"w": torch.zeros(64, 64)}, good / "adapter_model.safetensors")
    cases = {}
    for name in ("corrupt", "noweights", "cut"):
        shutil.copytree(good, tmp_path / name)
        cases[name] = tmp_path / name
    (cases["corrupt"] / "adapter_config.json").write_text('{"peft_type": "LO')
    (cases["noweights"] / "adapter_model.safetensors").unlink()
    with open(cases["cut"] / "adapter_model.safetensors", "r+b") as f:
        f.truncate(f.seek(0, 2) - 100)
    want = {
        "corrupt": "adapter_config.json is not readable JSON",
        "noweights": "holds no adapter_model.safetensors",
        "cut": "adapter_model.safetensors is damaged (it holds",
    }
    from arca_sweep.errors import UserError
    from arca_sweep.eval.cli import locate_adapter

    for name, path in cases.items():
        with pytest.raises(UserError, match=re.escape(want[name])):
            locate_adapter(str(path))
    proc = run_eval("--adapter", str(cases["cut"]), cwd=tmp_path, check=False)  # and as a command
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1 and want["cut"] in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Loading" not in proc.stderr
