"""verl's own modules from the installed wheel (``pip install --no-deps verl==0.9.1``, the Makefile does),
for the peer tests of clip_cov/kl_cov (tests/test_credit_methods.py) and of the rollout-correction
weights and the k3 clamp (tests/test_rollout_correction.py).

verl's package ``__init__`` imports ``verl.protocol`` and so Ray, a cluster runtime not installed here,
and ``verl.workers.config`` (imported by core_algos for the ``ActorConfig`` annotation only) pulls it in
too: both are replaced by stand-ins in ``sys.modules``. A third-party module still missing on the way
(``ray`` in ``rollout_corr_helper``, for its distributed helpers) is stubbed, never a verl module, so
every function the tests call is verl's code, unmodified. Skips where verl is not installed.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import types
from pathlib import Path
from unittest import mock

import pytest


@functools.cache
def _verl_importable() -> bool:
    spec = importlib.util.find_spec("verl")
    if spec is None:
        return False
    package = types.ModuleType("verl")
    package.__path__, package.__spec__ = list(spec.submodule_search_locations), spec
    workers_config = types.ModuleType("verl.workers.config")  # a package: its submodules import for real
    workers_config.__path__ = [str(Path(spec.origin).parent / "workers" / "config")]
    workers_config.ActorConfig = type("ActorConfig", (), {})
    sys.modules.setdefault("verl", package)
    sys.modules.setdefault("verl.workers.config", workers_config)
    return True


def import_verl(name: str):
    """The verl module ``name`` (e.g. ``verl.trainer.ppo.core_algos``)."""
    if not _verl_importable():
        pytest.skip("peer check: needs verl (pip install --no-deps verl==0.9.1)")
    for _ in range(5):
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or exc.name.split(".")[0] == "verl":
                pytest.skip(f"{name} does not import here: {exc}")
            sys.modules[exc.name] = mock.MagicMock(name=exc.name)
    pytest.skip(f"{name} does not import here")
