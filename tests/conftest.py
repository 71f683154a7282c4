"""Shared fixtures: the packaged tiny model with a random non-zero LoRA adapter, composed configs."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from arca_sweep.main import CONF_DIR, quote_numeric_choices


def make_config(*overrides: str):
    """The config the CLI would compose for these overrides."""
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("config", overrides=quote_numeric_choices(list(overrides)))


def randomize_adapter(model, seed: int = 0, scale: float = 0.05) -> None:
    """peft initializes B = 0 (the adapter starts as a no-op); make it a real, non-zero adapter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * scale)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from arca_sweep.model import load_tokenizer

    return load_tokenizer(make_config().model)
