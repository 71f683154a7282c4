"""The credit methods beyond the five signals: hand-computed cases, and peer oracles called from the
installed libraries on identical inputs (TRL for entropy_mask, verl for clip_cov and kl_cov)."""

from __future__ import annotations

import math
import types

import pytest
import torch

from arca_sweep import credit
from arca_sweep.credit import GroupContext, TokenCredit, TokenStats
from arca_sweep.learner.loss import aggregate_loss, credit_token_loss
from arca_sweep.plugins import PluginFailure
from tests.verl_peer import import_verl

NAN = float("nan")


def ctx_of(advantages, group_size=2, **kwargs) -> GroupContext:
    return GroupContext(torch.tensor(advantages, dtype=torch.float32), group_size, **kwargs)


def loss_of(tc, logp, logp_old, advantages, mask, clip=(0.2, 0.2), ref_logp=None, beta=0.0, w=None):
    """The learner's token-mean loss of one update with this credit."""
    w = torch.ones_like(logp) if w is None else w
    token_adv = advantages[:, None] * w + (0 if tc.bonus is None else tc.bonus)
    token_loss = credit_token_loss(logp, logp_old, token_adv, tc, *clip, ref_logp, beta)
    n = int(mask.sum())
    return aggregate_loss(
        token_loss, mask, "token-mean", total_tokens=n, total_seqs=mask.shape[0], norm_len=1
    )


# ------------------------------------------------------------------------------------------------
# Registry and interface
# ------------------------------------------------------------------------------------------------


def test_registry_holds_the_methods_and_keeps_the_five_signals():
    assert set(credit.SIGNALS) == {"uniform", "surprisal", "entropy", "divergence", "arca"}
    methods = {"entropy_mask", "clip_cov", "kl_cov", "archer", "entropy_advantage", "ktae"}
    assert methods <= set(credit.METHODS)
    assert credit.method_names() == sorted(set(credit.SIGNALS) | set(credit.METHODS))
    # shadow diagnostics: the five signals, then the methods that define token weights
    assert credit.shadow_names()[:5] == sorted(credit.SIGNALS) and "entropy_mask" in credit.shadow_names()
    assert "clip_cov" not in credit.shadow_names()
    assert credit.method_options("archer") == {
        "quantile": 0.8,
        "low_entropy_clip": 0.2,
        "high_entropy_clip": 0.5,
        "low_entropy_kl": 0.001,
        "high_entropy_kl": 0.0,
    }
    for name, method in credit.METHODS.items():
        assert method.fn.__doc__ and "arXiv" in method.fn.__doc__ and "Checked" in method.fn.__doc__, name


def test_register_method_checks_and_signals_become_methods():
    with pytest.raises(ValueError, match="already registered"):
        credit.register_method("arca")
    with pytest.raises(ValueError, match="unknown TokenStats fields"):
        credit.register_method("test_x", needs={"logits"})
    with pytest.raises(ValueError, match="row\\|batch"):
        credit.register_method("test_x", scope="group")
    stats = TokenStats(
        mask=torch.tensor([[True, True, False]]), logp=torch.log(torch.tensor([[0.5, 0.25, 1.0]]))
    )
    out = credit.method("surprisal").fn(stats, ctx_of([1.0], 1))
    torch.testing.assert_close(out.salience, torch.tensor([[math.log(2), 2 * math.log(2), 0.0]]))
    assert out.bonus is None and out.clip_low is None and out.grad_mask is None


def test_normalize_none_keeps_a_mask():
    s = torch.tensor([[0.0, 1.0, 1.0, 0.0, 7.0]])
    mask = torch.tensor([[True, True, True, True, False]])
    assert credit.normalize(s, mask, "none").tolist() == [[0.0, 1.0, 1.0, 0.0, 0.0]]
    assert credit.normalize(s * 3, mask, "none", clip_max=2.0).tolist() == [[0.0, 2.0, 2.0, 0.0, 0.0]]
    # the mean method rescales the same mask to mean 1
    assert credit.normalize(s, mask, "mean").tolist() == [[0.0, 2.0, 2.0, 0.0, 0.0]]


def test_token_credit_rows_and_placement():
    tc = TokenCredit(salience=torch.arange(6.0).view(2, 3), grad_mask=torch.tensor([[True, False, True]] * 2))
    sub = tc.rows(torch.tensor([1]), width=2)
    assert (
        sub.salience.tolist() == [[3.0, 4.0]]
        and sub.grad_mask.tolist() == [[True, False]]
        and sub.bonus is None
    )
    cat = TokenCredit.cat([sub, tc.rows(torch.tensor([0]))])
    assert cat.salience.tolist() == [[3.0, 4.0, 0.0], [0.0, 1.0, 2.0]]


def test_no_modifier_is_the_plain_ppo_loss():
    from arca_sweep.learner.loss import ppo_clip_token_loss

    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(3, 4, generator=g, dtype=torch.float64)
    old = logp + 0.3 * torch.randn(3, 4, generator=g, dtype=torch.float64)
    ref = logp + 0.3 * torch.randn(3, 4, generator=g, dtype=torch.float64)
    adv = torch.randn(3, 4, generator=g, dtype=torch.float64)
    tc = TokenCredit(salience=torch.ones(3, 4))
    assert torch.equal(
        credit_token_loss(logp, old, adv, tc, 0.2, 0.28, ref, 0.1),
        ppo_clip_token_loss(logp, old, adv, 0.2, 0.28, ref, 0.1),
    )


# ------------------------------------------------------------------------------------------------
# Hand-computed cases
# ------------------------------------------------------------------------------------------------


def test_entropy_mask_by_hand():
    # 8 valid entropies 0.1 .. 0.8 (one padded slot holding 9.0); rho = 0.25: the 0.75 quantile of
    # the 8 values is at position 0.75 * 7 = 5.25 -> 0.6 + 0.25 * 0.1 = 0.625: tokens 0.7 and 0.8 pass
    entropy = torch.tensor([[0.1, 0.8, 0.3, 9.0], [0.5, 0.2, 0.7, 0.4], [0.6, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    entropy[2, 1:] = torch.tensor([NAN, NAN, NAN])
    entropy = torch.where(mask, entropy, 9.0)
    out = credit.METHODS["entropy_mask"].fn(
        TokenStats(mask=mask, logp=entropy, entropy=entropy), ctx_of([1, -1, 0], 3)
    )
    assert out.salience.tolist() == [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    # rho = 1 keeps every response token; a tie at the threshold is kept (>=)
    everything = credit.high_entropy_mask(entropy, mask, 1.0)
    assert torch.equal(everything, mask)
    ties = credit.high_entropy_mask(
        torch.tensor([[1.0, 1.0, 1.0, 0.5]]), torch.ones(1, 4, dtype=torch.bool), 0.25
    )
    assert ties.tolist() == [[True, True, True, False]]
    assert not credit.high_entropy_mask(entropy, torch.zeros_like(mask), 0.2).any()


def test_kl_cov_by_hand():
    # A = [1, -1] per row, logp as given; means over the 4 valid tokens: mean A = 0, mean logp = -1
    mask = torch.tensor([[True, True, False], [True, True, False]])
    logp = torch.tensor([[-0.5, -1.5, 0.0], [-0.2, -1.8, 0.0]])
    stats = TokenStats(mask=mask, logp=logp)
    # cov = A * (logp + 1): row 0: 0.5, -0.5; row 1 (A=-1): -0.8, 0.8 -> the top one is (1, 1)
    out = credit.METHODS["kl_cov"].fn(stats, ctx_of([1.0, -1.0]), ratio=0.25, coef=2.0)
    assert out.ratio_penalty.tolist() == [[0, 0, 0], [0, 2.0, 0]]
    assert torch.isinf(out.clip_low).all() and torch.isinf(out.clip_high).all()
    # ratio 0.5: two tokens, (1, 1) at 0.8 and (0, 0) at 0.5
    two = credit.kl_cov_selection(torch.tensor([[1.0, 1, 0], [-1, -1, 0]]), logp, mask, 0.5)
    assert two.tolist() == [[True, False, False], [False, True, False]]
    # the loss: -A rho unclipped, plus coef * |log rho| on the chosen token
    logp_new = logp + torch.tensor([[0.5, 0.0, 0.0], [0.0, -0.3, 0.0]])
    adv = torch.tensor([1.0, -1.0])
    got = loss_of(out, logp_new, logp, adv, mask).item()
    want = (-math.exp(0.5) - 1 + 1 + math.exp(-0.3) + 2.0 * 0.3) / 4  # no clip at rho = e^0.5
    assert got == pytest.approx(want, rel=1e-6)


def test_clip_cov_by_hand():
    mask = torch.tensor([[True, True, True], [True, True, True]])
    logp = torch.tensor([[-1.0, -3.0, -2.0], [-3.0, -1.0, -2.0]])
    adv = torch.tensor([2.0, -2.0])
    # mean A = 0, mean logp = -2: cov = A * (logp + 2) = [2, -2, 0], [2, -2, 0]: two in (1, 5)
    selection = dict(ratio=0.2, lb=1.0, ub=5.0)  # k = max(int(0.2 * 6), 1) = 1
    picks = set()
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        out = credit.METHODS["clip_cov"].fn(
            TokenStats(mask=mask, logp=logp), ctx_of([2.0, -2.0], generator=g), **selection
        )
        dropped = (~out.grad_mask).nonzero().tolist()
        assert len(dropped) == 1 and dropped[0] in ([0, 0], [1, 0])
        picks.add(tuple(dropped[0]))
    assert picks == {(0, 0), (1, 0)}, "both candidates get drawn"
    # the dropped token has zero loss and zero gradient; the others the plain PPO-clip loss
    logp_new = (logp + 0.05).requires_grad_()  # rho inside the clip range
    loss = loss_of(out, logp_new, logp, adv, mask)
    loss.backward()
    assert (logp_new.grad[~out.grad_mask] == 0).all() and (logp_new.grad[out.grad_mask] != 0).all()
    # a band holding nothing drops nothing
    none = credit.clip_cov_selection(adv[:, None].expand(2, 3), logp, mask, ratio=0.5, lb=3.0, ub=5.0)
    assert not none.any()


def test_archer_by_hand():
    # per response, the 0.5 quantile of [0.1, 0.4, 0.2, 0.3] is 0.25: 0.4 and 0.3 are high-entropy
    entropy = torch.tensor([[0.1, 0.4, 0.2, 0.3], [1.0, 2.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    ref_logp = torch.full((2, 4), -1.0)
    stats = TokenStats(mask=mask, logp=torch.full((2, 4), -1.0), entropy=entropy, ref_logp=ref_logp)
    out = credit.METHODS["archer"].fn(stats, ctx_of([1.0, -1.0]), quantile=0.5)
    high = [[False, True, False, True], [False, True, False, False]]
    assert credit.response_entropy_split(entropy, mask, 0.5).tolist() == high
    assert out.clip_low.tolist() == out.clip_high.tolist()
    assert out.clip_low[0].tolist() == pytest.approx([0.2, 0.5, 0.2, 0.5])
    torch.testing.assert_close(out.ref_kl_coef, torch.tensor([[0.001, 0, 0.001, 0], [0.001, 0, 0, 0]]))
    # the loss: token 0 (low) clipped at 1.2 with A = 1, token 1 (high) at 1.5
    logp_old = torch.zeros(1, 2)
    logp_new = torch.log(torch.tensor([[1.4, 1.4]]))
    tc = out.rows(torch.tensor([0]), width=2)
    token = credit_token_loss(logp_new, logp_old, torch.ones(1, 2), tc, 0.2, 0.2, ref_logp[:1, :2], 0.0)
    d = -1.0 - math.log(1.4)  # k3 of the low token: e^d - d - 1 with d = ref - logp
    assert token.tolist()[0] == pytest.approx([-1.2 + 0.001 * (math.exp(d) - d - 1), -1.4], rel=1e-6)


def test_entropy_advantage_by_hand():
    entropy = torch.tensor([[0.5, 3.0, 0.0], [0.5, 3.0, 9.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    stats = TokenStats(mask=mask, logp=torch.zeros(2, 3), entropy=entropy)
    out = credit.METHODS["entropy_advantage"].fn(stats, ctx_of([1.0, -2.0]), alpha=0.4, kappa=2.0)
    # psi = min(0.4 H, |A| / 2): row 0 |A|/2 = 0.5: [0.2, 0.5]; row 1 |A|/2 = 1: [0.2, 1.0, 1.0]
    torch.testing.assert_close(out.bonus, torch.tensor([[0.2, 0.5, 0.0], [0.2, 1.0, 1.0]]))
    zero = credit.METHODS["entropy_advantage"].fn(stats, ctx_of([0.0, 0.0]))
    assert (zero.bonus == 0).all(), "a group with equal rewards gets no bonus"
    # a negative advantage stays negative: A + psi <= A + |A| / kappa < 0
    assert (-2.0 + out.bonus[1] < 0).all()
    with pytest.raises(ValueError, match="kappa > 1"):
        credit.METHODS["entropy_advantage"].fn(stats, ctx_of([1.0, 1.0]), kappa=1.0)


def test_custom_method_contract():
    def positions(stats, ctx, *, power=1.0):
        return stats.mask.float().cumsum(-1) ** power

    method = credit.custom_method(positions, needs={"logp"})
    stats = TokenStats(mask=torch.tensor([[True, True, False]]), logp=torch.zeros(1, 3))
    out = method.fn(stats, ctx_of([1.0], 1), power=2.0)
    assert out.salience.tolist() == [[1.0, 4.0, 0.0]]  # 0 off the response
    assert method.scope == "batch" and method.defines_weights and method.needs == {"logp"}
    assert credit.custom_method(positions).needs == credit.STAT_FIELDS - {"hidden", "ref_hidden"}
    with pytest.raises(PluginFailure, match="must be a \\[B, T\\]"):
        credit.custom_method(lambda stats, ctx: torch.ones(2)).fn(stats, ctx_of([1.0], 1))
    with pytest.raises(ValueError, match="unknown TokenStats"):
        credit.custom_method(positions, needs={"logits"})


# ------------------------------------------------------------------------------------------------
# Peer oracles: TRL and verl on identical inputs
# ------------------------------------------------------------------------------------------------


def random_batch(seed: int, b: int = 6, t: int = 9):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, t + 1, (b,), generator=g)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    entropy = torch.rand(b, t, generator=g) * 3
    logp = -torch.rand(b, t, generator=g) * 4
    adv = torch.randn(b, generator=g)
    return mask, entropy, logp, adv


@pytest.fixture(scope="module")
def trl_mask_fn():
    pytest.importorskip("trl")
    from accelerate import Accelerator
    from trl.trainer.grpo_trainer import GRPOTrainer

    # get_high_entropy_mask only uses self.accelerator (pad/gather across processes: identity on one)
    trainer = types.SimpleNamespace(accelerator=Accelerator(cpu=True))
    return lambda entropies, mask, threshold: GRPOTrainer.get_high_entropy_mask(
        trainer, entropies, mask, threshold
    )


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("rho", [0.2, 0.5, 1.0])
def test_entropy_mask_equals_trl(trl_mask_fn, seed, rho):
    mask, entropy, logp, adv = random_batch(seed)
    ours = credit.METHODS["entropy_mask"].fn(
        TokenStats(mask=mask, logp=logp, entropy=entropy), ctx_of(adv.tolist(), 3), rho=rho
    )
    # TRL's call: get_high_entropy_mask(entropies, mask, 1 - top_entropy_quantile)
    theirs = trl_mask_fn(entropy, mask.long(), 1 - rho)
    assert torch.equal(ours.salience.bool(), theirs)
    # and the loss TRL forms from it (per_token_loss * entropy_mask, token-mean over all tokens)
    logp_new = logp + 0.1
    w = credit.normalize(ours.salience, mask, "none")
    got = loss_of(ours, logp_new, logp, adv, mask, w=w)
    ratio = torch.exp(logp_new - logp)
    per_token = -torch.minimum(ratio * adv[:, None], ratio.clamp(0.8, 1.2) * adv[:, None]) * theirs
    want = (per_token * mask).sum() / mask.sum()
    assert got.item() == pytest.approx(want.item(), abs=1e-6)


@pytest.fixture(scope="module")
def verl():
    return import_verl("verl.trainer.ppo.core_algos")


def verl_config(**policy_loss):
    return types.SimpleNamespace(
        clip_ratio=0.2,
        clip_ratio_low=0.2,
        clip_ratio_high=0.28,
        global_batch_info={},
        policy_loss=types.SimpleNamespace(
            **{
                "clip_cov_ratio": None,
                "clip_cov_lb": None,
                "clip_cov_ub": None,
                "kl_cov_ratio": None,
                "ppo_kl_coef": None,
                **policy_loss,
            }
        ),
    )


def verl_inputs(seed: int, shift: float):
    """(mask, logp_old, logp with grad, per-token advantages): advantages large enough that some token
    covariances land in Clip-Cov's (1, 5) band."""
    mask, _, logp_old, adv = random_batch(seed, b=8, t=12)
    g = torch.Generator().manual_seed(100 + seed)
    logp_old, adv = logp_old.double(), (adv * 2).double()
    logp = (logp_old + shift * torch.randn(logp_old.shape, generator=g, dtype=torch.float64)).requires_grad_()
    return mask, logp_old, logp, adv


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("shift", [0.0, 0.3])
def test_kl_cov_equals_verl(verl, seed, shift):
    mask, logp_old, logp, adv = verl_inputs(seed, shift)
    token_adv = adv[:, None].expand(mask.shape).contiguous()
    options = dict(ratio=0.05, coef=1.5)
    theirs, _ = verl.compute_policy_loss_kl_cov(
        logp_old,
        logp,
        token_adv,
        mask.double(),
        "token-mean",
        verl_config(kl_cov_ratio=0.05, ppo_kl_coef=1.5),
    )
    (their_grad,) = torch.autograd.grad(theirs, logp)
    # verl selects by the current log-probs: ours is handed the same ones as TokenStats.logp
    stats = TokenStats(mask=mask, logp=logp.detach())
    tc = credit.METHODS["kl_cov"].fn(stats, GroupContext(adv, 2), **options)
    assert int(tc.ratio_penalty.gt(0).sum()) == max(1, int(mask.sum() * 0.05))
    ours = loss_of(tc, logp, logp_old, adv, mask)
    (our_grad,) = torch.autograd.grad(ours, logp)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)
    torch.testing.assert_close(our_grad, their_grad, atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("shift", [0.0, 0.3])
def test_clip_cov_equals_verl(verl, seed, shift):
    mask, logp_old, logp, adv = verl_inputs(seed, shift)
    token_adv = adv[:, None].expand(mask.shape).contiguous()
    torch.manual_seed(seed)  # verl draws with the global generator: ours gets one in the same state
    theirs, metrics = verl.compute_policy_loss_clip_cov(
        logp_old, logp, token_adv, mask.double(), "token-mean", verl_config(clip_cov_ratio=0.05)
    )
    (their_grad,) = torch.autograd.grad(theirs, logp)
    # verl excludes tokens the PPO clip already clips (none at shift 0, the first update): the pure
    # selection is handed the same exclusion
    ratio = torch.exp(logp.detach() - logp_old)
    clipped = (-token_adv * ratio.clamp(0.8, 1.28) > -token_adv * ratio) & mask
    chosen = credit.clip_cov_selection(
        token_adv,
        logp.detach(),
        mask,
        ratio=0.05,
        lb=1.0,
        ub=5.0,
        generator=torch.Generator().manual_seed(seed),
        excluded=clipped,
    )
    assert chosen.sum().item() == pytest.approx(metrics["actor/pg_clipfrac"] * mask.sum().item())
    assert chosen.any(), "the band must hold candidates for the comparison to mean something"
    tc = TokenCredit(salience=torch.ones_like(logp_old), grad_mask=~chosen)
    ours = loss_of(tc, logp, logp_old, adv, mask, clip=(0.2, 0.28))
    (our_grad,) = torch.autograd.grad(ours, logp)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)
    torch.testing.assert_close(our_grad, their_grad, atol=1e-6, rtol=0)
    if shift == 0.0:  # at the first update the registered method is the same selection
        stats = TokenStats(mask=mask, logp=logp_old)
        g = torch.Generator().manual_seed(seed)
        method = credit.METHODS["clip_cov"].fn(stats, GroupContext(adv, 2, generator=g), ratio=0.05)
        assert torch.equal(~method.grad_mask, chosen)


# ------------------------------------------------------------------------------------------------
# KTAE: token statistics over a group's rollouts
# ------------------------------------------------------------------------------------------------


def ref_key_token_scores(
    rollouts: list[list[int]], correct: list[bool], tf: bool = True
) -> list[list[float]]:
    """One group, plain Python: the formula of arca_sweep.credit.key_token_scores term by term."""
    n_c, n_w = sum(correct), len(correct) - sum(correct)
    if n_c == 0 or n_w == 0:
        return [[0.0] * len(r) for r in rollouts]

    def hyper(k, row, col, n):
        return math.comb(col, k) * math.comb(n - col, row - k) / math.comb(n, row)

    def h2(x, y):
        return sum(-p * math.log2(p) for p in (x / (x + y), y / (x + y)) if p > 0) if x + y else 0.0

    tokens_c = sum(len(r) for r, ok in zip(rollouts, correct, strict=True) if ok)
    tokens_w = sum(len(r) for r, ok in zip(rollouts, correct, strict=True) if not ok)
    average = (tokens_c + tokens_w) / 2
    score = {}
    for v in {t for r in rollouts for t in r}:
        a = sum(v in r for r, ok in zip(rollouts, correct, strict=True) if ok)
        b = sum(v in r for r, ok in zip(rollouts, correct, strict=True) if not ok)
        c, d, n = n_c - a, n_w - b, n_c + n_w
        row, col = a + b, a + c
        support = range(max(0, row + col - n), min(row, col) + 1)
        p_obs = hyper(a, row, col, n)
        p = min(
            1.0, sum(hyper(k, row, col, n) for k in support if hyper(k, row, col, n) <= p_obs * (1 + 1e-7))
        )
        fisher = math.exp(-2 * p) if p < 1 - 1e-6 else 0.0  # 1/6 + 4/6 + 1/6 rounds below 1
        ig = h2(a + c, b + d) - ((a + b) / n * h2(a, b) + (c + d) / n * h2(c, d))
        h = math.asin(math.sqrt(a / n_c)) - math.asin(math.sqrt(b / n_w))
        if tf:
            f_c = sum(r.count(v) for r, ok in zip(rollouts, correct, strict=True) if ok) / tokens_c
            f_w = sum(r.count(v) for r, ok in zip(rollouts, correct, strict=True) if not ok) / tokens_w
            tf_c = f_c * 3 / (f_c + 2 * (1 - 0.5 + 0.5 * tokens_c / average))
            tf_w = f_w * 3 / (f_w + 2 * (1 - 0.5 + 0.5 * tokens_w / average))
            h += tf_c / (tf_w + 1e-5) - tf_w / (tf_c + 1e-5)
        key = (fisher + ig) * h / 2
        score[v] = math.tanh(key / 2)  # = 2 sigmoid(key) - 1, without overflow
    return [[score[t] for t in r] for r in rollouts]


def test_ktae_by_hand():
    # G = 2: rollout 0 (correct) says [5, 6], rollout 1 (wrong) says [5, 7]. Token 5 is in both: Cohen's
    # h 0, equal term frequencies: score 0. Token 6: IG 1 bit, Fisher p = 1 (F = 0), h = pi/2 plus a
    # huge tf contrast: score ~ +1; token 7 the mirror image: ~ -1.
    ids = torch.tensor([[5, 6, 0], [5, 7, 0]])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    stats = TokenStats(mask=mask, logp=torch.zeros(2, 3))
    ctx = GroupContext(torch.tensor([0.7, -0.7]), 2, rewards=torch.tensor([1.0, 0.0]), response_ids=ids)
    out = credit.METHODS["ktae"].fn(stats, ctx)
    torch.testing.assert_close(out.bonus, torch.tensor([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]]))
    # without the tf term: (F + IG) * h / 2 = (0 + 1) * (pi / 2) / 2
    plain = credit.key_token_scores(ids, mask, torch.tensor([True, False]), tf=False)
    assert plain[0, 1].item() == pytest.approx(2 / (1 + math.exp(-math.pi / 4)) - 1, rel=1e-12)
    # a group that is all correct (or all wrong) carries no key tokens
    same = GroupContext(torch.zeros(2), 2, rewards=torch.ones(2), response_ids=ids)
    assert (credit.METHODS["ktae"].fn(stats, same).bonus == 0).all()


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("tf", [True, False])
def test_ktae_matches_the_loop_reference(seed, tf):
    g = torch.Generator().manual_seed(seed)
    group, width = 6, 10
    ids = torch.randint(0, 8, (2 * group, width), generator=g)  # a small vocabulary: tokens repeat
    lengths = torch.randint(1, width + 1, (2 * group,), generator=g)
    mask = torch.arange(width)[None, :] < lengths[:, None]
    rewards = (torch.rand(2 * group, generator=g) < 0.5).float()
    rewards[0], rewards[1] = 1.0, 0.0  # the first group is mixed
    ctx = GroupContext(torch.zeros(2 * group), group, rewards=rewards, response_ids=ids)
    stats = TokenStats(mask=mask, logp=torch.zeros(2 * group, width))
    got = credit.METHODS["ktae"].fn(stats, ctx, tf=tf).bonus
    for start in (0, group):
        rows = range(start, start + group)
        rollouts = [ids[i][mask[i]].tolist() for i in rows]
        want = ref_key_token_scores(rollouts, [bool(rewards[i] > 0) for i in rows], tf=tf)
        for i, w in zip(rows, want, strict=True):
            assert got[i][mask[i]].tolist() == pytest.approx(w, abs=1e-6)
            assert (got[i][~mask[i]] == 0).all()
    assert got[:group].abs().max() > 0.01
