"""Config composition, validation and CLI error messages, composed exactly as the CLI composes them.

Nothing here loads a model: composition and ``validate`` only, and ``--cfg job`` subprocesses (which
print the composed config and exit before ``arca_sweep.train.run``).
"""

from __future__ import annotations

import copy
import functools
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from arca_sweep.config import CHOICES, ConfigError, validate
from arca_sweep.main import CONF_DIR, quote_numeric_choices, run_name
from tests.helpers import cli, cli_env

CONF = Path(CONF_DIR)
# The app's config groups: every conf/ sub-directory holding at least one option file (conf/hydra
# only configures Hydra itself).
GROUPS = sorted(d.name for d in CONF.iterdir() if d.is_dir() and d.name != "hydra" and any(d.glob("*.yaml")))
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]
EXPECTED_GROUPS = {"model", "rank", "credit", "budget", "data", "rollout", "logger", "eval", "experiment"}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@functools.cache
def _compose(overrides: tuple[str, ...]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=quote_numeric_choices(list(overrides)))


def compose_cfg(overrides: list[str] | None = None):
    """Compose as ``python -m arca_sweep`` does: numeric group choices quoted first (cached; a copy)."""
    return copy.deepcopy(_compose(tuple(overrides or [])))


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return cli(*args, "--cfg", "job", cwd=tmp_path, quiet=False, check=False, timeout=60, env=cli_env())


def available_options(output: str, group: str) -> set[str]:
    """The option names Hydra lists under "Available options in '<group>':"."""
    lines = output.splitlines()
    header = f"Available options in '{group}':"
    assert header in lines, output
    found = set()
    for line in lines[lines.index(header) + 1 :]:
        if not line.startswith("\t"):
            break
        found.add(line.strip())
    return found


# ---------------------------------------------------------------- every option composes and validates


def test_groups_discovered():
    assert EXPECTED_GROUPS <= set(GROUPS), GROUPS
    for g in EXPECTED_GROUPS:
        assert options(g), f"conf/{g} has no option"


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_validates(group, option):
    cfg = compose_cfg([f"{group}={option}"])
    validate(cfg)
    if group == "experiment":
        assert cfg.experiment == option
    elif group in ("model", "credit", "data", "rollout", "logger"):
        assert cfg[group].name == option
    else:
        assert cfg[group] is not None


@pytest.mark.parametrize("option", options("rank"))
def test_rank_option_sets_r_and_alpha(option):
    n = int(option)
    cfg = compose_cfg([f"rank={option}"])
    assert cfg.rank.r == n
    assert cfg.rank.alpha == 2 * n


def test_credit_options_are_the_registered_signals():
    from arca_sweep.credit import method_names

    assert options("credit") == sorted([*method_names(), "custom"])  # signals, methods, the plug-in
    for name in options("credit"):
        assert compose_cfg([f"credit={name}"]).credit.name == name


@pytest.mark.parametrize("option", ["smoke", "demo", "paper"])
def test_budget_fields_are_positive_ints(option):
    assert option in options("budget")
    b = compose_cfg([f"budget={option}"]).budget
    for key in ("steps", "prompts_per_step", "group_size", "max_new_tokens", "eval_size", "checkpoint_every"):
        value = b[key]
        assert isinstance(value, int) and not isinstance(value, bool), (key, value)
        assert value > 0, (key, value)
    assert isinstance(b.eval_every, int) and b.eval_every >= 0  # 0: evaluate at step 0 and the end
    assert b.group_size >= 2


def test_paper_budget_has_the_papers_group_size():
    assert compose_cfg(["budget=paper"]).budget.group_size == 8


def test_qwen_models_name_a_hub_id():
    qwen = [o for o in options("model") if o.startswith("qwen3_")]
    assert qwen
    for name in qwen:
        cfg = compose_cfg([f"model={name}"])
        assert cfg.model.hub_id and cfg.model.path is None
        validate(cfg)


def test_defaults():
    cfg = compose_cfg()
    validate(cfg)
    assert cfg.model.name == "tiny"
    assert cfg.rank.r == 8 and cfg.rank.alpha == 16
    assert cfg.credit.name == "arca"
    assert cfg.budget == compose_cfg(["budget=demo"]).budget
    assert cfg.experiment is None


def test_experiment_smoke_selects_smoke_budget():
    cfg = compose_cfg(["experiment=smoke"])
    assert cfg.budget == compose_cfg(["budget=smoke"]).budget
    assert cfg.experiment == "smoke"


def test_registry_choices_match_their_registries():
    from arca_sweep.credit import NORMALIZE_METHODS
    from arca_sweep.kernels import CHOICES as CPU_MATMULS
    from arca_sweep.learner import LOSS_AGGS
    from arca_sweep.learner.rollout_correction import MODES
    from arca_sweep.tasks import TASKS

    assert CHOICES["loss.agg"]() == tuple(LOSS_AGGS)
    assert CHOICES["credit.normalize"]() == tuple(NORMALIZE_METHODS)
    assert CHOICES["loss.rollout_correction"]() == tuple(MODES)
    assert CHOICES["model.cpu_matmul"]() == tuple(CPU_MATMULS)
    assert CHOICES["data.name"]() == tuple(TASKS)


# ---------------------------------------------------------------- the real CLI


def test_cli_default_prints_config(tmp_path):
    proc = run_cli(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "credit:" in proc.stdout
    assert "name: arca" in proc.stdout
    cfg = OmegaConf.create(proc.stdout)
    assert cfg.model.name == "tiny"
    assert cfg.rank.r == 8
    assert cfg.credit.name == "arca"
    assert cfg.budget.steps == OmegaConf.load(CONF / "budget" / "demo.yaml").steps
    assert not (tmp_path / "outputs").exists()  # --cfg job runs nothing


def test_cli_numeric_rank_choice(tmp_path):
    proc = run_cli(tmp_path, "rank=16")
    assert proc.returncode == 0, proc.stderr
    cfg = OmegaConf.create(proc.stdout)
    assert cfg.rank.r == 16 and cfg.rank.alpha == 32


def test_cli_unknown_credit(tmp_path):
    proc = run_cli(tmp_path, "credit=arcaa")
    out = proc.stderr + proc.stdout
    assert proc.returncode != 0
    assert "credit/arcaa" in out
    assert available_options(out, "credit") == set(options("credit"))
    assert {"arca", "entropy", "surprisal", "divergence", "uniform"} <= available_options(out, "credit")


@pytest.mark.parametrize("bad", ["-1", "7"])
def test_cli_unknown_rank(tmp_path, bad):
    proc = run_cli(tmp_path, f"rank={bad}")
    out = proc.stderr + proc.stdout
    assert proc.returncode != 0
    assert f"rank/{bad}" in out
    assert {"4", "8", "16", "32", "64"} <= available_options(out, "rank")
    assert "must be a string" not in out  # the numeric choice was quoted, not rejected as an int


def test_cli_misspelled_key(tmp_path):
    proc = run_cli(tmp_path, "credit.nromalize=mean")
    out = proc.stderr + proc.stdout
    assert proc.returncode != 0
    assert "credit.nromalize" in out
    assert "CreditConfig" in out


def test_cli_wrongly_typed_value(tmp_path):
    proc = run_cli(tmp_path, "budget.steps=abc")
    out = proc.stderr + proc.stdout
    assert proc.returncode != 0
    assert "budget.steps" in out
    assert "abc" in out
    assert "Integer" in out or "int" in out


# ---------------------------------------------------------------- validate


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["credit.normalize=softmaxx"], ["credit.normalize", "softmaxx", "mean, softmax, rank"]),
        (
            ["loss.agg=foo"],
            ["loss.agg", "foo", "token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"],
        ),
        (["rank.r=-1"], ["rank.r"]),
        (["rank.alpha=0"], ["rank.alpha"]),
        (["budget.group_size=1"], ["budget.group_size"]),
        (["rollout.top_p=1.5"], ["rollout.top_p"]),
        (["rollout.top_p=0"], ["rollout.top_p"]),
        (["credit.mix=2"], ["credit.mix"]),
        (["credit.mix=-0.1"], ["credit.mix"]),
        (["credit.clip_max=0.5"], ["credit.clip_max"]),
        (["credit.mode=square"], ["credit.mode", "clamp, abs"]),
        (["credit.estimator=k2"], ["credit.estimator", "exact, k3"]),
        (["advantage.estimator=max"], ["advantage.estimator", "grpo, dr_grpo, rloo"]),
        (["device=tpu"], ["device", "auto, cpu, cuda"]),
        (["loss.beta=-1"], ["loss.beta"]),
        (["learner.micro_batch_size=0"], ["learner.micro_batch_size"]),
        (["diagnostics.uniform_at=0.1"], ["diagnostics"]),
        (["model=qwen3_1_7b", "model.hub_id=null"], ["model.path", "qwen3_1_7b"]),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) and "=" in v[0] else None,
)
def test_validate_rejects(overrides, expected):
    cfg = compose_cfg(overrides)
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    message = str(info.value)
    for text in expected:
        assert text in message, (text, message)


def test_validate_reports_every_error_at_once():
    cfg = compose_cfg(
        ["credit.normalize=softmaxx", "loss.agg=foo", "rank.r=-1", "budget.group_size=1", "rollout.top_p=1.5"]
    )
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    message = str(info.value)
    for key in ("credit.normalize", "loss.agg", "rank.r", "budget.group_size", "rollout.top_p"):
        assert key in message, (key, message)
    assert len([line for line in message.splitlines() if "=" in line]) >= 5


def test_validate_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_validate_accepts_edges():
    validate(compose_cfg(["credit.mix=0", "rollout.top_p=1", "credit.clip_max=1", "budget.group_size=2"]))


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["data.ops=/"], "data.ops"),
        (["data.min_operands=1"], "data.min_operands"),
        (["data.min_operands=3", "data.max_operands=2"], "data.max_operands"),
        (["data.min_operand=-1"], "data.min_operand"),
        (["data.min_operand=10", "data.max_operand=9"], "data.min_operand"),
        (["data.answer_format=json"], "data.answer_format"),
    ],
)
def test_validate_rejects_bad_data_shape(overrides, key):
    cfg = compose_cfg(overrides)
    with pytest.raises(ConfigError, match=key):
        validate(cfg)


# ---------------------------------------------------------------- quote_numeric_choices, run_name


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("rank=8,16", "rank='8','16'"),
        ("rank=8", "rank='8'"),
        ("rank=-1", "rank='-1'"),
        ("+rank=8", "+rank='8'"),
        ("~rank=8", "~rank='8'"),
        ("rank.r=8", "rank.r=8"),
        ("seed=1,2", "seed=1,2"),
        ("seed=3", "seed=3"),
        ("credit=arca", "credit=arca"),
        ("credit=arca,entropy", "credit=arca,entropy"),
        ("rank='8'", "rank='8'"),
        ("budget.steps=5", "budget.steps=5"),
        ("-m", "-m"),
        ("--cfg", "--cfg"),
    ],
)
def test_quote_numeric_choices(arg, expected):
    assert quote_numeric_choices([arg]) == [expected]


def test_quote_numeric_choices_keeps_order_and_uses_conf_dir(tmp_path):
    args = ["rank=8,16", "seed=1", "credit=arca", "-m"]
    assert quote_numeric_choices(args) == ["rank='8','16'", "seed=1", "credit=arca", "-m"]
    (tmp_path / "seed").mkdir()
    assert quote_numeric_choices(["seed=1", "rank=8"], conf_dir=str(tmp_path)) == ["seed='1'", "rank=8"]


def test_quoted_sweep_composes_each_choice():
    (quoted,) = quote_numeric_choices(["rank=8,16"])
    values = quoted.split("=", 1)[1].split(",")
    assert [compose_cfg([f"rank={v}"]).rank.r for v in values] == [8, 16]


@pytest.mark.parametrize(
    ("dirname", "expected"),
    [
        ("", "default"),
        ("credit=arca,rank=16", "credit=arca,rank=16"),
        ("model.path=/data/Qwen3-1.7B", "model.path=%2Fdata%2FQwen3-1.7B"),
        ("a/b/c", "a%2Fb%2Fc"),
        ("x=50%/y", "x=50%25%2Fy"),
        ("rank='16',credit=arca", "rank=16,credit=arca"),  # quote_numeric_choices' own quotes only
        ("data.path=/a'b", "data.path=%2Fa%27b"),
        ('data.path="/ab"', "data.path=%22%2Fab%22"),
    ],
)
def test_run_name(dirname, expected):
    assert run_name(dirname) == expected
    assert "/" not in run_name(dirname)


def test_run_names_are_injective_and_bounded():
    """Two override sets never share a dir (issue 20: ``data/x.jsonl`` and ``data_x.jsonl`` did), and a name
    stays under the filesystem's 255 bytes however long the overrides (a long cluster path)."""
    names = [
        "data.eval_path=data/x.jsonl",
        "data.eval_path=data_x.jsonl",
        "data.eval_path=data%2Fx.jsonl",
        "data.eval_path=data%252Fx.jsonl",
        "x=a/b",
        "x=a%2Fb",
        "data.path=/tmp/a'b.jsonl",
        "data.path=/tmp/ab.jsonl",
        'data.path="/tmp/ab.jsonl"',
    ]
    assert len({run_name(n) for n in names}) == len(names)
    long_a = "model.path=/" + "very_long_directory/" * 30 + "a"
    long_b = "model.path=/" + "very_long_directory/" * 30 + "b"
    long_u = "data.path=/" + "é" * 300
    for n in (long_a, long_b, long_u):
        assert len(run_name(n).encode()) <= 200
        assert "/" not in run_name(n)
        run_name(n).encode().decode()  # whole characters only
    assert run_name(long_a) != run_name(long_b)
    assert run_name(long_a).startswith("model.path=%2Fvery_long_directory")
