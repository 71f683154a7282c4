"""The command line as users meet it: ``arca-sweep --help`` (conf/hydra/help/arca_sweep.yaml)."""

from __future__ import annotations

from pathlib import Path

from arca_sweep.main import CONF_DIR
from tests.helpers import cli, cli_env

CONF = Path(CONF_DIR)


def help_text(tmp_path: Path, *args: str) -> str:
    proc = cli(*args, "--help", cwd=tmp_path, quiet=False, check=False, timeout=60, env=cli_env())
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_help_lists_every_group_with_its_options_and_describes_it(tmp_path):
    text = help_text(tmp_path)
    groups = {d.name: d for d in CONF.iterdir() if d.is_dir() and d.name != "hydra"}
    groups["hydra/launcher"] = CONF / "hydra" / "launcher"
    assert {"model", "rank", "credit", "budget", "data", "rollout", "logger", "experiment"} < set(groups)
    head, _, config = text.partition("== Config:")
    assert config, text
    lines = head.splitlines()
    for group, path in groups.items():
        options = sorted(p.stem for p in path.glob("*.yaml"))
        listed = [line for line in lines if line.startswith(f"{group}: ")]
        assert len(listed) == 1, (group, text)
        assert sorted(listed[0].split(": ", 1)[1].split(", ")) == options, (group, listed)
        described = [line for line in lines if line.split()[:1] == [group] and len(line.split()) > 2]
        assert described, f"--help describes no group {group!r}"
    assert "powered by Hydra" not in text and "arca-sweep --hydra-help" in text
    assert 'eval "$(arca-sweep -sc install=bash)"' in text
    assert "credit:\n  name: arca" in config  # the composed config, every key


def test_help_shows_the_config_an_override_composes(tmp_path):
    assert "credit:\n  name: entropy" in help_text(tmp_path, "credit=entropy")


def test_shell_completion_completes_group_options(tmp_path):
    """What `eval "$(arca-sweep -sc install=bash)"` asks for on <TAB> after `credit=`."""
    line = "arca-sweep credit="
    env = cli_env(COMP_LINE=line, COMP_POINT=str(len(line)))
    proc = cli("-sc", "query=bash", cwd=tmp_path, quiet=False, check=False, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert set(proc.stdout.split()) == {f"credit={p.stem}" for p in (CONF / "credit").glob("*.yaml")}
