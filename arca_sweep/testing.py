"""Builders shared by the tests and the benchmark scripts (neither imports the other).

- :func:`make_config`: the config the CLI composes for a list of overrides.
- :func:`randomize_adapter`: a real, non-zero LoRA adapter (peft starts with B = 0, a no-op).
- :func:`random_qwen3`: a Qwen3 checkpoint built from the released architecture's config with
  random weights (layers cut), saved locally: the 151,936-token vocabulary without a download.
- :func:`make_batch`: a padded :class:`~arca_sweep.rollout.RolloutBatch` of given prompts and responses.
"""

from __future__ import annotations

import torch

# Public config.json values of the released checkpoints (layers cut for tests and benchmarks).
QWEN3 = {
    "qwen3_1_7b": dict(
        hidden_size=2048, intermediate_size=6144, num_attention_heads=16, num_key_value_heads=8
    ),
    "qwen3_0_6b": dict(
        hidden_size=1024, intermediate_size=3072, num_attention_heads=16, num_key_value_heads=8
    ),
}


def make_config(*overrides: str):
    """The config the CLI would compose for these overrides."""
    from hydra import compose, initialize_config_dir

    from arca_sweep.main import CONF_DIR, quote_numeric_choices

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("config", overrides=quote_numeric_choices(list(overrides)))


def randomize_adapter(model, seed: int = 0, scale: float = 0.05) -> None:
    """peft initializes B = 0 (the adapter starts as a no-op); make it a real, non-zero adapter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * scale)


def random_qwen3(path, model: str, layers: int = 2):
    """Save a random-weight Qwen3 of ``model``'s width (a key of :data:`QWEN3`) with ``layers`` layers,
    the real 151,936-token vocabulary and tied embeddings, to ``path``, with the tiny model's tokenizer
    (a whole checkpoint folder for ``model.path``; ids beyond the tiny vocabulary decode to ""); returns
    ``path``."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    from arca_sweep.model import TINY_PATH

    config = Qwen3Config(
        vocab_size=151_936,
        head_dim=128,
        num_hidden_layers=layers,
        tie_word_embeddings=True,
        max_position_embeddings=40_960,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        **QWEN3[model],
    )
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(TINY_PATH).save_pretrained(path)
    return path


def make_batch(tokenizer, prompts: list[str], responses: list[str], pad_width: int = 3):
    """Left-padded prompts, right-padded responses (some ending in EOS, some cut off)."""
    from arca_sweep.rollout import RolloutBatch, finish_masks

    p_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    r_ids = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in responses]
    r_ids = [ids + [tokenizer.eos_token_id] if i % 2 == 0 else ids for i, ids in enumerate(r_ids)]
    pad = tokenizer.pad_token_id
    p_w, r_w = max(map(len, p_ids)), max(map(len, r_ids)) + pad_width
    prompt_ids = torch.tensor([[pad] * (p_w - len(x)) + x for x in p_ids])
    prompt_mask = torch.tensor([[False] * (p_w - len(x)) + [True] * len(x) for x in p_ids])
    response_ids = torch.tensor([x + [pad] * (r_w - len(x)) for x in r_ids])
    mask, reasons = finish_masks(response_ids, [tokenizer.eos_token_id])
    mask &= torch.tensor([[True] * len(x) + [False] * (r_w - len(x)) for x in r_ids])
    return RolloutBatch(prompt_ids, prompt_mask, response_ids, mask, reasons, responses)
