"""Shared fixtures: the packaged tiny model with a random non-zero LoRA adapter, composed configs."""

from __future__ import annotations

import pytest

from arca_sweep.testing import make_config


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from arca_sweep.model import load_tokenizer

    return load_tokenizer(make_config().model)
