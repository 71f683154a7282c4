"""Plug-in contracts checked at every call (issue 20, item 4 and the weak cases): a custom credit method's
salience is a finite, non-negative floating [B, T] tensor; it gets copies of what it must not change; a
reward is a finite real number; a plug-in that raises, exits or runs past its time limit stops the run with
one message naming its key, the function and where. In process for the contract, then real runs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from arca_sweep import credit
from arca_sweep.credit import GroupContext, TokenStats
from arca_sweep.plugins import PluginFailure
from arca_sweep.tasks import Problem
from arca_sweep.tasks.jsonl import JsonlTask
from tests.helpers import cli, cli_env

MASK = torch.tensor([[True, True, False], [True, True, True]])


def stats() -> TokenStats:
    return TokenStats(mask=MASK, logp=-torch.ones(2, 3))


def ctx() -> GroupContext:
    return GroupContext(advantages=torch.tensor([1.0, -1.0]), group_size=2, rewards=torch.tensor([1.0, 0.0]))


def call(fn, timeout_s=None):
    return credit.custom_method(fn, needs={"logp"}, timeout_s=timeout_s).fn(stats(), ctx())


@pytest.mark.parametrize(
    ("salience", "message"),
    [
        (torch.tensor([[1.0, -1.0, 0.0], [1.0, 1.0, 1.0]]), "1 negative values on response tokens (min -1)"),
        (torch.tensor([[1.0, float("nan"), 0.0], [1.0, 1.0, 1.0]]), "1 non-finite values on response tokens"),
        (torch.tensor([[1.0, 1.0, 0.0], [float("inf"), 1.0, 1.0]]), "1 non-finite values"),
        (-torch.ones(2, 3), "5 negative values"),  # the off-response value does not count (5 of 6 are on it)
        (torch.ones(2, 3, dtype=torch.long), "is a torch.int64 tensor; it must be floating point"),
        (torch.ones(2, 3, dtype=torch.bool), "is a torch.bool tensor"),
        (torch.ones(3), "must be a [B, T] = (2, 3) tensor; got (3,)"),
        (None, "salience tensor or a TokenCredit; got NoneType"),
        ("0.5", "got str"),
    ],
)
def test_a_salience_that_breaks_the_contract_stops_naming_the_method(salience, message):
    def method(stats, ctx):
        return salience

    with pytest.raises(PluginFailure) as info:
        call(method)
    text = str(info.value)
    assert "credit.target" in text and "method" in text and message in text, text


def test_values_off_the_response_and_zero_rows_are_fine():
    s = torch.tensor([[1.0, 2.0, float("nan")], [0.0, 0.0, 0.0]])  # NaN where masked; a zero row: fallback
    out = call(lambda stats, ctx: s)
    assert out.salience.tolist() == [[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]]
    bonus = credit.TokenCredit(salience=torch.ones(2, 3), bonus=-torch.ones(2, 3))  # a bonus may be negative
    assert call(lambda stats, ctx: bonus).bonus.min() == -1


def test_the_method_gets_copies():
    st, cx = stats(), ctx()

    cx.generator = torch.Generator().manual_seed(5)
    want = torch.rand(3, generator=torch.Generator().manual_seed(5))

    def vandal(stats, ctx):
        ctx.generator.manual_seed(0)
        torch.rand(100, generator=ctx.generator)
        ctx.advantages.mul_(1e6)
        ctx.rewards.zero_()
        stats.logp.fill_(5.0)
        stats.mask.fill_(False)
        return torch.ones(2, 3)

    out = credit.custom_method(vandal, needs={"logp"}).fn(st, cx)
    assert cx.advantages.tolist() == [1.0, -1.0] and cx.rewards.tolist() == [1.0, 0.0]
    assert st.logp.eq(-1).all() and st.mask.equal(MASK)
    assert torch.equal(torch.rand(3, generator=cx.generator), want)  # the run's draws are untouched
    assert out.salience.tolist() == [[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]


def test_raising_exiting_and_hanging_methods_are_named():
    def raises(stats, ctx):
        raise KeyError("hidden")

    def exits(stats, ctx):
        sys.exit(0)

    def hangs(stats, ctx):
        while True:
            try:
                time.sleep(0.01)
            except Exception:  # a plug-in that swallows errors still cannot swallow the limit
                pass

    with pytest.raises(PluginFailure, match="raised KeyError: 'hidden' on a batch of 2 responses"):
        call(raises)
    with pytest.raises(PluginFailure, match=r"called sys.exit\(0\).*a plug-in must return a value"):
        call(exits)
    with pytest.raises(PluginFailure, match="did not return within 0.3 s.*raise credit.timeout_s"):
        call(hangs, timeout_s=0.3)


def task(fn, timeout_s=None) -> JsonlTask:
    rows = [Problem(0, "Compute 1 + 1.", "2")]
    return JsonlTask(rows, rows, fn, timeout_s=timeout_s)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "returned NoneType None"),
        ("1.0", "returned str '1.0'"),
        (float("nan"), "non-finite reward nan"),
        (float("-inf"), "non-finite reward -inf"),
        (torch.tensor([1.0, 0.0]), "returned Tensor"),
        (10**400, "non-finite reward inf"),
    ],
)
def test_a_reward_that_is_not_a_finite_number_stops_naming_the_row(value, message):
    with pytest.raises(PluginFailure) as info:
        task(lambda text, answer: value).rewards(["2"], [Problem(7, "q", "2")])
    text = str(info.value)
    assert "data.reward" in text and "on problem 7 (answer '2')" in text and message in text, text


def test_numbers_of_every_kind_are_rewards():
    import numpy as np

    for value, want in ((True, 1.0), (0, 0.0), (np.float32(0.5), 0.5), (np.int64(1), 1.0)):
        assert task(lambda text, answer, v=value: v).rewards(["x"], [Problem(0, "q", "2")]) == [want]


def test_a_hanging_or_exiting_reward_is_named():
    def hangs(text, answer):
        while True:
            pass

    with pytest.raises(
        PluginFailure, match="did not return within 0.2 s on problem 0.*data.reward_timeout_s"
    ):
        task(hangs, timeout_s=0.2).rewards(["x"], [Problem(0, "q", "2")])
    with pytest.raises(PluginFailure, match=r"sys.exit\(3\)"):
        task(lambda text, answer: sys.exit(3)).rewards(["x"], [Problem(0, "q", "2")])


@pytest.mark.parametrize("verdict", [np.array([1, 0]), "yes", 2, None])
def test_a_correct_attribute_must_say_true_or_false(verdict):
    def reward(text, answer):
        return 1.0

    reward.correct = lambda text, answer: verdict
    with pytest.raises(PluginFailure, match="it must return True or False"):
        task(reward).correct(["x"], [Problem(0, "q", "2")], [1.0])
    reward.correct = lambda text, answer: np.bool_(True)  # numpy's bool counts, as do 0 and 1
    assert task(reward).correct(["x"], [Problem(0, "q", "2")], [1.0]) == [True]


# ------------------------------------------------------------------------------------------------ real runs

PLUGINS = """
import sys
import time

import torch


def signed(stats, ctx):
    return torch.where(torch.arange(stats.mask.shape[1]) % 2 == 0, 1.0, -1.0).expand(stats.mask.shape).clone()


def vandal(stats, ctx):
    ctx.advantages.mul_(1e6)
    return stats.mask.float()


def reward_hangs(text, answer):
    time.sleep(3600)


def reward_exits(text, answer):
    sys.exit(0)


def reward_nan(text, answer):
    return float("nan")
"""

ARGS = ["budget=smoke", "budget.steps=2", "budget.eval_size=4", "threads=1", "logger.progress=false"]


@pytest.fixture
def plugin_dir(tmp_path) -> Path:
    (tmp_path / "hostile.py").write_text(PLUGINS)
    return tmp_path


def run(plugin_dir: Path, arm: str, *extra: str) -> subprocess.CompletedProcess:
    return cli(
        *ARGS,
        *extra,
        f"hydra.run.dir={plugin_dir / arm}",
        cwd=plugin_dir,
        quiet=False,
        check=False,
        env=cli_env(),
        timeout=300,
    )


def one_error(proc: subprocess.CompletedProcess) -> str:
    lines = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


@pytest.mark.slow
def test_real_runs_stop_on_a_broken_plugin_naming_it(plugin_dir):
    line = one_error(run(plugin_dir, "signed", "credit=custom", "credit.target=hostile:signed"))
    assert "step 1: credit.target hostile:signed" in line and "negative values" in line
    assert not (plugin_dir / "signed" / "summary.json").exists()

    jsonl = ("data=jsonl", "data.eval_path=null")
    t0 = time.time()
    line = one_error(
        run(plugin_dir, "hangs", *jsonl, "data.reward=hostile:reward_hangs", "data.reward_timeout_s=2")
    )
    assert "step 0 (the initial eval): data.reward hostile:reward_hangs did not return within 2 s" in line
    assert time.time() - t0 < 240  # stopped by the limit, not by the test's own timeout
    line = one_error(run(plugin_dir, "exits", *jsonl, "data.reward=hostile:reward_exits"))
    assert "called sys.exit(0)" in line and not (plugin_dir / "exits" / "summary.json").exists()
    line = one_error(run(plugin_dir, "nan", *jsonl, "data.reward=hostile:reward_nan"))
    assert "non-finite reward nan" in line and "learning rate" not in line


@pytest.mark.slow
def test_a_method_that_scales_the_advantages_in_place_changes_nothing(plugin_dir):
    """The live advantages were once handed over: loss 22,388 instead of 0.022 (issue 20)."""
    base = run(plugin_dir, "mask", "credit=custom", "credit.target=hostile:vandal", "credit.timeout_s=60")
    assert base.returncode == 0, base.stderr[-3000:]
    losses = [
        json.loads(x).get("loss") for x in (plugin_dir / "mask" / "metrics.jsonl").read_text().splitlines()
    ]
    assert all(abs(v) < 1.0 for v in losses[1:]), losses


BAD_ROWS = {
    "": "no rows (the file is empty)",
    '{"prompt": "Compute 1 + 1.", "answer": "2"}\n{"prompt": "Compute 2 + 2."}\n': "row 2 has no 'answer'",
    '{"prompt": 5, "answer": "2"}\n': "row 1 needs a non-empty text 'prompt' (or 'question'); it has int '5'",
    '{"prompt": "Compute 1 + 1.", "answer": ""}\n': "row 1 has an empty answer ('')",
    '{"prompt": "Compute 1 + 1.", "answer": null}\n': "row 1 has an empty answer (None)",
}


@pytest.mark.parametrize("text", list(BAD_ROWS))
def test_bad_rows_are_one_data_error_naming_the_row(tmp_path, text):
    from arca_sweep.errors import DataError
    from arca_sweep.tasks import build_task
    from arca_sweep.testing import make_config

    rows = tmp_path / "rows.jsonl"
    rows.write_text(text)
    with pytest.raises(DataError) as info:
        build_task(make_config("data=jsonl", f"data.path={rows}").data)
    assert f"{rows}: {BAD_ROWS[text]}" in str(info.value)


@pytest.mark.slow
def test_a_bad_row_stops_a_run_before_any_model_loads(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "Compute 1 + 1.", "answer": null}\n')
    proc = cli(
        *ARGS,
        "data=jsonl",
        f"data.path={rows}",
        f"hydra.run.dir={tmp_path / 'arm'}",
        cwd=tmp_path,
        quiet=False,
        check=False,
        env=cli_env(),
    )
    assert f"{rows}: row 1 has an empty answer (None)" in one_error(proc)
    assert "Loading weights" not in proc.stderr and not (tmp_path / "arm" / "metrics.jsonl").exists()


def test_the_packaged_reward_reads_non_integer_answers():
    from arca_sweep.plugin_examples import boxed_match

    assert boxed_match("\\boxed{ x = 2 }", "x = 2") == 1.0 and boxed_match("\\boxed{3}", "1/2") == 0.0
    assert boxed_match("\\boxed{-5}", " -5 ") == 1.0 and boxed_match("no box", "2") == 0.0
