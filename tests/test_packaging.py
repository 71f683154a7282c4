"""The package as users get it: a built wheel installed into a fresh venv, run from an unrelated directory;
the package list in pyproject.toml; the config tree found from a checkout."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from arca_sweep.main import CONF_DIR
from tests.helpers import REPO


def test_pyproject_lists_every_package():
    """``packages`` is an explicit list (conf/ is mapped into it): a new subpackage must be added there,
    or the wheel silently lacks it."""
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "arca_sweep").rglob("__init__.py")}
    assert set(tool["packages"]) == on_disk | {"arca_sweep.conf"}
    assert tool["package-dir"] == {"arca_sweep.conf": "conf"}


def test_checkout_uses_the_top_level_conf():
    assert Path(CONF_DIR) == REPO / "conf"
    assert not (REPO / "arca_sweep" / "conf").exists(), "one config tree: conf/ at the top, no copy"


def _run(cmd: list, cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    return proc


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_runs_anywhere(tmp_path):
    """Build the wheel from a copy of the source, install it into a new venv (torch first, the version
    this suite runs on; every other dependency resolved by pip from the wheel's metadata), and from an
    unrelated directory print the config, run an arm with a user's own config group option and run a
    two-arm sweep: every output lands under that directory."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("arca_sweep", "conf"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "HYDRA_FULL_ERROR")}
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-w", tmp_path / "dist", src],
        tmp_path,
        env,
    )
    (wheel,) = (tmp_path / "dist").glob("arca_sweep-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], tmp_path, env)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--quiet"]
    _run([*pip, f"torch=={torch.__version__}"], tmp_path, env)
    _run([*pip, wheel], tmp_path, env)

    work = tmp_path / "elsewhere"
    work.mkdir()
    where = _run(
        [venv / "bin" / "python", "-c", "import arca_sweep.main as m; print(m.__file__, m.CONF_DIR)"],
        work,
        env,
    )
    module, conf = where.stdout.split()
    assert Path(module).is_relative_to(venv) and Path(conf) == Path(module).parent / "conf", where.stdout

    exe = str(venv / "bin" / "arca-sweep")
    job = _run([exe, "--cfg", "job"], work, env)
    assert "name: tiny" in job.stdout and "name: arca" in job.stdout
    assert not (work / "outputs").exists()

    # a user's own option of a group, outside the package, through hydra.searchpath
    (work / "mine" / "budget").mkdir(parents=True)
    smoke = (Path(CONF_DIR) / "budget" / "smoke.yaml").read_text()
    (work / "mine" / "budget" / "one_step.yaml").write_text(smoke.replace("steps: 3", "steps: 1"))
    common = ["threads=1", "logger.progress=false"]
    _run([exe, "budget=one_step", f"hydra.searchpath=[file://{work / 'mine'}]", *common], work, env)
    runs = list((work / "outputs" / "runs").iterdir())
    assert len(runs) == 1, runs
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["steps"] == 1 and summary["eval/accuracy_final"] is not None, summary

    _run([exe, "budget=smoke", "budget.steps=1", "credit=arca,uniform", "-m", *common], work, env)
    (sweep,) = (work / "outputs" / "multirun").iterdir()
    arms = sorted(p.name for p in sweep.iterdir() if (p / "summary.json").is_file())
    assert arms == ["budget.steps=1,budget=smoke,credit=arca", "budget.steps=1,budget=smoke,credit=uniform"]
    assert (sweep / "sweep_summary.md").is_file() and (sweep / "report.md").is_file()

    arm = work / "outputs" / "multirun" / sweep.name / arms[0]
    _run([str(venv / "bin" / "arca-sweep-eval"), "--adapter", str(arm), "threads=1"], work, env)
    (evaluated,) = (work / "outputs" / "eval").iterdir()
    got = json.loads((evaluated / "summary.json").read_text())
    assert got["eval/accuracy"] == json.loads((arm / "summary.json").read_text())["eval/accuracy_final"]
    assert sorted(p.name for p in work.iterdir()) == ["mine", "outputs"]
