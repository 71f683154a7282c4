"""Loading the policy: a causal LM plus one peft LoRA adapter. The reference policy is the same
model with the adapter disabled (``disable_adapter()``), never a second copy of the weights."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from arca_sweep import kernels

TINY_PATH = Path(__file__).resolve().parent / "assets" / "tiny-arith"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but torch sees no CUDA device; use device=cpu or device=auto")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def model_source(model_cfg) -> str:
    """Where the weights come from: model.path, the packaged tiny model, or the hub name."""
    if model_cfg.path:
        path = Path(model_cfg.path).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model.path={model_cfg.path!r} has no config.json: pass a checkpoint directory"
            )
        return str(path)
    if model_cfg.name == "tiny":
        if not (TINY_PATH / "config.json").is_file():
            raise FileNotFoundError(
                f"the packaged tiny model is missing at {TINY_PATH}; "
                "rebuild it with `python scripts/build_tiny_model.py`"
            )
        return str(TINY_PATH)
    return model_cfg.hub_id


def load_tokenizer(model_cfg):
    from transformers import AutoTokenizer

    source = model_source(model_cfg)
    try:
        tok = AutoTokenizer.from_pretrained(source)
    except OSError as e:
        raise RuntimeError(_offline_hint(model_cfg, source)) from e
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_policy(model_cfg, rank_cfg, device: torch.device, seed: int):
    """The base model with a fresh LoRA adapter (peft init: A random from ``seed``, B = 0)."""
    from transformers import AutoModelForCausalLM

    source = model_source(model_cfg)
    try:
        base = AutoModelForCausalLM.from_pretrained(source, dtype=resolve_dtype(model_cfg.dtype, device))
    except OSError as e:
        raise RuntimeError(_offline_hint(model_cfg, source)) from e
    base.to(device)
    lora = LoraConfig(
        r=rank_cfg.r,
        lora_alpha=rank_cfg.alpha,
        lora_dropout=rank_cfg.dropout,
        target_modules=list(rank_cfg.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed if rank_cfg.init_seed is None else rank_cfg.init_seed)
        model = get_peft_model(base, lora)
    # get_peft_model leaves the model in train mode. Eval mode for good: no dropout anywhere (LoRA,
    # attention, residual), so sampling, scoring, the reference pass and eval are deterministic and
    # agree with each other; gradients do not need train mode.
    model.eval()
    kernels.configure(model_cfg.cpu_matmul)
    if device.type == "cpu" and model_cfg.cpu_matmul == "onednn":
        kernels.use_onednn(model)
    return model


def _offline_hint(model_cfg, source: str) -> str:
    return (
        f"could not load model {model_cfg.name!r} from {source!r} (no network, or not in the local cache). "
        f"Download it where you have network and pass model.path=/path/to/checkpoint-dir"
    )
