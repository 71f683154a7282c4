"""Command line: ``python -m arca_sweep [overrides] [-m]`` (Hydra; see conf/config.yaml)."""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from arca_sweep.arm_dir.names import unquote
from arca_sweep.config import register_configs
from arca_sweep.errors import UserError
from arca_sweep.launching import name_failed_arm

_NUMERIC_CHOICE = re.compile(r"(^|,)([\w/.+~]+)='(-?\d+)'(?=,|$)")
MAX_NAME_BYTES = 200  # under every filesystem's 255-byte limit on one name, with room for Hydra's suffixes


def run_name(override_dirname: str) -> str:
    """An arm's directory name: its overrides (``credit=arca,rank=16``), or ``default``.

    Injective: two different override sets never share a dir. ``/`` cannot stand in a name, so it is
    written ``%2F``, quotes ``%27`` and ``%22``, and ``%`` itself ``%25`` (``data.eval_path=data/x.jsonl``
    is ``data.eval_path=data%2Fx.jsonl``, never ``data.eval_path=data_x.jsonl``'s dir); only the quotes of
    :func:`quote_numeric_choices` are undone (``rank='16'`` is ``rank=16``). Bounded: a name over
    :data:`MAX_NAME_BYTES` bytes (a long cluster path) is cut and ends in ``~`` and 16 hex digits of the
    full name's sha256; the full overrides are in the arm's ``.hydra/overrides.yaml`` and ``summary.json``.
    """
    import hashlib

    name = _NUMERIC_CHOICE.sub(r"\1\2=\3", override_dirname)  # rank='16' (quote_numeric_choices) is rank=16
    escapes = {"%": "%25", "/": "%2F", "'": "%27", '"': "%22"}
    name = "".join(escapes.get(c, c) for c in name) or "default"
    raw = name.encode()
    if len(raw) <= MAX_NAME_BYTES:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:16]
    return raw[: MAX_NAME_BYTES - 17].decode(errors="ignore") + "~" + digest


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
    # Hydra wrote this launch's config, overrides and hydra.yaml under hydra.output_subdir (conf/config.yaml:
    # a staging dir of its own); the run makes them the arm's .hydra/ only once it runs the arm.
    staged = out_dir / hc.output_subdir if str(hc.output_subdir or "").startswith(".hydra.launch/") else None
    # (a user's own hydra.output_subdir, e.g. .hydra or null, is Hydra's usual behaviour: nothing staged)
    with name_failed_arm(out_dir, hc.job.name) if multirun else user_errors():  # arca_sweep/launching.py
        run(cfg, out_dir, overrides, sweep_dir, dict(hc.runtime.choices), staged)


RANK_ERROR_DELAY_S = 10  # (user_errors)


@contextmanager
def user_errors():
    """A :class:`UserError` (bad config or data, arm dir in use or damaged, a diverged run) is printed as
    its message alone, exit code 2; ``ARCA_TRACEBACK=1`` shows the traceback instead."""
    try:
        yield
    except UserError as exc:
        if os.environ.get("ARCA_TRACEBACK"):
            raise
        # An arm of several processes: every rank meets the same error, and rank 0 says it. Another rank
        # waits first: torchrun stops it when rank 0 exits; it speaks only if the error was its own.
        if os.environ.get("RANK", "0") != "0" and "MASTER_ADDR" in os.environ:
            time.sleep(RANK_ERROR_DELAY_S)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


# Hydra flags that take a value, and those after which Hydra does something else than run one job.
_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p"}
_OTHER_MODES = {"-m", "--multirun", "-h", "--help", "--hydra-help", "--version", "-i", "--info", "-sc"}
_OTHER_MODES |= {"--shell-completion", "-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir"}
_OTHER_MODES |= {"--experimental-rerun"}


def check_renamed_keys(args: list[str]) -> None:
    """A key an earlier version had (``advantage.scale``): one ``error:`` line naming its replacement, exit
    code 2, in every mode (a sweep included), before anything is written."""
    from arca_sweep.config import ConfigError, renamed_key_errors

    with user_errors():
        if errors := renamed_key_errors([a for a in args if not a.startswith("-")]):
            raise ConfigError("invalid config:\n  " + "\n  ".join(errors))


def check_config(args: list[str]) -> None:
    """Compose and validate the config of a single run (also ``--cfg job``) before Hydra starts it, so a bad
    value is one message, exit code 2, before anything is written or loaded. A multirun validates each
    arm as it starts; anything Hydra itself rejects (an unknown group option) is left to Hydra's message."""
    if any(a in _OTHER_MODES or a.split("=")[0] in _OTHER_MODES for a in args):
        return
    overrides, skip = [], False
    for arg in args:
        if skip or arg in _VALUE_FLAGS:
            skip = not skip and arg in _VALUE_FLAGS
            continue
        if not arg.startswith("-") and not arg.lstrip("+~").startswith(("hydra.", "hydra/")):
            overrides.append(arg)
        elif arg.startswith("-") and arg != "--resolve":
            return  # a flag we do not know: Hydra decides
    from hydra import compose, initialize_config_dir

    from arca_sweep.config import ConfigError, validate

    try:
        with initialize_config_dir(CONF_DIR, version_base="1.3"):
            cfg = compose("config", overrides=overrides)
    except Exception:  # Hydra's own error, with its list of choices, comes from main()
        return
    with user_errors():
        try:
            validate(cfg)
        except ConfigError:
            raise
        except Exception:  # e.g. an interpolation that does not resolve: Hydra explains it better
            return


def check_output_dir(args: list[str]) -> None:
    """Before Hydra sets up its logging in the output dir: that dir (``hydra.run.dir``, ``hydra.sweep.dir``
    under ``-m``, else ``outputs/`` here) can be created and written, or one ``error:`` line says which
    directory is read-only and what to pass instead, exit code 2."""
    no_job = {"--cfg", "-c", "-h", "--help", "--hydra-help", "--version", "-i", "--info", "-sc"}
    if any(a in no_job or a.split("=")[0] in no_job | {"--shell-completion"} for a in args):
        return  # nothing is written
    multirun = any(a in ("-m", "--multirun") for a in args)
    key = "hydra.sweep.dir=" if multirun else "hydra.run.dir="
    given = [a.split("=", 1)[1] for a in args if a.startswith(key)]
    target = Path(given[-1] if given else "outputs").expanduser().absolute()
    if "$" in str(target):  # an interpolation: Hydra resolves it, and reports what it cannot write
        return
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free if probe.is_dir() else 0
    if probe.is_dir() and os.access(probe, os.W_OK | os.X_OK) and free >= 2**20:
        return
    what = "is not a directory" if not probe.is_dir() else "is read-only"
    if probe.is_dir() and os.access(probe, os.W_OK | os.X_OK):
        what = f"has no space left on device ({free} bytes free); free space there, or"
    with user_errors():
        from arca_sweep.errors import UserError

        raise UserError(
            f"cannot write the output dir {target}: {probe} {what}. Pass {key}<a writable dir> "
            "(on a cluster: a scratch or home filesystem the job can write)"
        )


def share_launch_stamp() -> None:
    """Under torchrun: every rank's Hydra names the same sweep dir (``hydra.sweep.dir`` holds the launch's
    time, which the ranks would each read a moment apart: hydra#2070). Rank 0 posts its time to torchrun's
    store and every rank sets ``ARCA_LAUNCH_STAMP`` to it (conf/config.yaml)."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2 or "ARCA_LAUNCH_STAMP" in os.environ:
        return
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":  # not torchrun: nothing to share through
        return
    import datetime
    import time

    from torch.distributed import TCPStore

    store = TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        is_master=False,
        timeout=datetime.timedelta(seconds=300),
    )
    # one stamp per torchrun launch: a restarted round (--max-restarts) keeps the first round's sweep dir
    key = f"arca_sweep/stamp/{os.environ.get('TORCHELASTIC_RUN_ID', '')}"
    if os.environ.get("RANK", "0") == "0":
        store.compare_set(key, "", time.strftime("%Y-%m-%d_%H-%M-%S"))  # set unless a round set it
    os.environ["ARCA_LAUNCH_STAMP"] = store.get(key).decode()


def cli() -> None:
    share_launch_stamp()
    args = quote_numeric_choices(sys.argv[1:])
    check_renamed_keys(args)
    check_output_dir(args)
    check_config(args)
    # `-m` may stand anywhere (`... -m hydra.sweep.dir=X`): argparse rejects overrides on both sides of it.
    multirun = [a for a in args if a in ("-m", "--multirun")]
    sys.argv[1:] = multirun + [a for a in args if a not in multirun]
    main()


if __name__ == "__main__":
    cli()
