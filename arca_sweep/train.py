"""One arm: LoRA-GRPO on one (model, rank, credit, budget) point of a sweep.

    python -m arca_sweep                                  # one arm of the embedded default
    python -m arca_sweep credit=entropy rank=16 budget=smoke

Writes into the arm's output dir: ``metrics.jsonl`` (a line per step), ``samples.jsonl`` (sample
rollouts with every signal's token weights, every ``logger.samples_every`` steps), ``checkpoint.pt`` (every
``budget.checkpoint_every`` steps), ``eval/step_<n>.jsonl`` (every problem's result of the eval at step
``n``; :mod:`arca_sweep.eval`), ``adapter/`` (the final peft adapter) and ``summary.json``.
Re-running the same command resumes from the checkpoint; a finished arm is skipped.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from arca_sweep.advantage import estimate, frac_zero_spread, overlong_penalty
from arca_sweep.arm_dir import ArmDir, RunLog, check_same_config, restore, results_path
from arca_sweep.arm_dir.fingerprint import check_same_inputs, fingerprint
from arca_sweep.config import validate
from arca_sweep.diagnostics.fidelity import fidelity_probe
from arca_sweep.diagnostics.step import FormatTokens, credit_metrics
from arca_sweep.distributed import SINGLE, World, start_world, stop_world
from arca_sweep.distributed.engine import ShardedEngine
from arca_sweep.distributed.fsdp import full_adapter, full_optimizer_state, restore_sharded, shard_model
from arca_sweep.errors import UserError
from arca_sweep.eval import encode_prompts
from arca_sweep.eval.sets import build_eval_sets, close_sets, eval_tokens, evaluate_sets
from arca_sweep.learner import Learner, LearnerSettings
from arca_sweep.learner.rollout_correction import rollout_is_metrics
from arca_sweep.loggers import build_tracker
from arca_sweep.model import load_policy, load_tokenizer, model_weights, resolve_device
from arca_sweep.nonfinite import check_finite
from arca_sweep.plugins import at_step
from arca_sweep.preflight import prompt_token_limit
from arca_sweep.progress import Progress, closing_line, is_terminal, skip_line
from arca_sweep.progress import log as console
from arca_sweep.rollout import build_engine, check_engine_weights, guard_bound
from arca_sweep.sampling import reserve_cursor, step_rollout
from arca_sweep.tasks import Problem, batch_hash, build_task


def prompt_fitter(tokenizer, max_tokens: int | None, enable_thinking: bool = False):
    """``fits(question)``: its templated prompt has at most ``max_tokens`` tokens (None: no limit). A
    question of over 32 characters per allowed token is too long untokenized (so a 10 MB row costs nothing)."""
    if max_tokens is None:
        return None

    def fits(question: str) -> bool:
        if len(question) > 32 * max_tokens:
            return False
        return len(encode_prompts(tokenizer, [Problem(0, question, "")], enable_thinking)[0]) <= max_tokens

    return fits


def run(
    cfg,
    out_dir: Path,
    overrides: list[str] | None = None,
    sweep_dir: str | None = None,
    choices: dict | None = None,
    staged: Path | None = None,
) -> dict:
    """Run the arm in ``out_dir``, resume it, or skip it when finished; first check it is this config's.

    ``staged``: where Hydra wrote this launch's ``.hydra`` files (``hydra.output_subdir``); they become the
    arm's ``.hydra/`` only once the arm runs here, so a refused launch (another config, another run holding
    the lock, files that are not this arm's) and a skip leave the arm's labels as they were.

    An arm of several processes (:mod:`arca_sweep.distributed`): rank 0 does all of this and tells the
    others whether to train, skip or stop (:func:`follow`); only rank 0 writes to the arm dir.
    """
    arm, world = ArmDir(out_dir), SINGLE
    try:
        validate(cfg)
        world = start_world(cfg.dist, resolve_device(cfg.device))
        if not world.is_main:
            return follow(cfg, arm, overrides, sweep_dir, choices, world)
        told = False
        try:
            resolved = OmegaConf.to_container(cfg, resolve=True)
            arm.create()
            with arm.lock():  # one run per arm dir, held to the end (arca_sweep/arm_dir/)
                summary = arm.read_summary()
                state = arm.load_checkpoint()  # before any model loads: a damaged one fails fast
                ran = (summary or {}).get("config") or (state or {}).get("config")
                if ran:
                    check_same_config(ran, resolved, out_dir, finished=summary is not None)
                elif summary is not None:
                    arm.check_same_overrides(overrides or [])
                else:
                    arm.check_fresh(overrides or [])
                if summary is not None:
                    told = world.broadcast_object(("skip", summary)) is not None
                    console.info(skip_line(out_dir, summary))
                    return summary
                told = world.broadcast_object(("train", None)) is not None
                arm.adopt_launch_record(staged)
                return train(cfg, arm, overrides, sweep_dir, choices, state, resolved, world)
        except BaseException:
            if not told:  # the other ranks wait for rank 0's word: tell them to stop
                world.broadcast_object(("refused", None))
            raise
    finally:
        if world.is_main and arm.is_empty():  # a launch refused in a dir with no arm yet: label it launched
            arm.adopt_launch_record(staged)
        arm.discard_launch_record(staged)
        if sys.exc_info()[0] is None:  # (after a failure the ranks do not meet again: the job ends)
            stop_world(world)


class RankZeroRefused(UserError):
    """Rank 0 of a multi-process arm refused or skipped the launch (its own message says why)."""


def follow(cfg, arm: ArmDir, overrides, sweep_dir, choices, world: World) -> dict:
    """A rank other than 0: train when rank 0 does (from the same checkpoint), return its summary when it
    skips a finished arm, stop when it refuses."""
    what, summary = world.broadcast_object(None)
    if what == "skip":
        return summary
    if what != "train":
        raise RankZeroRefused(f"rank {world.rank}: rank 0 refused the launch of {arm.path}; see its message")
    state = arm.load_checkpoint()
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return train(cfg, arm, overrides, sweep_dir, choices, state, resolved, world)


def train(
    cfg,
    arm: ArmDir,
    overrides: list[str] | None,
    sweep_dir: str | None,
    choices: dict | None,
    state: dict | None,
    resolved: dict,
    world: World = SINGLE,
) -> dict:
    """The arm's run, from its checkpoint ``state`` if it has one, under the arm dir's lock (held by rank 0:
    the other ranks of a multi-process arm write nothing)."""
    out_dir, main = arm.path, world.is_main
    if not main:  # rank 0 tells the arm's progress; the others speak only to warn
        logging.getLogger("arca_sweep").setLevel(logging.WARNING)
    inputs = fingerprint(cfg)  # the data files, plug-ins and model files this run reads
    changed = check_same_inputs(
        state.get("fingerprint") if state else None, inputs, out_dir, cfg.accept_changed_inputs
    )
    inputs_changed = list(state.get("inputs_changed") or []) if state else []  # every accepted change
    if changed and main:
        console.warning(
            f"{out_dir}: resuming on changed inputs (accept_changed_inputs=true): {'; '.join(changed)}"
        )
        inputs_changed.append({"resumed_after_step": state["step"], "changes": changed})
    t_start = time.time()
    torch.set_num_threads(cfg.threads or default_threads(world))
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    b, adv, think = cfg.budget, cfg.advantage, cfg.data.enable_thinking

    rollout_cfg = rollout_for(
        cfg.rollout, world
    )  # (before the model loads: vLLM across processes is refused)
    tokenizer = load_tokenizer(cfg.model)
    fits = prompt_fitter(tokenizer, prompt_token_limit(cfg.data, cfg.model, b), think)
    task = build_task(cfg.data, fits)  # data before model
    eval_sets = build_eval_sets(cfg, task, tokenizer)  # the run's eval rows and every eval.sets entry
    model = load_policy(cfg.model, cfg.rank, device, cfg.seed)
    sharded = cfg.dist.shard and world.size > 1
    if sharded:  # FSDP2, a unit per decoder layer (arca_sweep/distributed/fsdp.py)
        shard_model(model, world, device)
    weights = model_weights(cfg.model)
    if weights and main:
        console.info(
            f"model {cfg.model.name}: {weights['model/source']} weights from {weights['model/weights']}"
        )
    engine = build_engine(rollout_cfg, model, tokenizer, budget=b, eval_tokens=eval_tokens(eval_sets, cfg))
    if state is not None:  # an arm keeps its sampler's draws (a checkpoint of before issue 22: "stream")
        engine.draws = state.get("draws", "stream")
        if engine.draws != "row" and world.size > 1:
            raise UserError(
                f"{out_dir}: its checkpoint was written by a version whose rollouts drew from one RNG stream; "
                "resume it in one process (without torchrun or tasks_per_node), or start the arm afresh"
            )
    if world.size > 1:  # each rank generates its share of the prompts; every rank holds the whole batch
        engine = ShardedEngine(engine, world, tokenizer.pad_token_id, lockstep=sharded)
    learner = Learner(model, LearnerSettings.from_config(cfg), cfg.rollout.temperature, world)
    max_logp_diff = guard_bound(cfg.rollout, next(model.parameters()).dtype)
    format_tokens = FormatTokens(tokenizer)
    log = None
    if main:
        tracker = build_tracker(cfg.logger, out_dir, resolved, overrides or [], sweep_dir, choices or {})
        log = RunLog(out_dir, tracker)

    def results(step):  # where rank 0 writes an eval's per-problem results (the other ranks: nowhere)
        return (lambda s: results_path(out_dir, step, s.name)) if main else None

    start = 0
    if state is not None:
        start = (restore_sharded if sharded else restore)(state, model, learner.optimizer)
        engine.sync(model)
        if main:
            log.resume(start, state.get("metrics_lines"))
            print(f"resuming {out_dir} after step {start}")
    else:
        if main:
            log.start()
        with at_step("0 (the initial eval)"):
            acc = evaluate_sets(engine, tokenizer, eval_sets, cfg, 0, results(0))
        if main:
            log.log({"step": 0, **acc})

    fidelity_every = cfg.diagnostics.fidelity_every
    if fidelity_every and sharded:  # it casts the weights in place, under FSDP2's own copies of them
        logging.getLogger(__name__).warning(
            "diagnostics.fidelity_every: the fidelity probe is off under dist.shard"
        )
        fidelity_every = 0

    if b.dynamic_sampling and adv.estimator.startswith("reinforce_pp"):
        logging.getLogger(__name__).warning(
            "budget.dynamic_sampling drops zero-spread groups, which still carry advantage under "
            f"advantage={adv.estimator} (no group baseline)"
        )

    def rollout(indices: list[int]):  # G samples of each prompt, and their rewards
        problems = [task.train_problem(i) for i in indices]
        batch = engine.generate(encode_prompts(tokenizer, problems, think), b.group_size, b.max_new_tokens)
        group_of = [problems[i // b.group_size] for i in range(len(batch.texts))]
        return batch, torch.tensor(task.rewards(batch.texts, group_of))

    def reserve(position: int, count: int) -> list[int]:  # the reserve stream: after the run's last step
        first = b.steps * b.prompts_per_step + position
        return [task.train_indices(p, 1)[0] for p in range(first, first + count)]

    cursor = reserve_cursor(state.get("metrics_lines")) if state is not None else 0
    live = cfg.logger.progress and is_terminal() and main
    progress = Progress(out_dir, start, b.steps, live, cfg.logger.progress_every, cfg.logger.progress_every_s)
    for step in range(start + 1, b.steps + 1):
        # ---- rollout: G samples for each of this step's prompts (the order is data.seed's, shared by all arms),
        # and rewards; budget.dynamic_sampling refills zero-spread groups (arca_sweep/sampling.py)
        t0 = time.time()
        own = task.train_indices(step - 1, b.prompts_per_step)
        with at_step(step):  # a plug-in (data.reward, credit.target) that breaks its contract names the step
            got = step_rollout(
                rollout,
                own,
                reserve,
                cursor,
                b.group_size,
                b.max_sampling_rounds,
                tokenizer.pad_token_id,
                b.dynamic_sampling,
            )
            batch, indices, rewards, cursor = got.batch, got.indices, got.rewards, got.reserve_to
            problems = [task.train_problem(i) for i in indices]
            rollout_s = time.time() - t0
            # ---- group advantage
            lengths = batch.response_mask.sum(1).cpu()
            penalty = overlong_penalty(lengths, b.max_new_tokens, adv.overlong_cache, adv.overlong_penalty)
            advantages = estimate(adv.estimator, rewards + penalty, b.group_size, lengths)
            check_rewards(rewards, advantages, cfg.data)
            # ---- credit, loss, update (two forwards at most: policy, and reference with the adapter off)
            t1 = time.time()
            result = learner.step(batch, advantages.to(device), rewards=rewards.to(device), step=step)
        # ---- guard: nothing non-finite is logged, saved or sampled from (arca_sweep/nonfinite.py)
        check_finite(step, batch, result, model, learner.optimizer, cfg.loss.beta, arm.checkpoint_path)
        engine.sync(model)
        learner_s = time.time() - t1
        # ---- log, evaluate, checkpoint
        metrics = {
            "step": step,
            "data/batch_hash": batch_hash(own),
            **got.metrics,
            # the step's own prompts (the same in every arm), whatever dynamic sampling then trains on
            "reward/mean": got.own_rewards.mean().item(),
            "reward/frac_zero_std": frac_zero_spread(got.own_rewards, b.group_size),
            **({"reward/trained_mean": rewards.mean().item()} if b.dynamic_sampling else {}),
            **({"reward/overlong_penalty": penalty.mean().item()} if adv.overlong_cache else {}),
            **step_metrics(
                batch,
                result,
                format_tokens,
                rollout_s,
                learner_s,
                cfg.credit.name,
                cfg.diagnostics,
                learner.rollout_correction,
                cfg.loss.rollout_is_cap,
            ),
        }
        if fidelity_every and step % fidelity_every == 0:
            rows = torch.arange(min(cfg.learner.micro_batch_size, len(batch.texts)))
            metrics.update(
                fidelity_probe(learner, batch, rows, getattr(torch, cfg.diagnostics.fidelity_dtype))
            )
        # ---- guard: the batch must have been sampled from the weights the learner just scored
        check_engine_weights(metrics["rollout/logp_diff_max"], max_logp_diff, step)
        if step == b.steps or (b.eval_every and step % b.eval_every == 0):
            with at_step(f"{step} (eval)"):
                metrics.update(evaluate_sets(engine, tokenizer, eval_sets, cfg, step, results(step)))
        metrics.update(task.stats)
        save_now = step % b.checkpoint_every == 0 or step == b.steps
        whole = {}  # a sharded model's adapter and optimizer state, gathered whole by every rank
        if save_now and sharded:
            whole = {
                "adapter": full_adapter(model),
                "optimizer_state": full_optimizer_state(learner.optimizer),
            }
        if not main:
            continue  # the rest writes the arm's records: rank 0's
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
        if save_now:
            arm.save_checkpoint(
                step=step,
                model=model,
                optimizer=learner.optimizer,
                config=resolved,
                metrics_lines=log.metrics.lines,
                fingerprint=inputs,
                inputs_changed=inputs_changed,
                draws=engine.draws,
                **whole,
            )
        progress.update(step, metrics)
    progress.close()

    task.close()
    close_sets(eval_sets)
    adapter = full_adapter(model) if sharded else None  # every rank takes part in gathering it
    if not main:
        return world.broadcast_object(None)  # rank 0's summary, once it is written
    arm.save_adapter(model, adapter)
    summary = summarize(log.metrics.records(), overrides or [], time.time() - t_start, start)
    summary.update(weights)
    summary["config"] = resolved  # what ran: a later launch in this dir is checked against it
    summary["inputs"] = inputs
    if inputs_changed:
        summary["inputs_changed"] = inputs_changed
    if world.size > 1:
        summary["dist"] = {"world_size": world.size, "backend": world.backend, "shard": cfg.dist.shard}
    arm.write_summary(summary)
    log.finish(summary)
    world.broadcast_object(summary)
    console.info(closing_line(out_dir, summary))
    return summary


def default_threads(world: World) -> int:
    """``threads=0``: the job's CPUs, not the node's (its affinity). torchrun's ranks on one node share one
    affinity: each takes its share; a SLURM task's affinity is its own (``cpus_per_task``)."""
    cpus = len(os.sched_getaffinity(0))
    shared = "TORCHELASTIC_RUN_ID" in os.environ
    return max(1, cpus // world.local_size) if shared else cpus


def rollout_for(rollout_cfg, world: World):
    """The rollout section an arm of ``world`` runs: ``rollout=auto`` is hf across processes, and vLLM (one
    engine per rank needs vLLM's external launcher, not wired yet) is refused there, before any model loads."""
    if world.size == 1:
        return rollout_cfg
    if rollout_cfg.name == "vllm":
        raise UserError(
            f"rollout=vllm with {world.size} processes is not supported yet (each rank would need its own "
            "vLLM engine on vLLM's external launcher); use rollout=hf, or run the arm in one process"
        )
    if rollout_cfg.name == "auto":
        rollout_cfg = OmegaConf.merge(rollout_cfg, {"name": "hf"})
    return rollout_cfg


def check_rewards(rewards: torch.Tensor, advantages: torch.Tensor, data) -> None:
    """Rewards so large that their group statistics overflow (e.g. 1e308) stop the run naming the rewards,
    not the learning rate the non-finite guard would suspect later."""
    if bool(torch.isfinite(advantages).all()):
        return
    from arca_sweep.plugins import PluginFailure

    source = f"data.reward {data.reward}" if data.name == "jsonl" else f"the {data.name} task's reward"
    raise PluginFailure(
        f"{source} gave rewards whose group mean or spread is not finite (largest |reward| "
        f"{rewards.abs().max().item():.3g}); keep rewards to moderate numbers (e.g. 0 to 1)"
    )


def step_metrics(
    batch,
    result,
    format_tokens,
    rollout_s: float,
    learner_s: float,
    credit_name: str,
    diagnostics,
    rollout_correction: str,
    rollout_is_cap: float,
) -> dict:
    """Loss, credit diagnostics (training and shadow signals), sampler-vs-learner log-probs, timing.

    ``diagnostics``: the config's section; ``rollout_correction``: the resolved mode, with its cap."""
    device = result.logp.device
    mask = batch.response_mask.to(device)
    n_tokens = int(mask.sum())
    logp_diff = (batch.sampling_logprobs.to(device) - result.logp).abs()[mask]
    lengths = mask.sum(dim=1).double()
    return {
        "loss": result.loss,
        "grad_norm": result.grad_norm,
        **result.metrics,
        "response/length_mean": n_tokens / mask.shape[0],
        "response/length_min": lengths.min().item(),
        "response/length_max": lengths.max().item(),
        "response/clipped_frac": float(np.mean([r == "length" for r in batch.finish_reasons])),
        "response/finish_stop": float(np.mean([r == "stop" for r in batch.finish_reasons])),
        "credit/fallback_frac": result.fallback_frac,
        **credit_metrics(
            result.weights,
            result.shadow_weights,
            mask,
            format_tokens.mask(batch.response_ids).to(device),
            credit_name,
            diagnostics.uniform_at,
            diagnostics.concentrated_at,
        ),
        "rollout/logp_diff_mean": logp_diff.mean().item(),
        "rollout/logp_diff_max": logp_diff.max().item(),
        **rollout_is_metrics(
            result.logp,
            batch.sampling_logprobs.to(device),
            mask,
            rollout_correction,
            rollout_is_cap,
        ),
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
        # every metric of the last eval, each eval set's included (eval/<set>/...)
        "eval/final_metrics": {
            k: v for k, v in (evals[-1] if evals else {}).items() if k.startswith("eval/")
        },
        "run_means": means,
    }
