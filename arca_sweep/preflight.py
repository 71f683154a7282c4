"""Config checks that need more than the config: the model's architecture (from its ``config.json``, built
on the meta device: no weights read) and what the task can give. Called by :func:`arca_sweep.config.validate`,
so they run before any model loads, and before Hydra starts the run (also under ``--cfg job``).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

# A LoRA on these would be silently wrong, so they are refused (SPEC: the adapter is on the decoder's
# linear projections).
UNSUPPORTED_TARGETS = {
    "lm_head": "the chunked LM head (arca_sweep/learner/token_stats.py) multiplies by the base weight directly, "
    "so a LoRA there would get no gradient and the log-probs would ignore it",
    "embed_tokens": "the input embedding is tied to the LM head in the supported models (tie_word_embeddings), "
    "and the chunked LM head and the vLLM weight sync read the base weight, so a LoRA there would be ignored "
    "by scoring",
}


def model_config_path(model_cfg) -> Path | None:
    """The local ``config.json`` of the model, or None when only a hub id is known and it is not cached."""
    from arca_sweep.model import TINY_PATH

    if model_cfg.path:
        return Path(model_cfg.path).expanduser() / "config.json"
    if model_cfg.name == "tiny":
        return TINY_PATH / "config.json"
    if model_cfg.get("package"):
        from arca_sweep.weights import resolve

        where, kind = resolve(model_cfg, fetch=False)  # no download, no conversion, no network
        if kind == "package":
            return Path(where) / "config.json"
    if model_cfg.hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model_cfg.hub_id, "config.json")
        except Exception:  # an odd hub id: the model load names it
            return None
        return Path(cached) if isinstance(cached, str) else None
    return None


@functools.lru_cache(maxsize=8)
def lora_target_names(config_path: str) -> tuple[str, ...]:
    """Names of the modules peft can put a LoRA on (Linear, Embedding), from the architecture built on the
    meta device: full dotted names, e.g. ``model.layers.0.self_attn.q_proj``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(Path(config_path).parent))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    kinds = (torch.nn.Linear, torch.nn.Embedding)
    return tuple(name for name, module in model.named_modules() if isinstance(module, kinds))


def target_module_errors(targets: list[str], module_names: tuple[str, ...]) -> list[str]:
    """peft's rule for a list of targets: a module matches when its name is the target or ends in
    ``.<target>``. Every target must match, and none may be an unsupported module."""
    leaves = sorted({name.rsplit(".", 1)[-1] for name in module_names} - set(UNSUPPORTED_TARGETS))
    errors = []
    for target in targets:
        matched = [n for n in module_names if n == target or n.endswith("." + target)]
        leaf = target.rsplit(".", 1)[-1]
        if matched and leaf in UNSUPPORTED_TARGETS:
            errors.append(f"rank.target_modules: {target!r} is not supported: {UNSUPPORTED_TARGETS[leaf]}")
        elif not matched:
            errors.append(
                f"rank.target_modules: {target!r} matches no module of this model; "
                f"choose from: {', '.join(leaves)}"
            )
    return errors


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def safetensors_error(path: Path) -> str | None:
    """Why a ``.safetensors`` file is not whole (a cut copy or download), read from its header alone: the
    8-byte header length, the JSON header, and the end of the last tensor against the file's size."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n > min(size - 8, 100 * 2**20):
                return f"its header length ({n} bytes) does not fit in its {size} bytes"
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return f"its header is not readable ({type(exc).__name__})"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    want = 8 + n + max(ends, default=0)
    if size != want:
        cut = ": it was cut short" if size < want else ""
        return f"it holds {size} bytes where its header describes {want}{cut}"
    return None


def model_folder_errors(folder: Path) -> list[str]:
    """What a local ``model.path`` must hold besides config.json: weights (``*.safetensors`` whole, every
    shard an index lists) and a tokenizer; each problem named with the fix."""
    key = f"model.path={str(folder)!r}"
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    if not weights:
        return [f"{key} holds no weights (*.safetensors or *.bin): pass the whole checkpoint directory"]
    errors = []
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            shards = set()
            errors.append(f"{key}: {index.name} is not a valid index: copy it again")
        errors += [
            f"{key}: the shard {s} its index lists is missing: copy it again"
            for s in sorted(shards)
            if not (folder / s).is_file()
        ]
    for w in weights:
        if w.suffix == ".safetensors" and (why := safetensors_error(w)):
            errors.append(f"{key}: {w.name} is damaged ({why}); copy or download it again")
    if not any((folder / t).is_file() for t in TOKENIZER_FILES):
        errors.append(
            f"{key} holds no tokenizer (tokenizer.json or tokenizer.model): copy the tokenizer files too"
        )
    return errors


def model_errors(cfg) -> list[str]:
    """Checks against the model's config.json: the LoRA targets and credit.layer; a local ``model.path``'s
    weights and tokenizer (:func:`model_folder_errors`)."""
    path = model_config_path(cfg.model)
    if cfg.model.path and not path.is_file():
        return [f"model.path={cfg.model.path!r} has no config.json: pass a checkpoint directory"]
    if cfg.model.path and (folder_errors := model_folder_errors(path.parent)):
        return folder_errors
    if path is None or not path.is_file():
        return []  # a hub model not in the cache: the model load says how to get it
    try:
        arch = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return [f"model: {path} is not readable JSON ({exc})"]
    errors = []
    layers = arch.get("num_hidden_layers")
    if isinstance(layers, int) and not -(layers + 1) <= cfg.credit.layer <= layers:
        errors.append(
            f"credit.layer={cfg.credit.layer} is out of range: this model has {layers} layers, so hidden-state "
            f"indices run 0..{layers} (0: the embeddings, {layers}: the last layer; -1: the state fed to the "
            "LM head)"
        )
    try:
        names = lora_target_names(str(path))
    except Exception as exc:  # an architecture transformers cannot build: the model load will say more
        cause = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        return errors + [f"model: cannot build the architecture of {path} ({cause})"]
    return errors + target_module_errors(list(cfg.rank.target_modules), names)


def task_errors(cfg) -> list[str]:
    """What the tasks can give (the run's ``data`` and every ``eval.sets`` entry): local data files exist;
    arith's eval partition holds a finite number of distinct problems."""
    errors = data_source_errors(cfg.data, "data", cfg.budget)
    for name, set_cfg in cfg.eval.sets.items():
        errors += data_source_errors(set_cfg, f"eval.sets.{name}", cfg.budget, eval_only=True)
    return errors


def data_source_errors(d, key: str, budget, eval_only: bool = False) -> list[str]:
    """One data config's (named ``key``): its local files exist, a rows task names its eval rows (``eval_only``:
    an eval set, whose hint is how to add one), and an arith shape can give its eval size."""
    from arca_sweep.tasks import is_arith

    if not is_arith(d.name):
        errors = [
            f"{key}.{name}={value!r}: no such file (absolute: {Path(value).expanduser().absolute()})"
            for name, value in (("path", d.path), ("eval_path", d.eval_path))
            if value is not None and not Path(value).expanduser().is_file()
        ]
        if d.name != "jsonl" and d.eval_path is None and not d.eval_hub_id:
            how = "add a set from its data config: +data@eval.sets.<name>=<config> (conf/data/), or set "
            errors.append(
                f"{key} names no eval rows: neither {key}.eval_path nor {key}.eval_hub_id is set; "
                + (how if eval_only else "set ")
                + f"{key}.eval_path=/path/to/rows.jsonl"
            )
        return errors
    shape_ok = 2 <= d.min_operands <= d.max_operands and 0 <= d.min_operand <= d.max_operand and d.ops
    if not shape_ok:
        return []
    from arca_sweep.tasks.arith import eval_capacity

    capacity = eval_capacity(d.min_operands, d.max_operands, d.max_operand, d.ops, d.min_operand)
    size, size_key = (
        (budget.eval_size, "budget.eval_size") if d.eval_size is None else (d.eval_size, f"{key}.eval_size")
    )
    if size > capacity:
        return [
            f"{size_key}={size} is more than this arith shape ({key}) can give: its eval partition "
            f"holds about {2 * capacity} distinct problems and drawing more than {capacity} of them takes too "
            f"long; lower {size_key}, or widen {key}.max_operand / {key}.max_operands / {key}.ops"
        ]
    return []


def prompt_token_limit(data, model, budget) -> int | None:
    """``data.max_prompt_tokens``, or when null the model's context minus ``budget.max_new_tokens``
    (``data``, ``model``, ``budget``: those sections of the config)."""
    if data.max_prompt_tokens is not None:
        return data.max_prompt_tokens
    path = model_config_path(model)
    try:
        context = json.loads(path.read_text()).get("max_position_embeddings") if path else None
    except (OSError, ValueError):
        return None
    if not isinstance(context, int):
        return None
    return max(context - budget.max_new_tokens, 1) if context > budget.max_new_tokens else context
