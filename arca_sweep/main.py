"""Command line: ``python -m arca_sweep [overrides] [-m]`` (Hydra; see conf/config.yaml)."""

from __future__ import annotations

import re
import sys
from contextlib import nullcontext
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from arca_sweep.config import register_configs
from arca_sweep.launching import name_failed_arm


def unquote(override: str) -> str:
    """``rank='16'`` -> ``rank=16``: undo :func:`quote_numeric_choices` for names shown to people."""
    return override.replace("'", "").replace('"', "")


def run_name(override_dirname: str) -> str:
    """An arm's directory name: its overrides (``credit=arca,rank=16``), or ``default``."""
    return unquote(override_dirname).replace("/", "_") or "default"


if not OmegaConf.has_resolver("arca_run_name"):
    OmegaConf.register_new_resolver("arca_run_name", run_name)
register_configs()


def find_conf_dir() -> str:
    """The config tree: ``arca_sweep/conf/`` in an installed wheel (the repo's top-level ``conf/``,
    shipped as the package data ``arca_sweep.conf``: pyproject.toml), else ``conf/`` beside the
    package in a checkout. One tree either way; users add their own through ``hydra.searchpath``."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(
        f"arca_sweep's config tree is missing: neither {package / 'conf'} (an installed wheel) nor "
        f"{package.parent / 'conf'} (a checkout) holds config.yaml; reinstall the package"
    )


CONF_DIR = find_conf_dir()
_NUMERIC_LIST = re.compile(r"^(?P<key>[+~]{0,2}[\w/]+)=(?P<values>-?\d+(,-?\d+)*)$")


def quote_numeric_choices(args: list[str], conf_dir: str = CONF_DIR) -> list[str]:
    """``rank=8,16`` -> ``rank='8','16'``: Hydra parses a bare number as an int, and an int is not
    a config group choice ("Config group override must be a string"). Only config groups are
    touched; ``rank.r=8`` and ``seed=1,2`` stay numbers."""
    out = []
    for arg in args:
        m = _NUMERIC_LIST.match(arg)
        if m and (Path(conf_dir) / m["key"].lstrip("+~")).is_dir():
            arg = m["key"] + "=" + ",".join(f"'{v}'" for v in m["values"].split(","))
        out.append(arg)
    return out


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg) -> None:
    from arca_sweep.progress import quiet_libraries
    from arca_sweep.train import run

    quiet_libraries()

    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    sweep_dir = hc.sweep.dir if multirun else None
    overrides = [unquote(o) for o in hc.overrides.task]
    with name_failed_arm(out_dir, hc.job.name) if multirun else nullcontext():  # arca_sweep/launching.py
        run(cfg, out_dir, overrides, sweep_dir, dict(hc.runtime.choices))


def cli() -> None:
    args = quote_numeric_choices(sys.argv[1:])
    # `-m` may stand anywhere (`... -m hydra.sweep.dir=X`): argparse rejects overrides on both sides of it.
    multirun = [a for a in args if a in ("-m", "--multirun")]
    sys.argv[1:] = multirun + [a for a in args if a not in multirun]
    main()


if __name__ == "__main__":
    cli()
