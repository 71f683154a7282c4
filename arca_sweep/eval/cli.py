"""``arca-sweep-eval`` (``python -m arca_sweep.eval``): greedy pass@1, and with ``eval.n`` > 0 mean@n,
pass@k and maj@k, of the base model or a saved adapter, on its eval rows and every ``eval.sets`` entry.

    arca-sweep-eval experiment=demo                          # the base tiny model, the demo's 200 eval problems
    arca-sweep-eval --adapter outputs/multirun/<date>_<time>/credit=arca,experiment=demo
    arca-sweep-eval --adapter /runs/arm/adapter model=qwen3_1_7b data=math500 budget.eval_size=500 \\
        budget.max_new_tokens=1024 --out outputs/eval/arca-r16-math500
    arca-sweep-eval --adapter ARM eval=benchmarks eval.n=16 eval.temperature=0.6 eval.top_p=0.95 \\
        eval.sets.aime24.eval_path=aime24.jsonl ...                  # the reasoning benchmarks, sampled

The config is the training config (any ``key=value`` or ``group=option`` of ``arca-sweep``): ``model``,
``data`` (arith, math, math500, local files through ``data.path``/``data.eval_path``), ``rollout``,
``budget.eval_size`` and ``budget.max_new_tokens`` say what is evaluated and how. ``--adapter`` takes a
peft adapter dir or an arm dir (its ``adapter/``); an arm's own overrides (``.hydra/``) are applied first,
so the arm's eval set and generation length are reproduced, and the command line's come on top.

Writes into ``--out`` (default ``outputs/eval/<date>_<time>``): ``results.jsonl``, one line per problem in
the format of a run's ``eval/step_<n>.jsonl`` (:mod:`arca_sweep.eval`), ``<set>/results.jsonl`` for each
eval set, and ``summary.json`` (every metric of every set, what was evaluated). Prints one line per metric.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from pathlib import Path

from arca_sweep.arm_dir import ADAPTER, atomic_write
from arca_sweep.errors import UserError

log = logging.getLogger("arca_sweep.eval")


def arm_overrides(arm_dir: Path) -> list[str]:
    """The overrides an arm was run with (``.hydra/overrides.yaml``), and the ``hydra.searchpath`` it
    used (``.hydra/hydra.yaml``) so that a user's own config options still compose."""
    from omegaconf import ListConfig, OmegaConf

    hydra_dir = arm_dir / ".hydra"
    if not (hydra_dir / "overrides.yaml").is_file():  # labels lost: the summary keeps the overrides too
        return summary_overrides(arm_dir)
    try:
        overrides = OmegaConf.load(hydra_dir / "overrides.yaml")
        if not isinstance(overrides, ListConfig):
            raise ValueError("not a list of overrides")
        overrides = [str(o) for o in overrides]
        if (hydra_dir / "hydra.yaml").is_file():
            hydra_overrides = OmegaConf.load(hydra_dir / "hydra.yaml").hydra.overrides.hydra
            overrides += [o for o in hydra_overrides if o.startswith("hydra.searchpath=")]
    except Exception as exc:  # yaml's, OmegaConf's and our own: a damaged label file
        cause = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
        raise UserError(
            f"{hydra_dir}'s overrides.yaml or hydra.yaml is damaged ({cause}): restore it, or pass the arm's "
            "adapter/ and its overrides yourself (its summary.json lists them)"
        ) from None
    return overrides


def summary_overrides(arm_dir: Path) -> list[str]:
    """The overrides an arm's ``summary.json`` lists, for an arm whose ``.hydra/`` is gone."""
    from arca_sweep.arm_dir import ArmDir, ArmStateError

    try:
        listed = (ArmDir(arm_dir).read_summary() or {}).get("overrides")
    except ArmStateError:
        listed = None
    if not isinstance(listed, list):
        raise UserError(
            f"{arm_dir} has no .hydra/overrides.yaml and no summary.json listing its overrides, so its config "
            "is unknown: pass its adapter/ dir and the overrides it ran with"
        )
    log.warning("%s has no .hydra/: using the overrides its summary.json lists: %s", arm_dir, listed)
    return [str(o) for o in listed]


def locate_adapter(path: str) -> tuple[Path, Path | None]:
    """``(adapter dir, arm dir or None)`` for a peft adapter dir or an arm dir; a clear error otherwise."""
    p = Path(path).expanduser().resolve()
    if (p / ADAPTER / "adapter_config.json").is_file():
        p = p / ADAPTER
    if not (p / "adapter_config.json").is_file():
        hint = (
            " (the arm has not finished: its adapter/ is written at the end)"
            if (p / ".hydra").is_dir()
            else ""
        )
        raise UserError(f"--adapter {path}: no adapter_config.json in it or in its adapter/{hint}")
    if problems := adapter_errors(p):
        raise UserError(f"--adapter {path}: " + "; ".join(problems))
    is_arm = any((p.parent / n).exists() for n in (".hydra", "summary.json", "metrics.jsonl"))
    arm = p.parent if p.name == ADAPTER and is_arm else None
    return p, arm


def adapter_errors(adapter: Path) -> list[str]:
    """What is wrong with a peft adapter dir, read before any model loads: ``adapter_config.json`` a JSON
    object naming its peft type, and its weights present and whole."""
    import json

    from arca_sweep.preflight import safetensors_error

    config = adapter / "adapter_config.json"
    errors = []
    try:
        data = json.loads(config.read_text())
        if not isinstance(data, dict) or "peft_type" not in data:
            errors.append(f"{config} is not a peft adapter config (no peft_type): copy the adapter again")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        errors.append(f"{config} is not readable JSON ({type(exc).__name__}): copy the adapter again")
    weights = [
        adapter / n for n in ("adapter_model.safetensors", "adapter_model.bin") if (adapter / n).is_file()
    ]
    if not weights:
        errors.append(f"{adapter} holds no adapter_model.safetensors: copy the whole adapter dir")
    elif weights[0].suffix == ".safetensors" and (why := safetensors_error(weights[0])):
        errors.append(f"{weights[0]} is damaged ({why}): copy the adapter again")
    return errors


def compose_config(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from arca_sweep.main import CONF_DIR, quote_numeric_choices

    with initialize_config_dir(CONF_DIR, version_base="1.3", job_name="eval"):
        return compose("config", overrides=quote_numeric_choices(overrides))


def load_model(cfg, adapter: Path | None, device):
    """The base model under a peft LoRA: the saved ``adapter``, or a fresh one (B = 0, the base model's
    outputs exactly, as a run's step-0 eval sees it)."""
    from arca_sweep.model import load_policy, model_source, resolve_dtype

    if adapter is None:
        return load_policy(cfg.model, cfg.rank, device, cfg.seed)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(
        model_source(cfg.model), dtype=resolve_dtype(cfg.model.dtype, device)
    )
    return PeftModel.from_pretrained(base.to(device), str(adapter))


def evaluate_model(cfg, adapter: Path | None, out_dir: Path) -> dict:
    """Greedy pass@1 (and with ``eval.n`` > 0 the sampled metrics) of the base model or ``adapter`` on
    ``cfg``'s eval rows and every ``eval.sets`` entry; writes ``out_dir``."""
    import numpy as np
    import torch

    from arca_sweep.config import validate
    from arca_sweep.eval import read_results
    from arca_sweep.eval.sets import build_eval_sets, close_sets, evaluate_sets, max_new_tokens
    from arca_sweep.model import load_tokenizer, resolve_device
    from arca_sweep.rollout import build_engine
    from arca_sweep.tasks import build_task

    validate(cfg)  # a run's checks, before any model is loaded
    t0 = time.time()
    torch.set_num_threads(cfg.threads or len(os.sched_getaffinity(0)))
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    tokenizer = load_tokenizer(cfg.model)
    model = load_model(cfg, adapter, device)
    task = build_task(cfg.data, eval_only=True)
    sets = []
    try:
        sets = build_eval_sets(cfg, task, tokenizer)
        engine = build_engine(cfg.rollout, model, tokenizer)
        out_dir.mkdir(parents=True, exist_ok=True)
        metrics = evaluate_sets(engine, tokenizer, sets, cfg, 0, lambda s: results_file(out_dir, s.name))
    finally:
        close_sets(sets)
        task.close()
    from arca_sweep.model import model_source

    summary = {
        "correct": sum(r["correct"] for r in read_results(results_file(out_dir, None))),
        "model": model_source(cfg.model),
        "adapter": None if adapter is None else str(adapter),
        "data": cfg.data.name,
        "problems": len(sets[0].problems),
        "sets": {s.name: {"data": cfg.eval.sets[s.name].name, "problems": len(s.problems)} for s in sets[1:]},
        "max_new_tokens": max_new_tokens(cfg.eval, cfg.budget),
        "eval": {k: v for k, v in dict(cfg.eval).items() if k != "sets"},
        "wall_s": round(time.time() - t0, 2),
        **metrics,
    }
    atomic_write(out_dir / "summary.json", json.dumps(summary, indent=1, default=list) + "\n")
    return summary


def results_file(out_dir: Path, eval_set: str | None) -> Path:
    """``results.jsonl`` for the config's own eval rows, ``<set>/results.jsonl`` for an ``eval.sets`` entry."""
    return out_dir / "results.jsonl" if eval_set is None else out_dir / eval_set / "results.jsonl"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="arca-sweep-eval",
        description="Greedy pass@1 of the base model or a saved LoRA adapter on any data config, "
        "overall and per level/subject; every problem's result in results.jsonl.",
        epilog="overrides: any key=value or group=option of arca-sweep (arca-sweep --help lists them), "
        "e.g. data=math500 model=qwen3_1_7b budget.eval_size=500 budget.max_new_tokens=1024 rollout=vllm",
    )
    parser.add_argument(
        "--adapter", help="a peft adapter dir, or an arm dir (its adapter/ and its overrides); default: none"
    )
    parser.add_argument("--out", help="output dir (default: outputs/eval/<date>_<time>)")
    parser.add_argument("overrides", nargs="*", help="config overrides, as for arca-sweep")
    return parser.parse_intermixed_args(argv)  # overrides and --options in any order


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    from arca_sweep.progress import quiet_libraries

    quiet_libraries()
    adapter, arm = (None, None) if args.adapter is None else locate_adapter(args.adapter)
    overrides = (arm_overrides(arm) if arm else []) + args.overrides
    try:
        cfg = compose_config(overrides)
        from arca_sweep.config import validate

        validate(cfg)
    except Exception as e:  # a bad override: Hydra's or validate's message, without a traceback
        raise UserError(f"arca-sweep-eval: {type(e).__name__}: {e}") from e
    out_dir = Path(args.out or Path("outputs") / "eval" / time.strftime("%Y-%m-%d_%H-%M-%S")).absolute()
    if taken := [
        n
        for n in (
            "summary.json",
            "results.jsonl",
            "metrics.jsonl",
            ".hydra",
            *(f"{x}/results.jsonl" for x in cfg.eval.sets),
        )
        if (out_dir / n).exists()
    ] + [x for x in cfg.eval.sets if (out_dir / x).exists() and not (out_dir / x).is_dir()]:
        raise UserError(
            f"--out {out_dir} already holds {', '.join(taken)} (an arm or an earlier eval); refusing to overwrite "
            "them. Pass another --out"
        )
    summary = evaluate_model(cfg, adapter, out_dir)
    what = f"adapter {adapter}" if adapter else f"base model {summary['model']}"
    log.info(
        "eval accuracy %.3f (%d/%d) of %s on %s (greedy, %d new tokens); results in %s",
        summary["eval/accuracy"],
        summary["correct"],
        summary["problems"],
        what,
        summary["data"],
        summary["max_new_tokens"],
        out_dir,
    )
    for key, value in summary.items():
        if key.startswith("eval/") and key != "eval/accuracy" and isinstance(value, float):
            log.info("  %s: %.3f", key.removeprefix("eval/"), value)
    return summary


def cli() -> None:
    from arca_sweep.main import user_errors

    with user_errors():  # a bad adapter, override or file: one error line, exit 2
        main()
