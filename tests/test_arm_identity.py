"""Arm identity: a cell is every override the sweep varies, minus the seed and the keys that cannot
change results (``logger.*``, ``threads``, ``device``); those keys are also left out of arm dir names."""

from __future__ import annotations

import dataclasses
import json

import yaml
from hydra import compose, initialize_config_dir

from arca_sweep.config import LoggerConfig
from arca_sweep.main import CONF_DIR
from arca_sweep.report.data import groups, is_neutral, load_arms, parse_override, read_cell_overrides


def write_arm(sweep, name: str, overrides: list[str] | None, config: dict | None = None) -> None:
    arm = sweep / name
    (arm / ".hydra").mkdir(parents=True)
    (arm / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config or {"credit": {"name": "arca"}}))
    if overrides is not None:
        (arm / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (arm / "metrics.jsonl").write_text(json.dumps({"step": 0, "eval/accuracy": 0.5}) + "\n")


def test_every_logger_key_is_left_out_of_arm_dir_names():
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("config", return_hydra_config=True)
    excluded = set(cfg.hydra.job.config.override_dirname.exclude_keys)
    logger_keys = {f"logger.{f.name}" for f in dataclasses.fields(LoggerConfig)}
    missing = sorted(({"logger", "threads", "device"} | logger_keys) - excluded)
    assert not missing, f"add {missing} to hydra.job.config.override_dirname.exclude_keys in conf/config.yaml"
    assert all(is_neutral(k) for k in excluded), "an arm dir name may only drop keys the report also ignores"


def test_any_swept_key_is_an_axis_and_neutral_keys_are_not(tmp_path):
    """A sweep over optim.lr and credit.mix (no code names them) with seeds, W&B on in some arms."""
    sweep = tmp_path / "sweep"
    for lr in ("1e-3", "2e-3"):
        for mix in ("0.5", "1.0"):
            for seed in (0, 1):
                extra = ["logger=wandb", "logger.mode=offline"] if seed else ["threads=1", "device=cpu"]
                overrides = ["budget=smoke", f"optim.lr={lr}", f"+credit.mix={mix}", f"seed={seed}", *extra]
                write_arm(sweep, f"lr={lr},mix={mix},seed={seed}", overrides)
    arms = load_arms(sweep)
    cells = groups(arms)
    assert list(cells) == [
        (("credit.mix", m), ("optim.lr", lr)) for m in ("0.5", "1.0") for lr in ("1e-3", "2e-3")
    ], "four cells, axes sorted by key, values in numeric order"
    assert all(sorted(a.seed for a in g) == ["0", "1"] for g in cells.values()), (
        "each cell holds its two seeds"
    )
    assert {a.label for a in arms} == {
        f"credit.mix={m}, optim.lr={lr}" for m in ("0.5", "1.0") for lr in ("1e-3", "2e-3")
    }


def test_missing_override_takes_the_arms_own_value(tmp_path):
    """An arm that kept the default (no override) is compared by its config group choice or config entry."""
    sweep = tmp_path / "sweep"
    write_arm(sweep, "a", ["credit=uniform", "rank=16"], {"credit": {"name": "uniform"}, "rank": {"r": 16}})
    write_arm(sweep, "b", ["rank=16"], {"credit": {"name": "arca"}, "rank": {"r": 16}})
    hydra = {"hydra": {"runtime": {"choices": {"credit": "arca", "rank": "16"}}}}
    (sweep / "b" / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    arms = load_arms(sweep)
    assert [a.cell for a in arms] == [(("credit", "arca"),), (("credit", "uniform"),)]


def test_dir_name_fallback_keeps_list_values(tmp_path):
    arm = tmp_path / "optim.betas=[0.9,0.99],rank=8,seed=3,logger.progress=false"
    (arm / ".hydra").mkdir(parents=True)
    assert read_cell_overrides(arm) == {"optim.betas": "[0.9,0.99]", "rank": "8"}
    assert parse_override("rank='16'") == ("rank", "16") and parse_override("~loss.beta") == ("loss.beta", "")


def test_dir_name_fallback_undoes_the_names_escapes(tmp_path):
    from arca_sweep.main import run_name

    name = run_name("data.eval_path=data/x%.jsonl,rank=8")
    (tmp_path / name / ".hydra").mkdir(parents=True)
    assert read_cell_overrides(tmp_path / name) == {"data.eval_path": "data/x%.jsonl", "rank": "8"}
