"""Generated tokens/s of the rollout engines, side by side: rollout=hf, rollout=vllm with adapter sync,
rollout=vllm with merged sync. Sampling at temperature 1 with a random non-zero rank-8 adapter, as in
training; each engine is synced and warmed up once before the timed generate calls.

    python scripts/bench_rollout.py                 # tiny, a Qwen3-1.7B-width 2-layer model, SmolLM2-135M
    python scripts/bench_rollout.py --models tiny   # only the packaged tiny model

The Qwen3-1.7B-width model (hidden 2048, 151,936-token vocabulary, 2 layers) is built from its config
with random weights and saved to a temporary directory: nothing is downloaded. smollm2_135m is the real
model (model.source=package), measured only when already converted into the cache
(``python -m arca_sweep.weights smollm2_135m``; ``ARCA_SWEEP_CACHE``), at a GRPO step's shape.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from arca_sweep.config import validate  # noqa: E402
from arca_sweep.model import load_policy, load_tokenizer  # noqa: E402
from arca_sweep.progress import quiet_libraries  # noqa: E402
from arca_sweep.rollout import build_engine  # noqa: E402
from arca_sweep.testing import make_config, random_qwen3, randomize_adapter  # noqa: E402
from arca_sweep.weights import cache_root, converted  # noqa: E402

MODELS = {
    # name: (prompts, samples per prompt, max_new_tokens)
    "tiny": (16, 4, 64),
    "qwen3-1.7b-width-2-layers": (4, 4, 32),
    "smollm2_135m": (4, 8, 64),  # a GRPO step: 4 prompts x G = 8
}


def bench(model_overrides: list[str], prompts: int, samples: int, max_new_tokens: int, repeats: int) -> dict:
    rows = {}
    for engine_name, extra in [
        ("hf", ["rollout=hf"]),
        ("vllm adapter", ["rollout=vllm", "rollout.sync=adapter"]),
        ("vllm merged", ["rollout=vllm", "rollout.sync=merged"]),
    ]:
        cfg = make_config(*model_overrides, "rank=8", "device=cpu", *extra)
        validate(cfg)
        tokenizer = load_tokenizer(cfg.model)
        model = load_policy(cfg.model, cfg.rank, torch.device("cpu"), seed=0)
        randomize_adapter(model, seed=0)
        t0 = time.time()
        engine = build_engine(cfg.rollout, model, tokenizer)
        start_s = time.time() - t0
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": "Compute 12 + 7."}], tokenize=False, add_generation_prompt=True
        )
        ids = [tokenizer(prompt, add_special_tokens=False)["input_ids"]] * prompts
        engine.generate(ids, samples, max_new_tokens)  # warm-up
        t0 = time.time()
        engine.sync(model)
        sync_s = time.time() - t0
        tokens, gen_s = 0, 0.0
        for _ in range(repeats):
            t0 = time.time()
            batch = engine.generate(ids, samples, max_new_tokens)
            gen_s += time.time() - t0
            tokens += int(batch.response_mask.sum())
        rows[engine_name] = dict(tokens_per_s=tokens / gen_s, start_s=start_s, sync_s=sync_s, tokens=tokens)
        print(
            f"  {engine_name:13s} {tokens / gen_s:9.1f} tok/s  start {start_s:5.1f} s  sync {sync_s:6.3f} s",
            flush=True,
        )
        del engine, model
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_libraries()  # before vllm is imported (by the engine): its expected start-up warnings at INFO
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            prompts, samples, max_new = MODELS[name]
            overrides = ["model=tiny"]
            if name == "smollm2_135m":
                overrides = ["model=smollm2_135m", "model.source=package"]
                if converted(make_config(*overrides).model) is None:
                    print(
                        f"{name}: skipped, not in the cache {cache_root()} (python -m arca_sweep.weights {name})"
                    )
                    continue
            elif name != "tiny":
                path = random_qwen3(
                    Path(tmp) / name, "qwen3_1_7b", layers=2
                )  # the tiny tokenizer: timing only
                overrides = ["model=qwen3_1_7b", f"model.path={path}", "model.dtype=float32"]
                overrides.append("rollout.max_model_len=1024")  # the KV cache for 40,960 tokens would not fit
            print(f"{name}: {prompts} prompts x {samples} samples, up to {max_new} new tokens, T=1, rank 8")
            results[name] = bench(overrides, prompts, samples, max_new, args.repeats)
    print("\n| model | engine | generated tokens/s | vs hf | start-up s | sync s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, rows in results.items():
        hf = rows["hf"]["tokens_per_s"]
        for engine_name, r in rows.items():
            print(
                f"| {name} | {engine_name} | {r['tokens_per_s']:.1f} | {r['tokens_per_s'] / hf:.2f}x "
                f"| {r['start_s']:.1f} | {r['sync_s']:.3f} |"
            )


if __name__ == "__main__":
    main()
