"""Base accuracy of a model on variants of the arith task: which variant can it learn from?

    ARCA_SWEEP_CACHE=/tmp/arca_cache HF_HUB_OFFLINE=1 nice python scripts/task_variants.py
    python scripts/task_variants.py --model tiny --num 32 --sampled 1       # a quick check on the tiny model

Every number goes through the project's own path: the task's eval problems (``build_task``), the chat
template (``encode_prompts``), ``rollout=hf`` (``build_engine``) and the task's reward. Per variant (its
``data.*`` overrides and ``max_new_tokens``): greedy accuracy on ``--num`` eval problems with a Wilson 95%
interval, mean response length in tokens, the share of responses that ended (EOS, not cut at
max_new_tokens), and seconds. Then for the ``--sampled`` variants whose greedy accuracy is nearest 0.35
within [0.15, 0.6]: the sampled reward a GRPO step sees (``--sampled-prompts`` problems x
``--group-size`` samples at ``rollout.temperature``) and the share of groups whose rewards are not all
equal (only those carry a learning signal). Prints markdown tables.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

BOXED = "data.instruction='Put the final answer in \\boxed{}.'"
GIVE_BOXED = "data.instruction='Give only the final answer in \\boxed{}.'"
NUMBER = ["data.instruction='Answer with just the number.'", "data.answer_format=number"]
# (data.* overrides, max_new_tokens). Every shape's eval partition holds at least 64 distinct problems.
VARIANTS = [
    ([], 40),  # the default task
    (["data.ops=+", "data.max_operands=2", BOXED], 40),
    (["data.ops=+", "data.max_operands=2", *NUMBER], 16),
    (["data.ops=+", "data.max_operands=2", *NUMBER], 32),
    (["data.ops=+", "data.max_operands=2", "data.min_operand=10", *NUMBER], 16),
    (["data.ops=+", "data.max_operand=9", "data.max_operands=4", *NUMBER], 16),
    (["data.ops=+-", "data.max_operand=9", *NUMBER], 16),
    (["data.ops=+-", "data.max_operand=9", *NUMBER], 32),
    (["data.ops=+-", "data.max_operand=9", GIVE_BOXED], 32),
    (["data.ops=+-*", "data.max_operand=9", *NUMBER], 16),
]


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def label(overrides: list[str], max_new_tokens: int) -> str:
    return " ".join(overrides or ["(default arith)"]) + f" tokens={max_new_tokens}"


def measure(engine, tokenizer, task, problems, samples: int, max_new_tokens: int, greedy: bool) -> dict:
    from arca_sweep.eval import encode_prompts

    start = time.perf_counter()
    batch = engine.generate(encode_prompts(tokenizer, problems), samples, max_new_tokens, greedy=greedy)
    seconds = time.perf_counter() - start
    repeated = [p for p in problems for _ in range(samples)]
    rewards = task.rewards(batch.texts, repeated)
    groups = [rewards[i : i + samples] for i in range(0, len(rewards), samples)]
    return dict(
        rewards=rewards,
        mixed=sum(len(set(g)) > 1 for g in groups) / len(groups),
        length=batch.response_mask.sum(dim=1).float().mean().item(),
        finished=sum(f == "stop" for f in batch.finish_reasons) / len(batch.finish_reasons),
        seconds=seconds,
        example=batch.texts[0],
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--model-override", action="append", default=["model.source=package"])
    parser.add_argument("--num", type=int, default=64, help="greedy eval problems per variant")
    parser.add_argument("--sampled", type=int, default=3, help="variants measured at rollout.temperature")
    parser.add_argument("--sampled-prompts", type=int, default=16)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", type=int, nargs="*", help="indices into VARIANTS")
    args = parser.parse_args()

    import torch

    from arca_sweep.eval.cli import compose_config
    from arca_sweep.model import load_policy, load_tokenizer
    from arca_sweep.rollout import build_engine
    from arca_sweep.tasks import build_task

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # the sampled rows
    model_overrides = [f"model={args.model}"] + (args.model_override if args.model != "tiny" else [])
    cfg = compose_config([*model_overrides, "rollout=hf"])
    tokenizer = load_tokenizer(cfg.model)
    model = load_policy(cfg.model, cfg.rank, torch.device("cpu"), cfg.seed)
    engine = build_engine(cfg.rollout, model, tokenizer)
    variants = [VARIANTS[i] for i in args.only] if args.only else VARIANTS

    print(f"model={args.model}, {args.num} eval problems per variant, greedy, threads={args.threads}\n")
    print("| variant | greedy accuracy [Wilson 95%] | mean length | finished | s |")
    print("| --- | --- | --- | --- | --- |")
    greedy = []
    for overrides, max_new_tokens in variants:
        task = build_task(compose_config([*model_overrides, *overrides]).data)
        problems = task.eval_problems(args.num)
        r = measure(engine, tokenizer, task, problems, 1, max_new_tokens, greedy=True)
        accuracy = sum(r["rewards"]) / len(r["rewards"])
        low, high = wilson(sum(r["rewards"]), len(r["rewards"]))
        greedy.append((accuracy, overrides, max_new_tokens))
        print(
            f"| {label(overrides, max_new_tokens)} | {accuracy:.3f} [{low:.2f}, {high:.2f}] | "
            f"{r['length']:.1f} | {r['finished']:.2f} | {r['seconds']:.0f} |",
            flush=True,
        )
        print(f"<!-- {problems[0].question!r} -> {r['example'][:160]!r} -->", file=sys.stderr, flush=True)

    chosen = sorted((abs(a - 0.35), o, t) for a, o, t in greedy if 0.15 <= a <= 0.6)[: args.sampled]
    if not chosen:
        return
    print(
        f"\nsampled at T={cfg.rollout.temperature}: {args.sampled_prompts} eval problems x G={args.group_size}\n"
    )
    print("| variant | mean reward [Wilson 95%] | groups with mixed rewards | mean length | finished | s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for _, overrides, max_new_tokens in chosen:
        task = build_task(compose_config([*model_overrides, *overrides]).data)
        problems = task.eval_problems(args.sampled_prompts)
        r = measure(engine, tokenizer, task, problems, args.group_size, max_new_tokens, greedy=False)
        low, high = wilson(sum(r["rewards"]), len(r["rewards"]))
        print(
            f"| {label(overrides, max_new_tokens)} | {sum(r['rewards']) / len(r['rewards']):.3f} "
            f"[{low:.2f}, {high:.2f}] | {r['mixed']:.2f} | {r['length']:.1f} | {r['finished']:.2f} | "
            f"{r['seconds']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
