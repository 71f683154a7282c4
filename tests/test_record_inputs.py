"""An arm's record says what ran, part two (issue 20): a resume on changed inputs is refused naming them,
and every accepted change stays in the record; an output dir that cannot be written is one message before
Hydra starts. Real processes and files; the helpers are tests/test_record_identity.py's."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from tests.helpers import cli, cli_env, fill, tmpfs
from tests.test_record_identity import ARGS, error_line, rows, run, snapshot

pytestmark = pytest.mark.slow


PLUGIN = """
def reward(text, answer):
    return float(answer in text)
"""


def test_a_resume_on_changed_data_or_plugin_is_refused_naming_it(tmp_path):
    data = rows(tmp_path / "rows.jsonl", 6)
    (tmp_path / "my_reward.py").write_text(PLUGIN)
    extra = ("budget.steps=1", "data=jsonl", f"data.path={data}", "data.reward=my_reward:reward")
    arm = tmp_path / "arm"
    run(arm, *extra)
    inputs = json.loads((arm / "summary.json").read_text())["inputs"]
    assert any(k.startswith("data.path") for k in inputs) and any(k.startswith("data.reward") for k in inputs)
    (arm / "summary.json").unlink()  # resumable from its step-1 checkpoint

    data.write_text(data.read_text().replace("Compute 3 + 1.", "Compute 30 + 1."))
    before = snapshot(arm)
    line = error_line(run(arm, *extra, check=False))
    assert "other inputs" in line and f"data.path ({data})" in line and "accept_changed_inputs=true" in line
    assert "data.reward" not in line
    assert snapshot(arm) == before

    rows(data, 6)  # the original rows again; now the plug-in changes
    (tmp_path / "my_reward.py").write_text(PLUGIN.replace("float(", "0.5 * float("))
    line = error_line(run(arm, *extra, check=False))
    assert f"data.reward ({tmp_path / 'my_reward.py'})" in line and "data.path" not in line

    proc = run(arm, *extra, "accept_changed_inputs=true")
    assert "resuming on changed inputs" in proc.stdout + proc.stderr
    summary = json.loads((arm / "summary.json").read_text())
    assert [c["resumed_after_step"] for c in summary["inputs_changed"]] == [1]
    assert any("data.reward" in c for c in summary["inputs_changed"][0]["changes"])


def test_every_accepted_input_change_stays_in_the_record(tmp_path):
    """Two resumes: the first on changed data (accepted), the second plain; the summary still says that
    the steps before the first resume trained on other rows."""
    import time

    data = rows(tmp_path / "rows.jsonl", 6)
    extra = ["budget.steps=30", "budget.checkpoint_every=1", "data=jsonl", f"data.path={data}"]
    arm = tmp_path / "arm"

    def run_until(lines: int, *more: str) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-m", "arca_sweep", *ARGS, *extra, *more, f"hydra.run.dir={arm}"],
            cwd=tmp_path,
            env=cli_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            text = (arm / "metrics.jsonl").read_text() if (arm / "metrics.jsonl").exists() else ""
            if text.count("\n") >= lines:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read()[-3000:]  # still running: killed mid-run
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    run_until(3)
    rows(data, 7)  # another row: other content
    run_until(9, "accept_changed_inputs=true")
    run(arm, *extra)  # plain: the inputs are the checkpoint's now
    summary = json.loads((arm / "summary.json").read_text())
    (change,) = summary["inputs_changed"]
    assert change["resumed_after_step"] >= 1 and any("data.path" in c for c in change["changes"])


def test_a_read_only_output_dir_is_one_message_before_hydra_starts(tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as disk:
        for where, extra in (("run", ()), ("sweep", ("-m",))):
            key = "hydra.sweep.dir" if extra else "hydra.run.dir"
            proc = cli(
                *ARGS, *extra, f"{key}={disk / where}", cwd=tmp_path, quiet=False, check=False, env=cli_env()
            )
            line = error_line(proc)
            assert f"cannot write the output dir {disk / where}: {disk} is read-only. Pass {key}=" in line
        proc = cli(*ARGS, "--cfg", "job", cwd=disk, quiet=False, check=False, env=cli_env())
        assert proc.returncode == 0 and "credit:" in proc.stdout  # printing the config writes nothing
    with tmpfs(tmp_path / "full", "size=512k") as full:
        fill(full / "filler")
        line = error_line(run(full / "arm", check=False))
        assert f"cannot write the output dir {full / 'arm'}: {full} has no space left on device" in line
