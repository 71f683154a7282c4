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
from collections.abc import Callable
from pathlib import Path


class PluginError(ValueError):
    """A plug-in that cannot be imported or called as its key requires."""


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
    if data.name == "jsonl":
        d = data
        for key, path in (("data.path", d.path), ("data.eval_path", d.eval_path)):
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
