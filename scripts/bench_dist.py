"""One arm across processes against one process, on the same cores and the same workload: the scaling
efficiency of ``torchrun --nproc-per-node N`` (arca_sweep/distributed/).

    python scripts/bench_dist.py                         # tiny model, 2 ranks x 1 thread vs 1 process x 2 threads
    python scripts/bench_dist.py --model smollm2_135m    # the real model (its cache must be built:
                                                         #   python -m arca_sweep.weights smollm2_135m)

Each side runs the same arm (seed, prompts, budget) in its own dir; the numbers are the arms' own records:
the mean training-step seconds (rollout + learner, steps 2.. so start-up and the first step's warm-up are
left out) and the response tokens per second. The ratio is the throughput of N ranks over one process;
the two arms' rewards and final adapters are also compared (they must agree: tests/test_distributed.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    a = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    args = [
        f"model={a.model}",
        "rollout=hf",
        "budget=smoke",
        f"budget.steps={a.steps}",
        f"budget.prompts_per_step={a.prompts}",
        f"budget.group_size={a.group}",
        f"budget.max_new_tokens={a.tokens}",
        "budget.eval_size=8",
        "logger.progress=false",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        one, many = tmp / "one", tmp / "many"
        run([sys.executable, "-m", "arca_sweep", *args, f"threads={cores}", f"hydra.run.dir={one}"], tmp)
        torchrun = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={a.ranks}",
        ]
        run(
            [
                *torchrun,
                "-m",
                "arca_sweep",
                *args,
                f"threads={max(1, cores // a.ranks)}",
                f"hydra.run.dir={many}",
            ],
            tmp,
        )
        rows = a.prompts * a.group
        results = {}
        for name, arm in (("one", one), ("many", many)):
            recs = [json.loads(x) for x in (arm / "metrics.jsonl").read_text().splitlines()][2:]
            seconds = sum(r["perf/rollout_s"] + r["perf/learner_s"] for r in recs)
            tokens = sum(r["response/length_mean"] * rows for r in recs)
            results[name] = {
                "step_s": seconds / len(recs),
                "rollout_s": sum(r["perf/rollout_s"] for r in recs) / len(recs),
                "learner_s": sum(r["perf/learner_s"] for r in recs) / len(recs),
                "tokens_per_s": tokens / seconds,
                "rewards": [r["reward/mean"] for r in recs],
            }
    o, m = results["one"], results["many"]
    print(
        f"model {a.model}, {a.steps} steps of {a.prompts} prompts x {a.group} samples x {a.tokens} new tokens, {cores} cores"
    )
    print(
        f"1 process x {cores} threads:  {o['step_s']:.3f} s/step (rollout {o['rollout_s']:.3f}, learner {o['learner_s']:.3f}), {o['tokens_per_s']:.0f} tokens/s"
    )
    print(
        f"{a.ranks} ranks x {max(1, cores // a.ranks)} thread(s): {m['step_s']:.3f} s/step (rollout {m['rollout_s']:.3f}, "
        f"learner {m['learner_s']:.3f}), {m['tokens_per_s']:.0f} tokens/s"
    )
    print(f"throughput ratio (ranks / one process): {m['tokens_per_s'] / o['tokens_per_s']:.2f}")
    print(f"same rewards: {o['rewards'] == m['rewards']}")


if __name__ == "__main__":
    main()
