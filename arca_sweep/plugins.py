"""User plug-ins by import path, checked before any model is loaded.

- ``credit=custom credit.target=pkg.mod:fn``: a credit method ``fn(stats, ctx, **credit.options)``
  returning a salience ``[B, T]`` (normalized by ``credit.normalize``) or a
  :class:`arca_sweep.credit.TokenCredit` (see :func:`arca_sweep.credit.custom_method`).
- ``data=jsonl data.path=rows.jsonl data.reward=pkg.mod:fn``: a task from a JSONL of prompts and
  answers, graded by ``fn(response_text, answer) -> float`` (:mod:`arca_sweep.tasks.jsonl`).

The module is imported the ordinary way: it must be importable from the working directory or
``PYTHONPATH``.
"""

from __future__ import annotations

import importlib
import inspect
import signal
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from arca_sweep.errors import UserError


class PluginError(ValueError):
    """A plug-in that cannot be imported or called as its key requires."""


class PluginFailure(UserError):
    """A plug-in broke its contract while the run called it (raised, exited, timed out, or returned
    something it may not); the message names its key, the function, where it was called and the value."""


class _PluginTimeout(BaseException):
    """Raised inside a plug-in by the time limit's alarm (a BaseException, so ``except Exception`` in the
    plug-in does not swallow it)."""


@contextmanager
def time_limit(seconds: float | None):
    """Raise :class:`_PluginTimeout` in the body after ``seconds`` of wall time (SIGALRM; only in the main
    thread, where Python delivers signals; elsewhere, or with ``seconds`` 0/None, no limit)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def alarm(signum, frame):
        raise _PluginTimeout

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def at_step(step: int | str):
    """A :class:`PluginFailure` in the body says at which step (or eval) of the run it happened."""
    try:
        yield
    except PluginFailure as exc:
        raise PluginFailure(f"step {step}: {exc}") from exc.__cause__


def describe(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', getattr(fn, '__name__', '?'))}"


def call_plugin(
    fn: Callable, args: tuple, kwargs: dict, *, key: str, where: str, timeout_s: float | None, limit_key: str
):
    """``fn(*args, **kwargs)`` under the contract every plug-in call keeps: an exception, ``sys.exit`` or
    running past ``timeout_s`` seconds stops the run with one :class:`PluginFailure` naming ``key``, the
    function and ``where`` (e.g. "on problem 17"); ``limit_key`` is the setting that raises the limit."""
    name = describe(fn)
    try:
        with time_limit(timeout_s):
            return fn(*args, **kwargs)
    except _PluginTimeout:
        raise PluginFailure(
            f"{key} {name} did not return within {timeout_s:g} s {where}; make it faster or raise "
            f"{limit_key} (0: no limit)"
        ) from None
    except SystemExit as exc:
        raise PluginFailure(
            f"{key} {name} called sys.exit({exc.code!r}) {where}: a plug-in must return a value, not end "
            "the process (the arm would look finished without being so); fix the function"
        ) from None
    except UserError:
        raise
    except Exception as exc:
        raise PluginFailure(
            f"{key} {name} raised {type(exc).__name__}: {str(exc)[:300]} {where}; fix the function "
            "(ARCA_TRACEBACK=1 shows where)"
        ) from exc


def load_callable(spec: str | None, key: str) -> Callable:
    """The callable ``pkg.mod:fn`` names; :class:`PluginError` naming ``key``, the spec and the cause."""
    if not spec or not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise PluginError(f"{key}={spec!r} must name a function as 'package.module:function'")
    module_name, attr = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise PluginError(
            f"{key}={spec!r}: cannot import module {exc.name!r} (is its directory on PYTHONPATH or the "
            "working directory?)"
        ) from None
    except Exception as exc:  # a user's module may raise anything while importing
        raise PluginError(
            f"{key}={spec!r}: importing {module_name!r} raised {type(exc).__name__}: {exc}"
        ) from None
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise PluginError(f"{key}={spec!r}: module {module_name!r} has no attribute {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise PluginError(f"{key}={spec!r} is a {type(fn).__name__}, not a function")
    return fn


def check_signature(fn: Callable, key: str, spec: str, args: tuple, kwargs: dict, expected: str) -> None:
    """:class:`PluginError` unless ``fn(*args, **kwargs)`` binds to its signature."""
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as exc:
        raise PluginError(f"{key}={spec!r} must be callable as {expected}: {exc}") from None
    except ValueError:  # no signature to inspect (a builtin): trust it
        pass


def plugin_errors(credit_cfg, data) -> list[str]:
    """Every problem with ``credit.target``/``credit.options`` (``credit_cfg``: the ``credit`` section) and
    ``data.path``/``data.reward`` (``data``: the ``data`` section)."""
    from arca_sweep import credit

    errors: list[str] = []
    c = credit_cfg
    options = dict(c.options or {})
    if c.name == "custom" or c.target is not None:  # a target set in any arm joins its shadow diagnostics
        try:
            fn = load_callable(c.target, "credit.target")
            check_signature(
                fn, "credit.target", c.target, (None, None), options, "fn(stats, ctx, **credit.options)"
            )
            credit.custom_method(fn)
        except (PluginError, ValueError) as exc:
            errors.append(str(exc))
    if c.name != "custom" and c.name in credit.method_names():
        valid = credit.method_options(c.name)
        if unknown := sorted(set(options) - set(valid)):
            choices = ", ".join(valid) if valid else "none (this method takes no options)"
            errors.append(f"credit.options {unknown} not options of {c.name!r}; valid: {choices}")
    return errors + data_plugin_errors(data)


def data_plugin_errors(data) -> list[str]:
    """Every problem with a ``data=jsonl`` config's files and ``data.reward``."""
    errors: list[str] = []
    if data.name == "jsonl":
        d = data
        for key, path in (("data.path", d.path), ("data.eval_path", d.eval_path)):  # eval-only reads either
            if path is not None and not Path(path).expanduser().is_file():
                errors.append(
                    f"{key}={path!r}: no such file (absolute: {Path(path).expanduser().absolute()})"
                )
        try:
            fn = load_callable(d.reward, "data.reward")
            check_signature(fn, "data.reward", d.reward, ("", ""), {}, "fn(response_text, answer) -> float")
        except PluginError as exc:
            errors.append(str(exc))
    return errors
