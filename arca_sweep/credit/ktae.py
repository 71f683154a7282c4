"""KTAE (Sun et al. 2025): key-token advantage from a group's token statistics (Fisher's exact test,
information gain, Cohen's h, BM25 term frequencies), registered as the credit method ``ktae``."""

from __future__ import annotations

import torch

from arca_sweep.credit.registry import GroupContext, TokenCredit, TokenStats, finish, ones, register_method


def _fisher_two_sided(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Fisher's exact test of the 2x2 tables ``[[a, b], [c, d]]`` (float64 counts, any shape): the sum
    of the hypergeometric probabilities ``P(k) <= P(a)`` over the support of ``k`` (rows a + b, columns
    a + c fixed), with scipy's relative tolerance 1e-7 on the comparison."""
    row, col, n = a + b, a + c, a + b + c + d
    k = torch.arange(int(n.max().item()) + 1, dtype=torch.float64, device=a.device)
    k = k.view(*([1] * a.dim()), -1)

    def log_comb(m, j):
        return torch.lgamma(m + 1) - torch.lgamma(j + 1) - torch.lgamma(m - j + 1)

    row_, col_, n_ = row[..., None], col[..., None], n[..., None]
    support = (k >= torch.clamp(row_ + col_ - n_, min=0)) & (k <= torch.minimum(row_, col_))
    safe = torch.where(support, k, 0.0)
    log_p = log_comb(col_, safe) + log_comb(n_ - col_, row_ - safe) - log_comb(n_, row_)
    p = torch.where(support, torch.exp(log_p), 0.0)
    p_obs = torch.exp(log_comb(col, a) + log_comb(n - col, row - a) - log_comb(n, row))
    return torch.where(support & (p <= p_obs[..., None] * (1 + 1e-7)), p, 0.0).sum(-1).clamp(max=1.0)


def _binary_entropy_bits(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """H of the two-outcome distribution (x, y) / (x + y) in bits; 0 when x + y = 0."""
    total = x + y

    def h(p):
        return torch.where(p > 0, -p * torch.log2(torch.where(p > 0, p, 1.0)), 0.0)

    safe = torch.where(total > 0, total, 1.0)
    return torch.where(total > 0, h(x / safe) + h(y / safe), 0.0)


def key_token_scores(
    response_ids: torch.Tensor,
    mask: torch.Tensor,
    correct: torch.Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    tf: bool = True,
    scale: float = 1.0,
    k1: float = 2.0,
    b: float = 0.5,
) -> torch.Tensor:
    """KTAE's score of each response token of one group of G rollouts, ``[G, T]`` float64 (0 off the
    response, and everywhere when the group is all correct or all wrong).

    Per token id v, the table over rollouts: a (b) = correct (wrong) rollouts containing v, c = n_c - a,
    d = n_w - b. With p = Fisher's exact two-sided p-value, ``F = exp(-2 p)`` (0 when p = 1 within
    1e-6: the sum of the probabilities may round below 1), IG the
    information gain in bits of "contains v" about correctness, Cohen's
    ``h = asin sqrt(a / n_c) - asin sqrt(b / n_w)`` and, with ``tf``, the BM25 term frequencies
    ``tf_c = f_c (k1 + 1) / (f_c + k1 (1 - b + b N_c / N_avg))`` (f_c: v's share of the N_c response
    tokens of the correct rollouts; the same for wrong) adding ``tf_c / (tf_w + 1e-5) - tf_w / (tf_c +
    1e-5)`` to h: ``score_v = scale * (2 sigmoid((alpha F + beta IG) h / (alpha + beta)) - 1)``.
    """
    mask = mask.bool()
    correct = correct.bool()
    out = torch.zeros(mask.shape, dtype=torch.float64, device=mask.device)
    n_c, n_w = int(correct.sum()), int((~correct).sum())
    if n_c == 0 or n_w == 0 or not mask.any():
        return out
    values, inverse = torch.unique(response_ids[mask], return_inverse=True)
    rows = torch.arange(mask.shape[0], device=mask.device)[:, None].expand(mask.shape)[mask]
    counts = torch.zeros(mask.shape[0], len(values), dtype=torch.float64, device=mask.device)
    counts.index_put_((rows, inverse), torch.ones_like(inverse, dtype=torch.float64), accumulate=True)
    present = (counts > 0).double()
    a, bb = present[correct].sum(0), present[~correct].sum(0)
    c, d = n_c - a, n_w - bb
    p = _fisher_two_sided(a, bb, c, d)
    fisher = torch.where(p < 1.0 - 1e-6, torch.exp(-2 * p), 0.0)  # p = 1 up to round-off: no evidence
    n = float(n_c + n_w)
    info_gain = _binary_entropy_bits(a + c, bb + d) - (
        (a + bb) / n * _binary_entropy_bits(a, bb) + (c + d) / n * _binary_entropy_bits(c, d)
    )
    h = torch.asin(torch.sqrt(a / n_c)) - torch.asin(torch.sqrt(bb / n_w))
    if tf:
        tokens_c, tokens_w = mask[correct].sum().double(), mask[~correct].sum().double()
        average = (tokens_c + tokens_w) / 2
        f_c, f_w = counts[correct].sum(0) / tokens_c, counts[~correct].sum(0) / tokens_w
        tf_c = f_c * (k1 + 1) / (f_c + k1 * (1 - b + b * tokens_c / average))
        tf_w = f_w * (k1 + 1) / (f_w + k1 * (1 - b + b * tokens_w / average))
        h = h + tf_c / (tf_w + 1e-5) - tf_w / (tf_c + 1e-5)
    score = scale * (2 * torch.sigmoid((alpha * fisher + beta * info_gain) * h / (alpha + beta)) - 1)
    out[mask] = score[inverse]
    return out


@register_method("ktae", scope="batch")
def ktae_method(
    stats: TokenStats,
    ctx: GroupContext,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    tf: bool = True,
    scale: float = 1.0,
) -> TokenCredit:
    """KTAE (Sun et al. 2025, "KTAE: A Model-Free Algorithm to Key-Tokens Advantage Estimation in
    Mathematical Reasoning", arXiv 2505.16826): ``A_(i,t) = A_i + score(y_t)``, the token's key-ness
    from its group's rollouts and rewards alone (:func:`key_token_scores`; correct = reward > 0). No
    model quantity is read: it needs only ``ctx.response_ids`` and ``ctx.rewards``.

    Checked against the authors' code (xiaolizh1/KTAE ``verl/workers/actor/compute_key_tokens.py`` and
    its advantage estimator: alpha = beta_ig = gamma_tf = top = 1, BM25 k1 = 2, b = 0.5, the score
    added to the GRPO advantage). Differences: the Fisher test runs in float64 with scipy's tolerance
    and reads p = 1 within 1e-6 (upstream float32, exact ``<=`` and ``!= 1.0``, which round-off can
    flip), and no token id is special (upstream zeroes Qwen's
    ``<|endoftext|>``, id 151643).
    """
    if ctx.response_ids is None or ctx.rewards is None:
        raise ValueError("ktae needs the group context's response_ids and rewards")
    mask = stats.mask.bool()
    bonus = torch.zeros(mask.shape, dtype=torch.float64, device=mask.device)
    ids = ctx.response_ids.to(mask.device)[:, : mask.shape[1]]
    rewards = ctx.rewards.to(mask.device)
    for start in range(0, mask.shape[0], ctx.group_size):
        g = slice(start, start + ctx.group_size)
        bonus[g] = key_token_scores(
            ids[g], mask[g], rewards[g] > 0, alpha=alpha, beta=beta, tf=tf, scale=scale
        )
    return TokenCredit(salience=ones(stats), bonus=finish(bonus.float(), mask))
