"""Plug-ins by import path: a user's credit method (``credit=custom``) and task (``data=jsonl``) from a
module outside the package, checked before any model is loaded, and run in a sweep like built-ins."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from arca_sweep.config import ConfigError, validate
from arca_sweep.credit import GroupContext, TokenStats
from arca_sweep.plugins import PluginError, load_callable
from arca_sweep.tasks import build_task
from arca_sweep.testing import make_config
from tests.helpers import cli as run_cli
from tests.helpers import cli_env, records

# The README's example module (README.md, "Plug-ins"), written into a temp dir outside the package.
USER_MODULE = '''
import torch


def late_weight(stats, ctx, *, power=1.0):
    """Salience t^power: later tokens weigh more."""
    return stats.mask.float().cumsum(-1) ** power


late_weight.needs = {"logp"}  # TokenStats fields it reads (default: every [B, T] field)


def exact_answer(response_text, answer):
    """1.0 when the response's last line ends with the answer."""
    lines = response_text.strip().splitlines()
    return float(bool(lines) and lines[-1].replace("}", "").strip().endswith(answer))
'''


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """A directory holding the user's module ``my_plugins`` and a JSONL of rows, on sys.path."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "my_plugins.py").write_text(USER_MODULE)
    (plugins / "broken.py").write_text("raise RuntimeError('no GPU here')\n")
    (plugins / "wrong.py").write_text("def two(a):\n    return 1.0\n\nNOT_A_FUNCTION = 3\n")
    rows = [
        {"prompt": f"Compute {a} + {b}. Put the final answer in \\boxed{{}}.", "answer": a + b}
        for a, b in [(12, 7), (40, 2), (5, 9), (31, 30), (8, 8), (70, 21)]
    ]
    (plugins / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.syspath_prepend(str(plugins))
    for name in ("my_plugins", "broken", "wrong"):
        sys.modules.pop(name, None)
    return plugins


def test_load_callable_names_every_failure(user_dir):
    assert load_callable("my_plugins:late_weight", "credit.target").__name__ == "late_weight"
    cases = {
        "my_plugins": "must name a function as 'package.module:function'",
        "my_plugins:": "must name a function",
        "no_such_module:fn": "cannot import module 'no_such_module'",
        "broken:fn": "importing 'broken' raised RuntimeError: no GPU here",
        "my_plugins:nope": "module 'my_plugins' has no attribute 'nope'",
        "wrong:NOT_A_FUNCTION": "is a int, not a function",
    }
    for spec, message in cases.items():
        with pytest.raises(PluginError, match="credit.target") as info:
            load_callable(spec, "credit.target")
        assert message in str(info.value), spec


def test_validate_checks_plugins_and_options_before_model_load(user_dir):
    ok = make_config("credit=custom", "credit.target=my_plugins:late_weight", "+credit.options.power=2")
    validate(ok)
    bad = {
        ("credit=custom", "credit.target=wrong:two"): "must be callable as fn(stats, ctx, **credit.options)",
        ("credit=custom", "credit.target=my_plugins:late_weight", "+credit.options.gamma=1"): "gamma",
        ("credit=custom", "credit.target=no_such_module:fn"): "cannot import module 'no_such_module'",
        ("credit=archer", "+credit.options.quantil=0.5"): "not options of 'archer'; valid: quantile",
        ("credit=arca", "+credit.options.rho=0.5"): "this method takes no options",
        ("data=jsonl", f"data.path={user_dir / 'missing.jsonl'}"): "data.path=",
        ("data=jsonl", "data.reward=wrong:two"): "must be callable as fn(response_text, answer)",
        ("learner.mini_batches=99",): "learner.mini_batches=99 exceeds the",
    }
    for overrides, message in bad.items():
        with pytest.raises(ConfigError) as info:
            validate(make_config(*overrides))
        assert message in str(info.value), (overrides, str(info.value))


def test_custom_method_in_the_learner_and_the_jsonl_task(user_dir):
    from arca_sweep.credit import custom_method

    fn = load_callable("my_plugins:late_weight", "credit.target")
    method = custom_method(fn)
    assert method.needs == {"logp"}
    stats = TokenStats(mask=torch.tensor([[True, True, True, False]]), logp=torch.zeros(1, 4))
    out = method.fn(stats, GroupContext(torch.ones(1), 1), power=2.0)
    assert out.salience.tolist() == [[1.0, 4.0, 9.0, 0.0]]

    cfg = make_config(
        "data=jsonl", f"data.path={user_dir / 'rows.jsonl'}", "data.reward=my_plugins:exact_answer"
    )
    task = build_task(cfg.data)
    assert sorted(task.train_indices(0, 6)) == list(range(6))  # one seeded permutation per epoch
    assert task.train_indices(1, 3) == build_task(cfg.data).train_indices(1, 3)
    problem = task.train_problem(0)
    assert problem.answer == "19" and problem.question.startswith("Compute 12 + 7")
    assert task.rewards(["12 + 7 = 19\n\\boxed{19}", "no"], [problem, problem]) == [1.0, 0.0]
    assert [p.answer for p in task.eval_problems(2)] == ["19", "42"]  # file order (no eval_path)


def test_packaged_examples_are_the_defaults():
    """credit=custom and data=jsonl run as shipped (the packaged example plug-ins)."""
    cfg = make_config("credit=custom", "data=jsonl")
    validate(cfg)
    task = build_task(cfg.data)
    assert len(task.train) == 256 and task.reward(f"\\boxed{{{task.train[0].answer}}}", task.train[0]) == 1.0


def cli(*args, cwd: Path, pythonpath: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = cli_env(hydra_full_error=True, pythonpath=[pythonpath])
    return run_cli(*args, cwd=cwd, check=check, timeout=900, env=env)


def test_a_broken_plugin_fails_before_any_compute(user_dir, tmp_path):
    proc = cli(
        "credit=custom",
        "credit.target=broken:fn",
        f"hydra.run.dir={tmp_path / 'arm'}",
        cwd=tmp_path,
        pythonpath=user_dir,
        check=False,
    )
    assert proc.returncode != 0
    assert "credit.target='broken:fn': importing 'broken' raised RuntimeError: no GPU here" in proc.stderr
    assert not (tmp_path / "arm" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_custom_signal_and_custom_task_run_in_a_sweep(user_dir, tmp_path):
    """The README's plug-in example: the user's module lives in a temp dir on PYTHONPATH."""
    sweep = tmp_path / "sweep"
    work = tmp_path / "work"  # not the module's dir: it is found through PYTHONPATH only
    work.mkdir()
    cli(
        "credit=uniform,custom",
        "credit.target=my_plugins:late_weight",
        "data=jsonl",
        f"data.path={user_dir / 'rows.jsonl'}",
        "data.reward=my_plugins:exact_answer",
        "budget=smoke",
        "budget.steps=2",
        "budget.eval_size=4",
        "threads=1",
        "-m",
        f"hydra.sweep.dir={sweep}",
        cwd=work,
        pythonpath=user_dir,
    )
    arms = sorted(p for p in sweep.iterdir() if (p / "summary.json").is_file())
    assert len(arms) == 2
    by_credit = {}
    for arm in arms:
        rows = records(arm)
        by_credit["custom" if "credit=custom" in arm.name else "uniform"] = rows
        assert [r["step"] for r in rows] == [0, 1, 2]
        assert all(f"shadow/custom/{k}" in rows[1] for k in ("gini/mean", "etr/mean", "regime/uniform"))
    hashes = {c: [r["data/batch_hash"] for r in rows[1:]] for c, rows in by_credit.items()}
    assert hashes["custom"] == hashes["uniform"], "both arms see the same prompts in the same order"
    custom = by_credit["custom"][1]
    # the training signal is its own shadow, and t-weighting is not uniform
    assert custom["credit/gini/mean"] == pytest.approx(custom["shadow/custom/gini/mean"])
    assert custom["credit/gini/mean"] > 0.1
    report = (sweep / "report.md").read_text()
    final = report.split("## Final table")[1].split("## Regime shares")[0]
    regimes = report.split("## Regime shares")[1]
    assert "| custom |" in final and "| uniform |" in final
    assert "| custom |" in regimes and "| entropy_mask |" in regimes
