"""Full-vocabulary per-token quantities from hidden states and the LM head, in token chunks.

Given hidden states ``h`` [N, D] at the positions that predict the targets ``y`` [N] and the LM
head ``W`` [V, D], with logits ``z = (h @ W.T) / temperature``:

    log pi(y)   = z_y - logsumexp(z)
    H(pi)       = logsumexp(z) - sum_v softmax(z)_v z_v
    KL(pi||ref) = sum_v pi_v (log pi_v - log ref_v)        (exact, over the whole vocabulary)

The entropies and the KL are row sums of [chunk, V] products by torch's pairwise (cascade) sum, and
renormalized by the sum of the float32 probabilities (:func:`_entropy`, :func:`_kl`): each stays
within 1e-5 nats of float64 at V = 151,936 (tests/test_vocab_precision.py), where one running float32
dot product (``bmm``) was 1e-3 nats off, as large as the entropy signal under LoRA.

Only a [chunk, V] block of logits exists at any time (never [B, T, V] in float32): Qwen3's
vocabulary is 151,936, so 4,096 response tokens would otherwise need 2.5 GB per tensor.
The policy log-prob carries a gradient to ``h`` (and to ``W`` if it requires one) through a
custom autograd function whose backward recomputes each chunk's softmax:
d log pi(y) / d h = (W_y - sum_v pi_v W_v) / temperature.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from arca_sweep import kernels


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, temperature: float) -> torch.Tensor:
    z = hidden @ weight.T if weight.requires_grad else kernels.linear(hidden, weight)
    z = z.to(torch.promote_types(z.dtype, torch.float32))
    return z if temperature == 1.0 else z / temperature  # (T = 1: no [chunk, V] copy)


def _times_weight(g: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``g @ W`` [chunk, D] for ``g`` [chunk, V]: the head's transpose as a (free) view."""
    return kernels.linear(g, weight.detach().t())  # (F.linear, i.e. g @ W, where oneDNN does not apply)


class _ChunkedTargetLogProb(torch.autograd.Function):
    """log softmax(h @ W.T / temperature)[y], chunked over tokens in forward and backward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, chunk_size, value):
        out = (
            value.clone()
            if value is not None
            else _target_logp(hidden, weight, targets, temperature, chunk_size)
        )
        ctx.save_for_backward(hidden, weight, targets)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, targets = ctx.saved_tensors
        t, cs = ctx.temperature, ctx.chunk_size
        grad_h = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        grad_w = (
            torch.zeros_like(weight, dtype=torch.promote_types(weight.dtype, torch.float32))
            if ctx.needs_input_grad[1]
            else None
        )
        for s in range(0, hidden.shape[0], cs):
            h = hidden[s : s + cs]
            # d/dz of log softmax(z)[y] is onehot(y) - softmax(z); chain through z = h W^T / t.
            g = -torch.softmax(_chunk_logits(h, weight, t), dim=-1)
            g.scatter_add_(1, targets[s : s + cs, None], torch.ones_like(g[:, :1]))
            g *= grad_out[s : s + cs, None] / t
            if grad_h is not None:
                grad_h[s : s + cs] = _times_weight(g.to(weight.dtype), weight).to(hidden.dtype)
            if grad_w is not None:
                grad_w += g.T @ h.to(g.dtype)
        return grad_h, (grad_w.to(weight.dtype) if grad_w is not None else None), None, None, None, None


def _pick(z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(z)[y] of one chunk of logits."""
    return z.gather(1, targets[:, None])[:, 0] - z.logsumexp(-1)


def _entropy(sum_plogp: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """``H = log S - sum_v p_v log p_v / S`` with ``S = sum_v p_v`` [n], ``p = exp(log p)`` from a float32
    log-softmax: the entropy of ``p / S``. Every ``log p_v`` shares the float32 rounding of the
    log-normalizer (its ulp is 1e-6 at log V = 11.9), which ``-sum p log p`` would carry times (H - 1);
    renormalizing by the measured mass cancels it."""
    return mass.log() - sum_plogp / mass


def _kl(logp, p, mass, logq, ref_mass) -> torch.Tensor:
    """``KL(p / S_p || q / S_q) = sum_v p_v (log p_v - log q_v) / S_p - log S_p + log S_q`` per row of
    [n, V] float32 log-softmax blocks, ``S`` the measured masses [n] (as in :func:`_entropy`): one
    [n, V] temporary."""
    return torch.sub(logp, logq).mul_(p).sum(-1) / mass - mass.log() + ref_mass.log()


@torch.no_grad()
def _target_logp(hidden, weight, targets, temperature: float, chunk_size: int) -> torch.Tensor:
    out = torch.empty(
        hidden.shape[0], dtype=torch.promote_types(hidden.dtype, torch.float32), device=hidden.device
    )
    for s in range(0, hidden.shape[0], chunk_size):
        out[s : s + chunk_size] = _pick(
            _chunk_logits(hidden[s : s + chunk_size], weight, temperature), targets[s : s + chunk_size]
        )
    return out


def target_logprob(hidden, weight, targets, temperature: float = 1.0, chunk_size: int = 1024, value=None):
    """log pi(y_n) for each row of ``hidden`` [N, D]; differentiable in ``hidden`` (and ``weight``).

    ``value``: the same log-probs already computed (``vocab_stats(..., need={"logp", ...})`` reads
    the same logits), so the forward skips its own pass over the LM head; the backward is unchanged.
    """
    return _ChunkedTargetLogProb.apply(hidden, weight, targets, float(temperature), int(chunk_size), value)


@dataclass
class VocabStats:
    """Detached full-vocabulary quantities per token, each [N] (None when not asked for)."""

    logp: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    ref_entropy: torch.Tensor | None = None
    kl: torch.Tensor | None = None


@torch.no_grad()
def vocab_stats(
    hidden,
    weight,
    targets,
    ref_hidden=None,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    need: frozenset[str] | set[str] = frozenset(),
) -> VocabStats:
    """Policy log-probs, entropies, reference log-probs and exact KL from policy and reference hidden states.

    ``need`` names the fields wanted among ``logp, entropy, ref_logp, ref_entropy, kl``; the reference
    ones need ``ref_hidden`` (the same positions with the adapter disabled). Each chunk's policy and
    reference logits are computed once, whatever is asked for.
    """
    fields = {"logp", "entropy", "ref_logp", "ref_entropy", "kl"}
    if unknown := set(need) - fields:
        raise ValueError(f"unknown vocab stats {sorted(unknown)}; valid: {sorted(fields)}")
    needs_ref = bool({"ref_logp", "ref_entropy", "kl"} & set(need))
    if needs_ref and ref_hidden is None:
        raise ValueError(f"{sorted(need)} need ref_hidden")
    n = hidden.shape[0]
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    out = {k: torch.empty(n, dtype=dtype, device=hidden.device) for k in need}
    for s in range(0, n, chunk_size):
        e = slice(s, s + chunk_size)
        logp = p = mass = None
        if {"logp", "entropy", "kl"} & set(need):
            z = _chunk_logits(hidden[e], weight, temperature)
            if "logp" in need:
                out["logp"][e] = _pick(z, targets[e])
            logp = z.log_softmax(-1)
            if {"entropy", "kl"} & set(need):
                p = logp.exp()
                mass = p.sum(-1)
            if "entropy" in need:
                out["entropy"][e] = _entropy((p * logp).sum(-1), mass)
        if needs_ref:
            logq = _chunk_logits(ref_hidden[e], weight, temperature).log_softmax(-1)
            if "ref_logp" in need:
                out["ref_logp"][e] = logq.gather(1, targets[e, None])[:, 0]
            if {"ref_entropy", "kl"} & set(need):
                q = logq.exp()
                ref_mass = q.sum(-1)
                if "ref_entropy" in need:
                    out["ref_entropy"][e] = _entropy(q.mul_(logq).sum(-1), ref_mass)
                del q
            if "kl" in need:
                out["kl"][e] = _kl(logp, p, mass, logq, ref_mass)
    return VocabStats(**out)


# ------------------------------------------------------------------------------------------------
# The fused scoring pass: one LM-head matmul per chunk feeds every quantity and the log-prob's gradient
# ------------------------------------------------------------------------------------------------

# Live [chunk, V] float32 blocks at the peak of one fused chunk: policy log-softmax, its exp, the
# reference log-softmax and one temporary (the E_p[W] cast, an entropy's product, the reference's exp,
# or the KL product).
_BLOCKS_PER_CHUNK = 4


def auto_chunk_size(vocab_size: int, memory_mb: float, override: int = 0) -> int:
    """Tokens per full-vocabulary chunk: ``override`` when > 0, else the most tokens whose
    ``_BLOCKS_PER_CHUNK`` float32 ``[chunk, V]`` blocks fit in ``memory_mb`` (at least 16, at most 8,192)."""
    if override > 0:
        return int(override)
    fit = int(memory_mb * 2**20) // (_BLOCKS_PER_CHUNK * 4 * vocab_size)
    return max(16, min(8192, fit))


class _SavedGradLogProb(torch.autograd.Function):
    """Returns the precomputed ``value`` [N]; backward is ``grad_h = g[:, None] * grad_dir`` with
    ``grad_dir = d value / d hidden`` [N, D] formed in the forward pass. Exact for any loss
    differentiable in the log-prob, since the Jacobian of log pi(y_n) in h is row-wise."""

    @staticmethod
    def forward(ctx, hidden, value, grad_dir):
        ctx.save_for_backward(grad_dir)
        ctx.hidden_dtype = hidden.dtype
        return value.clone()

    @staticmethod
    def backward(ctx, grad_out):
        (grad_dir,) = ctx.saved_tensors
        return (grad_out[:, None] * grad_dir).to(ctx.hidden_dtype), None, None


@torch.no_grad()
def _fused_pass(
    hidden, weight, targets, ref_hidden, sample, temperature, chunk_size, need, need_sample, grad
):
    n, d = hidden.shape
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    out = {k: torch.full((n,), torch.nan, dtype=dtype, device=hidden.device) for k in need | need_sample}
    grad_dir = torch.empty(n, d, dtype=dtype, device=hidden.device) if grad else None
    # ref_hidden holds every token (a full need) or only the sampled ones, in order.
    ref_index = None
    if ref_hidden is not None and ref_hidden.shape[0] != n:
        ref_index = sample.long().cumsum(0) - 1
    ref_fields = {"ref_logp", "ref_entropy", "kl"}
    for s in range(0, n, chunk_size):
        e = slice(s, s + chunk_size)
        y = targets[e]
        logp = _chunk_logits(hidden[e], weight, temperature)
        logp -= logp.logsumexp(-1, keepdim=True)  # in place: the chunk's policy log-softmax
        out["logp"][e] = logp.gather(1, y[:, None])[:, 0]
        p = logp.exp()
        if grad:
            # d log pi(y) / d h = (W_y - E_p[W]) / temperature
            grad_dir[e] = (
                weight[y].to(dtype) - _times_weight(p.to(weight.dtype), weight).to(dtype)
            ) / temperature
        mass = p.sum(-1) if {"entropy", "kl"} & out.keys() else None
        if "entropy" in out:
            out["entropy"][e] = _entropy((p * logp).sum(-1), mass)
        if not (need | need_sample) & ref_fields:
            continue
        full_ref = bool(need & ref_fields)
        sel = None if full_ref else sample[e].nonzero()[:, 0]
        if sel is not None and sel.numel() == 0:
            continue
        if full_ref:
            rows = ref_hidden[e]
        else:
            rows = ref_hidden[ref_index[e][sel]] if ref_index is not None else ref_hidden[e][sel]
            logp, p, y = logp[sel], p[sel], y[sel]
            mass = mass[sel] if mass is not None else None
        logq = _chunk_logits(rows, weight, temperature)
        logq -= logq.logsumexp(-1, keepdim=True)
        at = e if sel is None else sel + s
        if "ref_logp" in out:
            out["ref_logp"][at] = logq.gather(1, y[:, None])[:, 0]
        if not {"ref_entropy", "kl"} & out.keys():
            continue
        q = logq.exp()
        ref_mass = q.sum(-1)
        if "ref_entropy" in out:
            out["ref_entropy"][at] = _entropy(q.mul_(logq).sum(-1), ref_mass)
        del q
        if "kl" in out:
            out["kl"][at] = _kl(logp, p, mass, logq, ref_mass)
    return out, grad_dir


def fused_scores(
    hidden,
    weight,
    targets,
    ref_hidden=None,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    need: frozenset[str] | set[str] = frozenset(),
    sample: torch.Tensor | None = None,
    need_sample: frozenset[str] | set[str] = frozenset(),
) -> tuple[torch.Tensor, VocabStats]:
    """``(log pi(y) [N] with a gradient to hidden, VocabStats)`` from one LM-head matmul per chunk.

    Same quantities as :func:`vocab_stats` (``need``, over every token) and :func:`target_logprob`,
    but each chunk's policy logits ``z`` are formed once: the forward also computes
    ``E_p[W] = softmax(z) @ W`` and keeps ``(W_y - E_p[W]) / temperature`` [N, D], so the backward
    is one broadcast multiply and no chunk is recomputed. ``need_sample`` fields are computed on the
    tokens where ``sample`` [N] is True and NaN elsewhere, unless they come free from logits formed
    anyway (the entropy; the reference fields when a ``need`` field is a reference one); ``ref_hidden`` then holds every token when a
    ``need`` field is a reference one, otherwise only the sampled tokens, in order. The LM head
    ``weight`` must be frozen (LoRA never adapts it); use :func:`target_logprob` otherwise.
    """
    need, need_sample = set(need) | {"logp"}, set(need_sample) - set(need)
    fields = {"logp", "entropy", "ref_logp", "ref_entropy", "kl"}
    if unknown := (need | need_sample) - fields:
        raise ValueError(f"unknown vocab stats {sorted(unknown)}; valid: {sorted(fields)}")
    if need_sample and sample is None:
        raise ValueError("need_sample needs a sample mask")
    ref_fields = {"ref_logp", "ref_entropy", "kl"}
    if ref_hidden is None and (need & ref_fields or need_sample & ref_fields and bool(sample.any())):
        raise ValueError(f"{sorted(need | need_sample)} need ref_hidden")
    if weight.requires_grad:
        raise ValueError("fused_scores needs a frozen LM head; use target_logprob for a trainable one")
    grad = hidden.requires_grad and torch.is_grad_enabled()
    out, grad_dir = _fused_pass(
        hidden.detach(),
        weight,
        targets,
        ref_hidden,
        sample,
        float(temperature),
        int(chunk_size),
        need,
        need_sample,
        grad,
    )
    value = out["logp"]
    logp = _SavedGradLogProb.apply(hidden, value, grad_dir) if grad else value
    return logp, VocabStats(**{k: v.clone() if k == "logp" else v for k, v in out.items()})
