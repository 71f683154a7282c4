"""Matmuls with frozen weights on CPU through oneDNN (``model.cpu_matmul=onednn``).

Every large matmul of a LoRA GRPO step has a frozen weight: the base projections (LoRA trains only
its small A and B) and the LM head, in the rollout's decoding steps, the learner's forward, the
backward to the hidden states and the reference pass. On CPU, torch sends a float32 ``F.linear`` to
MKL; on the AMD EPYC of BENCHMARKS.md ("Kernels") that reaches 100-215 GFLOP/s on two threads, while
oneDNN's inner product (``torch.ops.mkldnn._linear_pointwise``, the kernel torch.compile's CPU
backend emits) reaches 260-470 GFLOP/s on the same shapes, on the dense weight as stored (no packed
copy, no extra memory). Same float32 arithmetic, another summation order: results agree with MKL's
to float32 rounding (relative 1e-6 at K = 2,048), not bit for bit.

:func:`linear` is ``F.linear`` for a frozen weight: oneDNN where it applies (CPU, float32 or bfloat16,
no autocast, ``torch.backends.mkldnn`` present, enabled), ``F.linear`` otherwise (float64 checks,
CUDA). Its backward gives the gradient to the input only, ``grad_x = grad_y @ W``, on the same
kernel (the weight's transpose is a free view). :func:`use_onednn` swaps every frozen
``nn.Linear`` of a model for :class:`FrozenLinear` (same parameters, state dict and ``isinstance``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CHOICES = ("onednn", "aten")
_DTYPES = (torch.float32, torch.bfloat16)
# oneDNN costs ~35 us more per call than MKL: below ~4M multiply-adds (e.g. 64 rows x 64 x 256) MKL
# is faster, above it (64 x 128 x 512 and up) oneDNN (measured on the machine of BENCHMARKS.md).
_MIN_MACS = 1 << 22
_enabled = True


def configure(cpu_matmul: str) -> None:
    """``model.cpu_matmul``: ``onednn`` (the default) or ``aten`` (every matmul through ``F.linear``)."""
    global _enabled
    if cpu_matmul not in CHOICES:
        raise ValueError(f"model.cpu_matmul={cpu_matmul!r}; valid: {', '.join(CHOICES)}")
    _enabled = cpu_matmul == "onednn"


def available() -> bool:
    return (
        _enabled and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def _applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == weight.dtype
        and x.dtype in _DTYPES
        and not torch.is_autocast_enabled("cpu")
        and x.numel() * weight.shape[0] >= _MIN_MACS
    )


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _FrozenLinearFn(torch.autograd.Function):
    """y = x W^T + b with W and b frozen: the backward returns grad_x = grad_y W only."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(weight)
        return _onednn(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_y):
        (weight,) = ctx.saved_tensors
        grad_x = _onednn(grad_y.contiguous(), weight.t(), None) if ctx.needs_input_grad[0] else None
        return grad_x, None, None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for a frozen ``weight`` (and ``bias``), on oneDNN where it applies."""
    if weight.requires_grad or (bias is not None and bias.requires_grad):
        raise ValueError("kernels.linear is for frozen weights; use F.linear for a trainable one")
    if not (available() and _applies(x, weight)):
        return F.linear(x, weight, bias)
    if x.requires_grad and torch.is_grad_enabled():
        return _FrozenLinearFn.apply(x, weight, bias)
    with torch.no_grad():
        return _onednn(x, weight, bias)


class FrozenLinear(nn.Linear):
    """An ``nn.Linear`` whose forward runs :func:`linear` while its parameters are frozen."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.requires_grad or (self.bias is not None and self.bias.requires_grad):
            return F.linear(x, self.weight, self.bias)
        return linear(x, self.weight, self.bias)


def use_onednn(model: nn.Module) -> int:
    """Swap every frozen plain ``nn.Linear`` in ``model`` (base projections, LM head) for
    :class:`FrozenLinear`, in place; returns how many. Trainable ones (LoRA A and B) stay as they are."""
    n = 0
    for module in model.modules():
        if type(module) is nn.Linear and not module.weight.requires_grad:
            module.__class__ = FrozenLinear
            n += 1
    return n


def flop_formulas() -> dict:
    """``FlopCounterMode(custom_mapping=...)`` entries for the oneDNN op (2 * rows * in * out)."""
    if not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return {}

    def linear_flops(x_shape, w_shape, *args, **kwargs) -> int:
        rows = 1
        for s in x_shape[:-1]:
            rows *= s
        return 2 * rows * w_shape[0] * w_shape[1]

    return {torch.ops.mkldnn._linear_pointwise: linear_flops}  # keyed by the overload packet
