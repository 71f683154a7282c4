"""Shared fixtures: the packaged tiny model's tokenizer, and the learner set-up (the tiny policy with a random
non-zero LoRA adapter, its composed config and a padded batch). Plain helpers live in ``tests/helpers.py``."""

from __future__ import annotations

import pytest
import torch

from arca_sweep.testing import make_batch, make_config, randomize_adapter


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from arca_sweep.model import load_tokenizer

    return load_tokenizer(make_config().model)


@pytest.fixture(scope="session")
def learner_setup(tiny_tokenizer):
    """``learner_setup(prompts, responses, *overrides, scale=0.2, dtype=None, questions=False)``:
    ``(cfg, model, batch)``: the config the overrides compose, the tiny policy on CPU (seed 0, cast to
    ``dtype`` if given) with a random LoRA adapter of ``scale``, and a padded batch of the responses
    (``questions``: each prompt is a question, sent through the chat template)."""
    from arca_sweep.model import load_policy

    def make(prompts, responses, *overrides, scale=0.2, dtype=None, questions=False):
        cfg = make_config(*overrides)
        model = load_policy(cfg.model, cfg.rank, torch.device("cpu"), seed=0)
        if dtype is not None:
            model = model.to(dtype)
        randomize_adapter(model, scale=scale)
        if questions:
            prompts = [
                tiny_tokenizer.apply_chat_template(
                    [{"role": "user", "content": f"Compute {q}. Put the final answer in \\boxed{{}}."}],
                    tokenize=False,
                    add_generation_prompt=True,
                )
                for q in prompts
            ]
        return cfg, model, make_batch(tiny_tokenizer, list(prompts), list(responses))

    return make
