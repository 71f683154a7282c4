"""Each credit signal's rounding noise floor per precision mode, against a float64 reference.

    python scripts/bench_precision.py                        # tiny + Qwen3-1.7B-width (3 layers)
    python scripts/bench_precision.py --models tiny --threads 1

For each model and adapter scale (a random LoRA whose A and B entries are N(0, scale^2): 0.005 is
about a first-step adapter, 0.2 a trained one, see BENCHMARKS.md), the base and adapter weights are
rounded to bf16-representable values once (the released checkpoints are bf16), so every mode scores
the very same model. Then, on one batch of response tokens, per signal s:

    noise  = rms_t (s_mode - s_float64)            signal = std_t s_float64
    SNR    = signal / noise                          rel_err = ||s_mode - s_float64|| / ||s_float64||

The noise is the root-mean-square error, not SPEC's median absolute error: the entropy signal is
clamped at 0, so most of its tokens are exactly 0 in every mode and the median error is 0 even where
the errors on the remaining tokens are as large as the signal (the median is printed alongside).

Modes: ``bf16`` (weights and compute in bf16), ``bf16_autocast`` (float32 weights, bf16 matmuls,
float32 residual stream: ``model.dtype=float32 learner.autocast_bf16=true``), ``fp32``. Each mode is
the same model cast in place (:func:`arca_sweep.diagnostics.fidelity.cast_in_place`): one resident copy. Scoring
time per mode is wall seconds of one ``Learner.score`` on this CPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from arca_sweep.diagnostics.fidelity import PROBED, cast_in_place, signal_values  # noqa: E402
from arca_sweep.learner import Learner, LearnerSettings  # noqa: E402
from arca_sweep.model import load_policy, load_tokenizer  # noqa: E402
from arca_sweep.testing import make_batch, make_config, random_qwen3, randomize_adapter  # noqa: E402

SCALES = (0.005, 0.02, 0.05, 0.2)
MODES = {
    "bf16": (torch.bfloat16, False),
    "bf16_autocast": (torch.float32, True),
    "fp32": (torch.float32, False),
}
PROMPTS = ["Compute 12 + 7.", "Compute 88 - 24 + 29.", "Compute 5 - 9.", "Compute 31 + 45 - 8."]
RESPONSES = [
    "12 + 7 = 19\n\\boxed{19}",
    "88 - 24 = 64\n64 + 29 = 93\n\\boxed{93}",
    "5 - 9 = -4, so the answer is \\boxed{-4}",
    "31 + 45 = 76\n76 - 8 = 68\n\\boxed{68}",
]


def to_bf16_grid(model) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).to(p.dtype))


def measure(model, cfg, batch) -> list[dict]:
    rows = torch.arange(len(batch.texts))
    learner = Learner(model, LearnerSettings.from_config(cfg), temperature=1.0)
    with cast_in_place(model, torch.float64):
        ref = signal_values(learner, batch, rows)
    out = []
    for mode, (dtype, autocast) in MODES.items():
        learner.autocast_bf16 = autocast
        with cast_in_place(model, dtype):
            t0 = time.perf_counter()
            run = signal_values(learner, batch, rows)
            seconds = time.perf_counter() - t0
        for s in PROBED:
            noise = (run[s] - ref[s]).square().mean().sqrt().item()
            median = (run[s] - ref[s]).abs().median().item()
            spread = ref[s].std().item()
            rel = (torch.linalg.vector_norm(run[s] - ref[s]) / torch.linalg.vector_norm(ref[s])).item()
            snr = spread / noise if noise > 0 else float("inf")
            out.append(
                dict(
                    mode=mode,
                    signal=s,
                    noise=noise,
                    spread=spread,
                    snr=snr,
                    median=median,
                    rel_err=rel,
                    seconds=seconds,
                )
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["tiny", "qwen3-1.7b-width"], choices=["tiny", "qwen3-1.7b-width"]
    )
    parser.add_argument("--layers", type=int, default=3, help="decoder layers of the Qwen3-1.7B-width model")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(make_config().model)
    batch = make_batch(
        tokenizer, [f"<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n" for p in PROMPTS], RESPONSES
    )
    print(
        "| model | adapter scale | mode | signal | signal (std) | noise (rms) | SNR | median abs err | rel_err | score s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            overrides = ["rank=8", "learner.chunk_size=128", "credit.layer=-1"]
            if name != "tiny":
                path = random_qwen3(Path(tmp) / "qwen", "qwen3_1_7b", layers=args.layers)
                overrides += ["model=qwen3_1_7b", f"model.path={path}"]
            cfg = make_config(*overrides)
            model = load_policy(cfg.model, cfg.rank, torch.device("cpu"), seed=0)
            for scale in SCALES:
                randomize_adapter(model, seed=0, scale=scale)
                to_bf16_grid(model)
                for r in measure(model, cfg, batch):
                    print(
                        f"| {name} | {scale} | {r['mode']} | {r['signal']} | {r['spread']:.3g} | {r['noise']:.2g} "
                        f"| {r['snr']:.3g} | {r['median']:.2g} | {r['rel_err']:.2g} | {r['seconds']:.2f} |",
                        flush=True,
                    )
            del model


if __name__ == "__main__":
    main()
