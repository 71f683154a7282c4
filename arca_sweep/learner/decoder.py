"""Forward and decoder plumbing: hidden states at the positions that predict the response.

Position ids follow the attention mask (left padding changes nothing); a forward stops after the
last decoder layer it needs (a hook) and checkpoints its layers on request; the policy's pass (with
grad) and the reference pass run each distinct prompt once through a shared KV cache
(:func:`response_hidden`).
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.utils.checkpoint

from arca_sweep.diagnostics.fidelity import compute_context


def decoder_and_head(model):
    base = model.get_base_model()
    return getattr(base, base.base_model_prefix), base.get_output_embeddings()


class _StopForward(Exception):
    """Carries the hidden state out of the decoder once the last layer it depends on has run."""

    def __init__(self, hidden: torch.Tensor):
        self.hidden = hidden


def hidden_index(layer: int, num_layers: int) -> int:
    """``hidden_states`` index of ``credit.layer`` in ``0..num_layers`` (0: the embeddings; k: the
    output of decoder layer k, 1-based; num_layers: the final, normed state fed to the LM head)."""
    k = layer if layer >= 0 else num_layers + 1 + layer
    if not 0 <= k <= num_layers:
        raise ValueError(f"credit.layer={layer} is out of range for a model of {num_layers} decoder layers")
    return k


@contextlib.contextmanager
def _checkpointed(decoder):
    """Non-reentrant activation checkpointing of every decoder layer, for this forward only.

    transformers checkpoints a layer only when ``layer.training`` is set; the model stays in eval mode
    (no dropout: only the layer's own flag is set, not its submodules'), and the flags are restored
    after the call so ``generate`` (which needs its KV cache) never sees them.
    """
    layers = list(decoder.layers)
    saved = [
        (m.gradient_checkpointing, m.training, m.__dict__.get("_gradient_checkpointing_func")) for m in layers
    ]
    for m in layers:
        m.gradient_checkpointing, m.training = True, True
        m._gradient_checkpointing_func = functools.partial(
            torch.utils.checkpoint.checkpoint, use_reentrant=False
        )
    try:
        yield
    finally:
        for m, (flag, training, fn) in zip(layers, saved, strict=True):
            m.gradient_checkpointing, m.training = flag, training
            if fn is None:
                m.__dict__.pop("_gradient_checkpointing_func", None)
            else:
                m._gradient_checkpointing_func = fn


def forward_hidden(
    model,
    input_ids,
    attention_mask,
    layer: int,
    *,
    final: bool = True,
    checkpoint: bool = False,
    autocast_bf16: bool = False,
):
    """(final hidden [B, L, D] fed to the LM head, hidden at ``layer``) of one forward.

    Position ids follow the attention mask, as in generation, so left padding changes nothing.
    ``final=False``: only the hidden state at ``layer`` is wanted (ARCA's reference pass without the
    LM head); the forward stops after the last decoder layer it depends on and returns
    ``(None, hidden)``. ``checkpoint``: recompute each layer's activations in backward.
    ``autocast_bf16``: matmuls in bf16 over the (float32) weights, residual stream in float32
    (:func:`arca_sweep.diagnostics.fidelity.compute_context`).
    """
    decoder, _ = decoder_and_head(model)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return _decoder_pass(
        decoder, input_ids, attention_mask, position_ids, layer, final, checkpoint, autocast_bf16
    )


def _decoder_pass(
    decoder, input_ids, attention_mask, position_ids, layer, final, checkpoint, autocast_bf16, cache=None
):
    """One decoder call for :func:`forward_hidden`; with ``cache`` (a DynamicCache), ``input_ids``
    continue the sequences the cache holds and ``attention_mask`` covers both."""
    k = hidden_index(layer, len(decoder.layers))
    stop = not final and k < len(decoder.layers)
    if stop:  # the output of decoder layer k (1-based), or of the embedding for k = 0
        last = decoder.layers[k - 1] if k else decoder.get_input_embeddings()

        def hook(module, args, output):
            raise _StopForward(output[0] if isinstance(output, tuple) else output)

        handle = last.register_forward_hook(hook)
    try:
        with (
            _checkpointed(decoder) if checkpoint else contextlib.nullcontext(),
            compute_context(input_ids.device, autocast_bf16),
        ):
            out = decoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                output_hidden_states=layer != -1,
                past_key_values=cache,
                use_cache=cache is not None,
            )
    except _StopForward as early:
        return None, early.hidden
    finally:
        if stop:
            handle.remove()
    final_state, at_layer = out.last_hidden_state, out.hidden_states[layer] if layer != -1 else None
    if autocast_bf16:  # the LM head and every signal downstream in float32
        final_state = final_state.float()
        at_layer = at_layer.float() if at_layer is not None else None
    return final_state, final_state if layer == -1 else at_layer


def response_hidden(
    model,
    input_ids,
    attention_mask,
    prompt_len: int,
    layer: int,
    *,
    final,
    checkpoint: bool = False,
    autocast_bf16: bool = False,
    agree=None,
):
    """:func:`forward_hidden` at the positions that predict the response (``prompt_len - 1 .. L - 2``:
    ``[B, L - prompt_len, D]`` each), every distinct prompt run once.

    The G samples of a group share their prompt, so the prompt's keys and values are computed for one
    row per distinct prompt and copied to the others through the KV cache; the response positions then
    run for every row. Same arithmetic as one full forward (a row's prompt positions never see its
    response), about (G - 1) / G of the prompt tokens' work saved. Runs in the caller's grad mode: with
    grad, the copies are an ``index_select`` whose backward sums the rows' gradients into the shared
    prompt, as the G separate prompt forwards would. ``checkpoint`` (transformers drops the KV cache
    under layer checkpointing): one plain checkpointed forward. ``agree(shared) -> bool``: whether every
    process of a sharded model shares prompts too (the same decoder calls on every rank; else all run plain).
    """
    from transformers import DynamicCache

    p = prompt_len
    prompt = torch.cat([input_ids[:, :p], attention_mask[:, :p].long()], 1)
    unique, inverse = torch.unique(prompt, dim=0, return_inverse=True)
    shared = unique.shape[0] < input_ids.shape[0] and not checkpoint
    if agree is not None:
        shared = agree(shared)
    if not shared:  # nothing shared: one plain forward
        return tuple(
            None if h is None else h[:, p - 1 : -1]
            for h in forward_hidden(
                model,
                input_ids,
                attention_mask,
                layer,
                final=final,
                checkpoint=checkpoint,
                autocast_bf16=autocast_bf16,
            )
        )
    decoder, _ = decoder_and_head(model)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    first = torch.full((unique.shape[0],), input_ids.shape[0], device=input_ids.device, dtype=torch.long)
    first = first.scatter_reduce(0, inverse, rows, reduce="amin")  # one row per distinct prompt
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=decoder.config)
    head = _decoder_pass(
        decoder,
        input_ids[first, :p],
        attention_mask[first, :p],
        position_ids[first, :p],
        layer,
        final,
        False,
        autocast_bf16,
        cache,
    )
    cache.reorder_cache(inverse)  # [distinct prompts] -> [B]: each row's own prompt
    tail = _decoder_pass(
        decoder,
        input_ids[:, p:],
        attention_mask,
        position_ids[:, p:],
        layer,
        final,
        False,
        autocast_bf16,
        cache,
    )
    return tuple(
        None if a is None else torch.cat([a[inverse, -1:], b[:, :-1]], 1)
        for a, b in zip(head, tail, strict=True)
    )
