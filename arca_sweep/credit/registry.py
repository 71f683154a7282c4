"""The credit contract and its registries: :class:`TokenStats` in; a signal returns a salience, a method
a :class:`TokenCredit` and sees a :class:`GroupContext`; :func:`register_signal` and
:func:`register_method` add them, with the TokenStats fields they read (``needs``), so the scoring pass
computes only what is used. Also the lookups the config, the learner and the plug-in checks use, and the
tensor helpers every signal and method shares.

Every per-token tensor is ``[B, T]`` (one row per trajectory) and index ``t`` is response token ``y_t``,
computed at the forward position that predicts it. ``mask`` is True on response tokens (EOS included);
a row's T is its number of valid tokens. Values at masked positions are ignored on input and are 0 on
output.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, replace

import torch

# ------------------------------------------------------------------------------------------------
# Token quantities
# ------------------------------------------------------------------------------------------------


@dataclass
class TokenStats:
    """Detached per-response-token quantities from the policy pass and the adapter-disabled pass.

    Shapes ``[B, T]`` unless noted; anything may sit at masked positions.
    """

    mask: torch.Tensor  # [B, T] bool, True on response tokens (EOS included)
    logp: torch.Tensor  # log pi_theta(y_t | context)
    entropy: torch.Tensor | None = None  # H(pi_theta(.)) at t, full vocabulary
    ref_logp: torch.Tensor | None = None  # log pi_ref(y_t | context)
    ref_entropy: torch.Tensor | None = None  # H(pi_ref(.)) at t
    kl: torch.Tensor | None = None  # exact KL(pi_theta || pi_ref) at t
    hidden: torch.Tensor | None = None  # [B, T, D] policy hidden state at credit.layer
    ref_hidden: torch.Tensor | None = None  # [B, T, D] same with the adapter disabled


STAT_FIELDS = frozenset(f.name for f in fields(TokenStats)) - {"mask"}

# ------------------------------------------------------------------------------------------------
# A method's output and what it sees
# ------------------------------------------------------------------------------------------------
#
# A method is one registered function ``fn(stats, ctx, **options) -> TokenCredit``. The five signals
# are methods too (``TokenCredit(salience=s)``, normalized by ``credit.normalize``). The learner
# computes a method once per rollout batch, from the scoring pass (SPEC "Multi-update PPO"), then
# uses it in every update:
#
#     A_(i,t) = A_i * w_(i,t) + bonus_(i,t),   w = normalize(salience)
#     loss_t  = grad_mask_t * [ PPO-clip(rho_t, A_(i,t); eps_low_t, eps_high_t)
#                               + ref_kl_coef_t * k3(pi_ref, pi_theta)_t + ratio_penalty_t * |log rho_t| ]
#
# with loss.clip_low/high and loss.beta where a modifier is None.


@dataclass
class GroupContext:
    """What a method may see beyond one trajectory: rows aligned with :class:`TokenStats` (prompt-major,
    rows ``g*G .. g*G+G-1`` share a prompt)."""

    advantages: torch.Tensor  # [B] sequence advantages A_i
    group_size: int  # G
    rewards: torch.Tensor | None = None  # [B]
    response_ids: torch.Tensor | None = None  # [B, T] the sampled tokens
    generator: torch.Generator | None = None  # CPU generator seeded by (run seed, step): a method's draws

    def rows(self, rows: torch.Tensor) -> GroupContext:
        pick = lambda x: None if x is None else x[rows.to(x.device)]  # noqa: E731
        return GroupContext(
            pick(self.advantages),
            self.group_size,
            pick(self.rewards),
            pick(self.response_ids),
            self.generator,
        )


@dataclass
class TokenCredit:
    """A method's per-token output, every tensor ``[B, T]``; None leaves the loss's default."""

    salience: torch.Tensor  # >= 0, normalized by credit.normalize into the weights w
    bonus: torch.Tensor | None = None  # added to A_i * w_t (detached)
    clip_low: torch.Tensor | None = None  # per-token eps_low (inf: no lower clip)
    clip_high: torch.Tensor | None = None  # per-token eps_high (inf: no upper clip)
    ref_kl_coef: torch.Tensor | None = None  # per-token beta of the k3 penalty to pi_ref, replacing loss.beta
    ratio_penalty: torch.Tensor | None = None  # coefficient of |log rho_t| added to the token loss
    grad_mask: torch.Tensor | None = None  # bool; False: the token's loss (and gradient) is zeroed

    def rows(self, rows: torch.Tensor, width: int | None = None) -> TokenCredit:
        """These rows (and the first ``width`` positions)."""
        return TokenCredit(
            **{
                f.name: None if (x := getattr(self, f.name)) is None else x[rows.to(x.device)][:, :width]
                for f in fields(self)
            }
        )

    @staticmethod
    def cat(parts: list[TokenCredit]) -> TokenCredit:
        """Row-wise concatenation, right-padded with 0 (False) to the widest part."""
        out = {}
        for f in fields(TokenCredit):
            values = [getattr(p, f.name) for p in parts]
            out[f.name] = None if values[0] is None else pad_cat(values)
        return TokenCredit(**out)


def pad_cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat`` over rows of ``[b_i, T_i, ...]`` tensors, right-padded with zeros to the widest T."""
    width = max(p.shape[1] for p in parts)
    return torch.cat(
        [torch.nn.functional.pad(p, (0, 0) * (p.dim() - 2) + (0, width - p.shape[1])) for p in parts]
    )


# ------------------------------------------------------------------------------------------------
# Registries
# ------------------------------------------------------------------------------------------------

SignalFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Signal:
    """A registered salience signal.

    ``fn(stats, *, mode="clamp", estimator="exact") -> [B, T]`` float32 (float64 in, float64 out), >= 0, 0 at masked positions,
    detached. ``needs`` are the :class:`TokenStats` fields it reads; ``needs_by_option`` entries
    ``(option, value, needs)`` replace them when that option has that value.
    """

    name: str
    fn: SignalFn
    needs: frozenset[str]
    needs_by_option: tuple[tuple[str, str, frozenset[str]], ...] = ()

    def needs_for(self, options: Mapping[str, object]) -> frozenset[str]:
        """The fields read under ``options`` (missing options take the function's defaults)."""
        for option, value, needs in self.needs_by_option:
            if options.get(option) == value:
                return needs
        return self.needs


SIGNALS: dict[str, Signal] = {}


def register_signal(
    name: str,
    needs: Iterable[str] = frozenset(),
    needs_by_option: Iterable[tuple[str, str, Iterable[str]]] = (),
) -> Callable[[SignalFn], SignalFn]:
    """Decorator adding ``fn`` to :data:`SIGNALS` under ``name``; ``needs`` name TokenStats fields."""
    needs = frozenset(needs)
    by_option = tuple((option, value, frozenset(n)) for option, value, n in needs_by_option)
    unknown = needs.union(*(n for _, _, n in by_option)) - STAT_FIELDS
    if unknown:
        raise ValueError(f"signal {name!r} needs unknown TokenStats fields {sorted(unknown)}")
    if name in SIGNALS:
        raise ValueError(f"signal {name!r} is already registered")

    def add(fn: SignalFn) -> SignalFn:
        SIGNALS[name] = Signal(name, fn, needs, by_option)
        return fn

    return add


MethodFn = Callable[..., TokenCredit]


@dataclass(frozen=True)
class Method:
    """A registered credit method.

    ``scope``: ``row`` when each trajectory's output depends on its own tokens only (the learner may
    compute it per micro-batch), ``batch`` when it needs the whole rollout batch (a batch quantile, a
    batch covariance). ``defines_weights``: its salience is a token weighting worth the shadow
    diagnostics; ``normalize``: the normalization its shadow weights use (None: ``credit.normalize``).
    """

    name: str
    fn: MethodFn
    needs: frozenset[str]
    scope: str = "row"
    defines_weights: bool = False
    normalize: str | None = None

    def bind(self, options: Mapping[str, object]) -> Method:
        """This method with ``options`` bound: ``fn(stats, ctx)`` calls ``fn(stats, ctx, **options)``."""
        return replace(self, fn=functools.partial(self.fn, **options))


METHODS: dict[str, Method] = {}


def register_method(
    name: str,
    needs: Iterable[str] = frozenset(),
    *,
    scope: str = "row",
    defines_weights: bool = False,
    normalize: str | None = None,
) -> Callable[[MethodFn], MethodFn]:
    """Decorator adding ``fn(stats, ctx, **options) -> TokenCredit`` to :data:`METHODS` under ``name``."""
    needs = frozenset(needs)
    if unknown := needs - STAT_FIELDS:
        raise ValueError(f"method {name!r} needs unknown TokenStats fields {sorted(unknown)}")
    if name in METHODS or name in SIGNALS:
        raise ValueError(f"credit method {name!r} is already registered")
    check_choice("scope", scope, ("row", "batch"))

    def add(fn: MethodFn) -> MethodFn:
        METHODS[name] = Method(name, fn, needs, scope, defines_weights, normalize)
        return fn

    return add


def method_names() -> list[str]:
    """Every credit name ``credit.name`` accepts (signals and methods), sorted."""
    return sorted(set(SIGNALS) | set(METHODS))


def shadow_names() -> list[str]:
    """The names the shadow diagnostics weigh: the five signals, then methods that define weights."""
    return sorted(SIGNALS) + sorted(n for n, m in METHODS.items() if m.defines_weights)


def method_options(name: str) -> dict[str, object]:
    """The keyword options of method ``name`` with their defaults ({} for a signal)."""
    if name not in METHODS:
        return {}
    params = inspect.signature(METHODS[name].fn).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _lookup(name: str) -> Signal:
    if name not in SIGNALS:
        raise ValueError(f"unknown credit signal {name!r}; choose one of: {'|'.join(method_names())}")
    return SIGNALS[name]


def needed_stats(names: Iterable[str], options: Mapping[str, object] | None = None) -> set[str]:
    """Union of the TokenStats fields the named signals or methods read under ``options`` (mode,
    estimator)."""
    options = options or {}
    return set().union(*(method(n, signal_options=options).needs for n in names))


def salience(name: str, stats: TokenStats, **options) -> torch.Tensor:
    """Raw salience ``s [B, T]`` of the registered signal ``name``."""
    return _lookup(name).fn(stats, **options)


def method(
    name: str, options: Mapping[str, object] | None = None, signal_options: Mapping[str, object] | None = None
) -> Method:
    """Credit ``name`` as a method called ``fn(stats, ctx)``: its options bound, ``needs`` the fields it
    reads under them. A registered method takes ``options`` (its keyword options: ``credit.options``);
    a signal becomes a row-scope method whose salience is the signal (with weights worth the shadow
    diagnostics) and takes ``signal_options`` (``mode``, ``estimator``: ``credit.mode``/``estimator``)."""
    if name in METHODS:
        return METHODS[name].bind(options or {})
    signal = _lookup(name)
    signal_options = dict(signal_options or {})

    def from_signal(stats: TokenStats, ctx: GroupContext) -> TokenCredit:
        return TokenCredit(salience=signal.fn(stats, **signal_options))

    return Method(name, from_signal, signal.needs_for(signal_options), "row", True, None)


def custom_method(fn: Callable, needs: Iterable[str] | None = None, timeout_s: float | None = None) -> Method:
    """A user's method (``credit=custom credit.target=pkg.mod:fn``): ``fn(stats, ctx, **options)``
    returns a salience ``[B, T]`` or a :class:`TokenCredit`. Batch scope (it sees the whole batch) and
    in the shadow diagnostics. ``needs``: ``fn.needs`` if set, else every ``[B, T]`` field.

    The contract is checked at every call (:func:`check_plugin_credit`): ``fn`` gets copies of the stats
    and the context (changing them changes nothing), runs within ``timeout_s`` seconds (``credit.timeout_s``),
    and must not raise or exit; anything else stops the run naming ``credit.target``."""
    from arca_sweep.plugins import call_plugin

    if needs is None:
        needs = getattr(fn, "needs", STAT_FIELDS - {"hidden", "ref_hidden"})
    needs = frozenset(needs)
    if unknown := needs - STAT_FIELDS:
        raise ValueError(f"credit.target's needs name unknown TokenStats fields {sorted(unknown)}")

    def wrapped(stats: TokenStats, ctx: GroupContext, **options) -> TokenCredit:
        out = call_plugin(
            fn,
            (_copied(stats), _copied(ctx)),
            options,
            key="credit.target",
            where=f"on a batch of {stats.mask.shape[0]} responses",
            timeout_s=timeout_s,
            limit_key="credit.timeout_s",
        )
        if isinstance(out, torch.Tensor):
            out = TokenCredit(salience=out)
        check_plugin_credit(out, stats.mask, fn)
        out.salience = finish(out.salience, stats.mask)
        return out

    return Method("custom", wrapped, needs, "batch", True, None)


def _copied(x):
    """A copy of a TokenStats or GroupContext whose tensors and generator are clones: a method that changes
    them, or reseeds or draws from the generator, changes nothing the run uses afterwards."""
    out = {f.name: v.clone() for f in fields(x) if isinstance(v := getattr(x, f.name), torch.Tensor)}
    generator = getattr(x, "generator", None)
    if isinstance(generator, torch.Generator):
        out["generator"] = torch.Generator(generator.device).set_state(generator.get_state())
    return replace(x, **out)


def check_plugin_credit(out, mask: torch.Tensor, fn: Callable) -> None:
    """A custom method's output: a TokenCredit (or tensor) whose salience is a ``[B, T]`` floating tensor,
    finite and non-negative on response tokens, and whose other fields are ``[B, T]`` and finite there;
    else a :class:`arca_sweep.plugins.PluginFailure` naming the function and the bad values."""
    from arca_sweep.plugins import PluginFailure, describe

    name = f"credit.target {describe(fn)}"
    shape = tuple(mask.shape)
    if not isinstance(out, TokenCredit) or not isinstance(out.salience, torch.Tensor):
        got = type(out.salience if isinstance(out, TokenCredit) else out).__name__
        raise PluginFailure(
            f"{name} must return a [B, T] = {shape} salience tensor or a TokenCredit; got {got}"
        )
    for field_name in ("salience", "bonus", "clip_low", "clip_high", "ref_kl_coef", "ratio_penalty"):
        value = getattr(out, field_name)
        if value is None:
            continue
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise PluginFailure(f"{name}: its {field_name} must be a [B, T] = {shape} tensor; got {got}")
        if not value.is_floating_point():
            raise PluginFailure(
                f"{name}: its {field_name} is a {value.dtype} tensor; it must be floating point (a 0/1 mask "
                "as 0.0/1.0: .float())"
            )
        on = value.detach()[mask.to(value.device).bool()]
        bad = on[~torch.isfinite(on)]
        if bad.numel():
            raise PluginFailure(
                f"{name}: its {field_name} has {bad.numel()} non-finite values on response tokens (e.g. "
                f"{bad[:3].tolist()}); every value on a response token must be finite"
            )
        if field_name != "bonus" and (neg := on[on < 0]).numel():
            raise PluginFailure(
                f"{name}: its {field_name} has {neg.numel()} negative values on response tokens (min "
                f"{neg.min().item():.4g}); it must be >= 0 (a salience is normalized into weights that scale "
                "the advantage, so a negative one would flip its sign)"
            )


# ------------------------------------------------------------------------------------------------
# Tensor helpers of the signals and methods
# ------------------------------------------------------------------------------------------------


def as_float(x: torch.Tensor) -> torch.Tensor:
    """At least float32, keeping float64 (so float64 reference runs stay exact)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def stat_field(stats: TokenStats, name: str) -> torch.Tensor:
    """``stats.<name>`` detached; an error naming the field when it was not computed."""
    value = getattr(stats, name)
    if value is None:
        raise ValueError(f"this credit signal needs TokenStats.{name}, which was not computed")
    return value.detach()


def finish(s: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """At least float32, 0 at masked positions (whatever sat there, NaN included), detached."""
    return torch.where(mask.bool(), as_float(s.detach()), 0.0)


def check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    """An error listing ``choices`` unless ``value`` is one of them."""
    if value not in choices:
        raise ValueError(f"{option}={value!r} is not valid; choose one of: {'|'.join(choices)}")


def ones(stats: TokenStats) -> torch.Tensor:
    """The uniform salience: 1 on the response, 0 off it (float32)."""
    return finish(torch.ones_like(stats.mask, dtype=torch.float32), stats.mask)
