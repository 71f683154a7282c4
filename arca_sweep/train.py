"""One arm: LoRA-GRPO on one (model, rank, credit, budget) point of a sweep.

    python -m arca_sweep                                  # one arm of the embedded default
    python -m arca_sweep credit=entropy rank=16 budget=smoke

Writes into the arm's output dir: ``metrics.jsonl`` (a line per step), ``samples.jsonl`` (sample
rollouts with every signal's token weights, every ``logger.samples_every`` steps), ``checkpoint.pt`` (every
``budget.checkpoint_every`` steps), ``adapter/`` (the final peft adapter) and ``summary.json``.
Re-running the same command resumes from the checkpoint; a finished arm is skipped.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from arca_sweep import checkpoint
from arca_sweep.config import validate
from arca_sweep.diagnostics import FormatTokens, credit_metrics
from arca_sweep.learner import Learner, group_advantages
from arca_sweep.loggers import RunLog, build_tracker
from arca_sweep.model import load_policy, load_tokenizer, resolve_device
from arca_sweep.rollout import build_engine, check_engine_weights, guard_bound
from arca_sweep.tasks import batch_hash, build_task

# Keys that may differ between an interrupted run and its resumption.
RESUME_FREE_KEYS = {"logger.progress", "threads", "device"}


def encode_prompts(tokenizer, problems, enable_thinking: bool = False) -> list[list[int]]:
    """Each question as a user turn through the model's chat template (Qwen3: thinking off by default)."""
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p.question}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=enable_thinking,
        )
        for p in problems
    ]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def evaluate(engine, tokenizer, task, problems, max_new_tokens: int, enable_thinking: bool = False) -> dict:
    """Greedy pass@1 on the held-out eval set, overall and per level and subject where rows carry them."""
    batch = engine.generate(
        encode_prompts(tokenizer, problems, enable_thinking), 1, max_new_tokens, greedy=True
    )
    correct = task.rewards(batch.texts, problems)
    out = {"eval/accuracy": float(np.mean(correct))}
    for key in ("level", "subject"):
        groups: dict[str, list[float]] = {}
        for c, p in zip(correct, problems, strict=True):
            if p.meta.get(key) is not None:
                groups.setdefault(str(p.meta[key]), []).append(c)
        out.update({f"eval/accuracy/{key}/{g}": float(np.mean(v)) for g, v in sorted(groups.items())})
    return out


def run(
    cfg,
    out_dir: Path,
    overrides: list[str] | None = None,
    sweep_dir: str | None = None,
    choices: dict | None = None,
) -> dict:
    validate(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_path = out_dir / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        print(f"arm already finished, skipping: {out_dir}\n{json.dumps(summary, indent=1)}")
        return summary
    t_start = time.time()
    torch.set_num_threads(cfg.threads or len(os.sched_getaffinity(0)))  # the job's CPUs, not the node's
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    b, think = cfg.budget, cfg.data.enable_thinking

    tokenizer = load_tokenizer(cfg.model)
    model = load_policy(cfg.model, cfg.rank, device, cfg.seed)
    task = build_task(cfg.data)
    engine = build_engine(cfg.rollout, model, tokenizer, budget=b)
    learner = Learner(model, cfg, temperature=cfg.rollout.temperature)
    max_logp_diff = guard_bound(cfg.rollout, next(model.parameters()).dtype)
    format_tokens = FormatTokens(tokenizer)
    eval_problems = task.eval_problems(b.eval_size)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    log = RunLog(
        out_dir, build_tracker(cfg.logger, out_dir, resolved, overrides or [], sweep_dir, choices or {})
    )

    start = 0
    if (state := checkpoint.load(out_dir)) is not None:
        _check_same_config(state["config"], resolved, out_dir)
        start = checkpoint.restore(state, model, learner.optimizer)
        engine.sync(model)
        log.truncate_after(start)
        print(f"resuming {out_dir} after step {start}")
    else:
        log.truncate_after(-1)
        log.log({"step": 0, **evaluate(engine, tokenizer, task, eval_problems, b.max_new_tokens, think)})

    bar = tqdm(
        range(start + 1, b.steps + 1),
        initial=start,
        total=b.steps,
        desc=out_dir.name[:40],
        disable=not cfg.logger.progress,
        dynamic_ncols=True,
    )
    for step in bar:
        # ---- rollout: G samples for each of this step's prompts (the order is data.seed's, shared by all arms)
        t0 = time.time()
        indices = task.train_indices(step - 1, b.prompts_per_step)
        problems = [task.train_problem(i) for i in indices]
        batch = engine.generate(encode_prompts(tokenizer, problems, think), b.group_size, b.max_new_tokens)
        rollout_s = time.time() - t0
        # ---- reward and group advantage
        group_of = [problems[i // b.group_size] for i in range(len(batch.texts))]
        rewards = torch.tensor(task.rewards(batch.texts, group_of))
        advantages, frac_zero_std = group_advantages(rewards, b.group_size, cfg.advantage.scale)
        # ---- credit, loss, update (two forwards at most: policy, and reference with the adapter off)
        t1 = time.time()
        result = learner.step(batch, advantages.to(device))
        engine.sync(model)
        learner_s = time.time() - t1
        # ---- log, evaluate, checkpoint
        metrics = {
            "step": step,
            "data/batch_hash": batch_hash(indices),
            "reward/mean": rewards.mean().item(),
            "reward/frac_zero_std": frac_zero_std,
            **step_metrics(cfg, batch, result, format_tokens, rollout_s, learner_s),
        }
        # ---- guard: the batch must have been sampled from the weights the learner just scored
        check_engine_weights(metrics["rollout/logp_diff_max"], max_logp_diff, step)
        if step == b.steps or (b.eval_every and step % b.eval_every == 0):
            metrics.update(evaluate(engine, tokenizer, task, eval_problems, b.max_new_tokens, think))
        metrics.update(task.stats)
        log.log(metrics)
        if cfg.logger.samples_every and (step == 1 or step % cfg.logger.samples_every == 0):
            log.log_samples(
                step,
                rollout_samples(
                    step,
                    batch,
                    problems,
                    rewards,
                    advantages,
                    result,
                    tokenizer,
                    format_tokens,
                    b.group_size,
                    cfg.logger.samples_per_step,
                ),
            )
        if step % b.checkpoint_every == 0 or step == b.steps:
            checkpoint.save(out_dir, step=step, model=model, optimizer=learner.optimizer, config=resolved)
        bar.set_postfix(
            reward=f"{metrics['reward/mean']:.2f}",
            gini=f"{metrics['credit/gini/mean']:.2f}",
            acc=metrics.get("eval/accuracy", ""),
        )
    bar.close()

    task.close()
    model.save_pretrained(out_dir / "adapter")
    summary = summarize(log.metrics.records(), overrides or [], time.time() - t_start, start)
    summary_path.write_text(json.dumps(summary, indent=1) + "\n")
    log.finish(summary)
    return summary


def step_metrics(cfg, batch, result, format_tokens, rollout_s: float, learner_s: float) -> dict:
    """Loss, credit diagnostics (training and shadow signals), sampler-vs-learner log-probs, timing."""
    device = result.logp.device
    mask = batch.response_mask.to(device)
    n_tokens = int(mask.sum())
    logp_diff = (batch.sampling_logprobs.to(device) - result.logp).abs()[mask]
    return {
        "loss": result.loss,
        "grad_norm": result.grad_norm,
        "response/length_mean": n_tokens / mask.shape[0],
        "response/finish_stop": float(np.mean([r == "stop" for r in batch.finish_reasons])),
        "credit/fallback_frac": result.fallback_frac,
        **credit_metrics(
            result.weights,
            result.shadow_weights,
            mask,
            format_tokens.mask(batch.response_ids).to(device),
            cfg.credit.name,
            cfg.diagnostics.uniform_at,
            cfg.diagnostics.concentrated_at,
        ),
        "rollout/logp_diff_mean": logp_diff.mean().item(),
        "rollout/logp_diff_max": logp_diff.max().item(),
        "perf/rollout_s": rollout_s,
        "perf/learner_s": learner_s,
        "perf/tokens_per_s": n_tokens / (rollout_s + learner_s),
    }


def rollout_samples(
    step, batch, problems, rewards, advantages, result, tokenizer, format_tokens, group_size: int, limit: int
) -> list[dict]:
    """The first sample of each of the first ``limit`` prompts, token by token, with every signal's weights."""
    out = []
    for row in range(0, min(limit * group_size, len(batch.texts)), group_size):
        mask = batch.response_mask[row]
        ids = batch.response_ids[row][mask].tolist()
        out.append(
            {
                "step": step,
                "row": row,
                "question": problems[row // group_size].question,
                "reward": rewards[row].item(),
                "advantage": advantages[row].item(),
                "tokens": [tokenizer.decode([i]) for i in ids],
                "is_format": [format_tokens.is_format(i) for i in ids],
                "weights": {
                    name: [round(x, 4) for x in w[row][mask.to(w.device)].tolist()]
                    for name, w in result.shadow_weights.items()
                },
            }
        )
    return out


def summarize(records: list[dict], overrides: list[str], wall_s: float, resumed_from: int) -> dict:
    """Initial and final eval accuracy and the run means of every per-step diagnostic."""
    evals = [r for r in records if r.get("eval/accuracy") is not None]
    steps = [r for r in records if r["step"] > 0]
    means = {}
    for key in steps[0] if steps else []:
        values = [
            r[key] for r in steps if isinstance(r.get(key), int | float) and not isinstance(r[key], bool)
        ]
        cumulative = key in {"reward/timeouts", "reward/errors"}  # running totals: a mean means nothing
        if (
            values
            and key != "step"
            and not cumulative
            and key.split("/")[0] in {"reward", "credit", "shadow", "rollout", "perf"}
        ):
            means[key] = float(np.mean(values))
    return {
        "overrides": overrides,
        "steps": len(steps),
        "wall_s": round(wall_s, 2),
        "resumed_from_step": resumed_from,
        "eval/accuracy_initial": evals[0]["eval/accuracy"] if evals else None,
        "eval/accuracy_final": evals[-1]["eval/accuracy"] if evals else None,
        "eval/final_breakdown": {
            k: v for k, v in (evals[-1] if evals else {}).items() if k.startswith("eval/accuracy/")
        },
        "run_means": means,
    }


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def _check_same_config(saved: dict, current: dict, out_dir: Path) -> None:
    a, b = _flatten(saved), _flatten(current)
    diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and k not in RESUME_FREE_KEYS)
    if diff:
        raise RuntimeError(
            f"{out_dir} holds a checkpoint of a different config ({', '.join(diff)} differ); "
            "refusing to resume over it. Use another output dir (hydra.run.dir=...) or delete that one."
        )
