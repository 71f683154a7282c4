"""Precision and the fidelity probe (SPEC "Precision and the fidelity probe").

A credit signal is trustworthy when its rounding error is small against its own spread. The probe
re-scores one micro-batch at a higher precision every ``diagnostics.fidelity_every`` steps and logs,
per signal s over the micro-batch's response tokens,

    fidelity/<s>/rel_err = ||s_run - s_hi||_2 / ||s_hi||_2

with ``s_run`` the signal as the run computes it and ``s_hi`` the same signal with every floating
weight and buffer cast, in place, to ``diagnostics.fidelity_dtype`` (float64 by default) and back.
The round trip is exact (bf16 -> float64 -> bf16 and float32 -> float64 -> float32 lose nothing), and
the parameters stay the same objects, so the optimizer's references and state are untouched and no
second resident copy of the weights exists (the high-precision weights replace the run's for the
duration of one scoring pass).

``learner.autocast_bf16`` (see :func:`compute_context`) runs the scoring and training forwards
under bf16 autocast over float32 weights: every matmul in bf16, weights, residual stream, norms and
softmaxes in float32.
"""

from __future__ import annotations

import contextlib

import torch

from arca_sweep import credit

PROBED = ("surprisal", "entropy", "divergence", "arca")  # uniform is exact at every precision


@contextlib.contextmanager
def cast_in_place(model, dtype: torch.dtype):
    """Every floating parameter of ``model`` cast to ``dtype`` for the block, then back to its own
    dtype; floating buffers (rotary frequencies, float32 in every HF dtype) only where ``dtype`` is
    at least as wide, so they never lose bits. Casting up and back is exact; casting parameters down
    and back is exact only for values on the lower-precision grid (``scripts/bench_precision.py``
    puts them there)."""
    saved = []
    wide = torch.finfo(dtype).bits
    tensors = [p for _, p in model.named_parameters()]
    tensors += [
        b for _, b in model.named_buffers() if b.is_floating_point() and torch.finfo(b.dtype).bits <= wide
    ]
    for t in tensors:
        if t.is_floating_point() and t.dtype != dtype:
            saved.append((t, t.dtype))
            t.data = t.data.to(dtype)
    try:
        yield
    finally:
        for t, original in saved:
            t.data = t.data.to(original)


def compute_context(device: torch.device, autocast_bf16: bool):
    """bf16 autocast for the model's forwards (``learner.autocast_bf16``), else a no-op."""
    if not autocast_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def signal_values(learner, batch, rows, signals=PROBED) -> dict[str, torch.Tensor]:
    """Each signal's raw salience over the response tokens of ``rows``, flattened [N], float64."""
    with torch.no_grad():
        stats, _ = learner.score(batch, rows)
    return {
        s: credit.salience(s, stats, **learner.signal_options)[stats.mask].double().cpu() for s in signals
    }


def relative_errors(run: dict[str, torch.Tensor], hi: dict[str, torch.Tensor]) -> dict[str, float]:
    """``||run - hi|| / ||hi||`` per signal (0 when both are all zero)."""
    out = {}
    for s, ref in hi.items():
        norm = torch.linalg.vector_norm(ref).item()
        err = torch.linalg.vector_norm(run[s] - ref).item()
        out[s] = err / norm if norm > 0 else (0.0 if err == 0 else float("inf"))
    return out


def fidelity_probe(learner, batch, rows, dtype: torch.dtype = torch.float64) -> dict[str, float]:
    """``fidelity/<signal>/rel_err`` of one micro-batch: the run's signals against the same weights
    scored with every weight cast to ``dtype`` (autocast off)."""
    run = signal_values(learner, batch, rows)
    autocast = learner.autocast_bf16
    learner.autocast_bf16 = False
    try:
        with cast_in_place(learner.model, dtype):
            hi = signal_values(learner, batch, rows)
    finally:
        learner.autocast_bf16 = autocast
    return {f"fidelity/{s}/rel_err": v for s, v in relative_errors(run, hi).items()}
