"""float32 GFLOP/s of the GRPO step's frozen-weight matmuls: torch's default (MKL) vs oneDNN
(``arca_sweep.kernels``, ``model.cpu_matmul=onednn``), side by side in one process.

    python scripts/bench_kernels.py --threads 2

Shapes: Qwen3-1.7B width (hidden 2048, MLP 6144, KV 1024), the 151,936-token LM head; 32 rows is one
decoding step of a 4 x 8 rollout, 1,024 rows the learner's response tokens, 2,000 rows prompt +
response tokens through a projection. "backward" is ``grad_y @ W`` (the gradient to the input).
Each entry: the best of 3 timed calls after one warm-up; the relative difference to a float64
product is printed for each library.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from arca_sweep import kernels  # noqa: E402

V, D, MLP, KV = 151_936, 2048, 6144, 1024
CASES = [  # (name, rows, out, in, backward)
    ("LM head, decoding step", 32, V, D, False),
    ("LM head, learner forward", 1024, V, D, False),
    ("LM head, learner backward (p @ W)", 1024, V, D, True),
    ("q/o projection, decoding step", 32, D, D, False),
    ("k/v projection, learner", 2000, KV, D, False),
    ("gate/up projection, learner", 2000, MLP, D, False),
    ("down projection, learner", 2000, D, MLP, False),
    ("down projection, learner backward", 2000, D, MLP, True),
    ("square 2048^3", 2048, D, D, False),
]


def best_seconds(f, repeats: int = 3) -> float:
    f()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not kernels.available():
        sys.exit("torch has no oneDNN (torch.backends.mkldnn): nothing to compare")
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}, {args.threads} threads\n")
    print(
        "| matmul | rows x out x in | MKL GFLOP/s | oneDNN GFLOP/s | oneDNN / MKL | rel. err MKL | rel. err oneDNN |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    g = torch.Generator().manual_seed(0)
    for name, rows, out, inp, backward in CASES:
        w = torch.randn(out, inp, generator=g)
        if backward:  # grad_x [rows, inp] = grad_y [rows, out] @ W [out, inp]
            x = torch.randn(rows, out, generator=g)
            mkl, dnn = (lambda x=x, w=w: x @ w), (lambda x=x, w=w: kernels.linear(x, w.t()))
            ref = x.double() @ w.double()
        else:
            x = torch.randn(rows, inp, generator=g)
            mkl, dnn = (lambda x=x, w=w: F.linear(x, w)), (lambda x=x, w=w: kernels.linear(x, w))
            ref = F.linear(x.double(), w.double())
        flops = 2 * rows * out * inp
        t_mkl, t_dnn = best_seconds(mkl), best_seconds(dnn)
        err = [((f().double() - ref).abs().max() / ref.abs().max()).item() for f in (mkl, dnn)]
        print(
            f"| {name} | {rows} x {out} x {inp} | {flops / t_mkl / 1e9:.0f} | {flops / t_dnn / 1e9:.0f} "
            f"| {t_mkl / t_dnn:.2f}x | {err[0]:.1e} | {err[1]:.1e} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
