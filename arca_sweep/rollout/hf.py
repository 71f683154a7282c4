"""``rollout=hf``: batched sampling with the peft model through transformers ``generate``.

``generate`` runs the decoding loop (KV cache, padding, EOS) in greedy mode; :class:`TokenChooser`,
the last logits processor, chooses each token (a draw from the processed distribution, or the
argmax) and records its log-prob. On CPU the model's frozen projections and LM head run on oneDNN
(``model.cpu_matmul``, arca_sweep/kernels.py).
"""

from __future__ import annotations

import contextlib

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from arca_sweep.rollout import RolloutBatch, call_seed, concat_batches, eos_token_ids, finish_masks, row_seed

# Every GenerationConfig field that changes the next-token distribution, at its no-op value. transformers
# fills each field left None from the checkpoint's generation_config.json (Qwen3: do_sample=true,
# temperature 0.6, top_k 20, top_p 0.95), then from its own defaults (top_k 50): None is not "off".
NEUTRAL_SAMPLING = dict(
    num_beams=1,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    typical_p=1.0,
    epsilon_cutoff=0.0,
    eta_cutoff=0.0,
    repetition_penalty=1.0,
    encoder_repetition_penalty=1.0,
    no_repeat_ngram_size=0,
    encoder_no_repeat_ngram_size=0,
    length_penalty=1.0,
    min_length=0,  # (min_new_tokens stays None: setting both makes transformers warn at every call)
    renormalize_logits=False,
    remove_invalid_values=False,
)
# Read by transformers only when sampling: left at their defaults under greedy (set, they make
# transformers warn "generation flags are not valid" at every call).
SAMPLING_ONLY = {"temperature", "top_k", "top_p", "typical_p", "epsilon_cutoff", "eta_cutoff"}


def pinned_generation_config(**fields) -> GenerationConfig:
    """Argmax decoding with every distribution-changing field pinned to its no-op value (the
    sampling-only ones left at their defaults, :data:`SAMPLING_ONLY`). Sampling is ours: temperature
    and top-p run as our own processors, then :class:`TokenChooser` draws and forces the token."""
    pinned = {k: v for k, v in NEUTRAL_SAMPLING.items() if k not in SAMPLING_ONLY}
    return GenerationConfig(do_sample=False, **pinned, **fields)


@contextlib.contextmanager
def checkpoint_defaults_hidden(model):
    """Hide the checkpoint's generation_config.json from ``generate`` for the call.

    Fields without a no-op value (``min_p``, ``top_h``, ``sequence_bias``, ``suppress_tokens``,
    ``bad_words_ids``, forced tokens, watermarking, ...) act whenever they are not None, and
    transformers would fill them from the checkpoint; HF also appends its own warpers *after* our
    processors (so after the recorder). A blank config leaves only transformers' global defaults,
    which :data:`NEUTRAL_SAMPLING` pins.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = base.generation_config
    base.generation_config = GenerationConfig()
    try:
        yield
    finally:
        base.generation_config = saved


# Entries per first-level block of :func:`draw`'s CDF (the whole row when the vocabulary is shorter).
DRAW_BLOCK = 1024


def draw(
    probs: torch.Tensor, generator: torch.Generator | None = None, u: torch.Tensor | None = None
) -> torch.Tensor:
    """One token per row of ``probs`` [B, V] (rows need not sum to 1), by inverse CDF in float64.

    The same distribution as ``torch.multinomial(probs, 1)``, at a fraction of its cost on a
    151,936-token vocabulary (multinomial draws one exponential variate per vocabulary entry: 76 ms
    per decoding step of 32 rows on two threads; this draws one uniform per row). Two levels of
    float64 partial sums (blocks of ``min(DRAW_BLOCK, V)`` entries, then within the chosen block) keep
    the CDF exact to float64 rounding; a token of probability 0 is never drawn. Memory is linear in
    B * V: no intermediate is wider than a float64 copy of ``probs`` (only the last, partial block is
    zero-padded, to one block), so a small vocabulary takes no 1,024-wide rows. ``u`` [B] float64 in
    [0, 1): each row's uniform variate (default: drawn from ``generator``).
    """
    b, v = probs.shape
    block = min(DRAW_BLOCK, v)
    whole = v // block  # blocks with no padding
    p = probs.to(torch.float64)
    blocks = p[:, : whole * block].view(b, whole, block)
    block_sums = blocks.sum(-1)  # [B, nb]
    tail = None
    if whole * block < v:  # the last block, zero-padded to a whole one (as the sums of a padded row)
        tail = torch.nn.functional.pad(p[:, whole * block :], (0, (whole + 1) * block - v))
        block_sums = torch.cat([block_sums, tail.sum(-1, keepdim=True)], 1)
    block_cdf = block_sums.cumsum(-1)
    nb = block_cdf.shape[1]
    if u is None:
        u = torch.rand(b, 1, dtype=torch.float64, device=probs.device, generator=generator)
    else:
        u = u.to(device=probs.device, dtype=torch.float64).reshape(b, 1)
    target = u * block_cdf[:, -1:]
    k = torch.searchsorted(block_cdf, target, right=True).clamp_(max=nb - 1)  # [B, 1]
    before = torch.where(k > 0, block_cdf.gather(1, (k - 1).clamp(min=0)), torch.zeros_like(target))
    inner = blocks.gather(1, k.clamp(max=whole - 1)[:, :, None].expand(b, 1, block))[:, 0]  # [B, block]
    if tail is not None:
        last = k[:, 0] == whole
        inner[last] = tail[last]
    inner = inner.cumsum(-1)
    # (past the end of a row shorter than DRAW_BLOCK: a token >= V, which the fallback below replaces)
    j = torch.searchsorted(inner, target - before, right=True).clamp_(max=DRAW_BLOCK - 1)
    token = (k * block + j)[:, 0]
    # Rounding can put the target at the very end of the CDF: fall back to the row's most likely
    # token rather than a padding slot or a zero-probability one.
    bad = (token >= v) | (probs.gather(1, token.clamp(max=v - 1)[:, None])[:, 0] <= 0)
    return torch.where(bad, probs.argmax(-1), token)


class TokenChooser(LogitsProcessor):
    """Chooses each step's token itself and records log pi_sampler(y_t); runs last, after
    temperature and top-p, so it records the distribution the token is drawn from.

    ``generate`` runs in greedy mode: the returned scores are 0 at the chosen token and -inf
    elsewhere, so transformers' argmax takes it. Sampling draws from softmax(scores) with
    :func:`draw` with the t-th of each row's own uniforms (``uniforms`` [B, max_new_tokens]: row-keyed
    draws, :func:`row_uniforms`); greedy takes ``scores.argmax`` as transformers would.
    """

    def __init__(self, uniforms: torch.Tensor | None, stream: bool = False):
        self.uniforms, self.stream = uniforms, stream
        self.logprobs: list[torch.Tensor] = []

    def __call__(self, input_ids, scores):
        logp = scores.float().log_softmax(-1)
        if self.uniforms is not None:
            token = draw(logp.exp(), u=self.uniforms[:, len(self.logprobs)])
        elif self.stream:  # draws="stream": the project's RNG, batch by batch (before issue 22)
            token = draw(logp.exp())
        else:
            token = scores.argmax(-1)
        self.logprobs.append(logp.gather(1, token[:, None])[:, 0])
        forced = torch.full_like(scores, -torch.inf)
        return forced.scatter_(1, token[:, None], 0.0)


def row_uniforms(seed: int, keys: list[tuple[int, int]], max_new_tokens: int) -> torch.Tensor:
    """[rows, max_new_tokens] float64 uniforms: row (prompt position p, sample j)'s come from a generator
    seeded :func:`~arca_sweep.rollout.row_seed` (seed, p, j), so a row draws the same tokens in any batch."""
    out = torch.empty((len(keys), max_new_tokens), dtype=torch.float64)
    for i, (p, j) in enumerate(keys):
        g = torch.Generator().manual_seed(row_seed(seed, p, j))
        out[i] = torch.rand(max_new_tokens, dtype=torch.float64, generator=g)
    return out


class HFEngine:
    # "row": a sampled row's draws keyed by (call seed, prompt position, sample); "stream": a training
    # rollout draws from the project's RNG stream batch by batch, as every version before issue 22 did (an
    # arm resumed from such a checkpoint keeps it, so its records stay one run's)
    draws = "row"
    # a sharded model's World (arca_sweep/distributed/fsdp.py): every rank decodes in lockstep, as many calls
    lockstep = None

    def __init__(self, cfg, model, tokenizer):
        self.cfg, self.model, self.tokenizer = cfg, model, tokenizer
        self.eos_ids = eos_token_ids(model, tokenizer)

    def sync(self, model) -> None:
        self.model = model  # generate runs on the live peft model: nothing to copy

    @torch.no_grad()
    def generate(
        self,
        prompts,
        num_samples,
        max_new_tokens,
        greedy=False,
        temperature=None,
        top_p=None,
        seed=None,
        positions=None,
    ) -> RolloutBatch:
        """``temperature``/``top_p``: this call's (None: ``rollout``'s); ``seed`` and ``positions``: the
        rows' draws (:class:`arca_sweep.rollout.RolloutEngine`)."""
        rows = [p for p in prompts for _ in range(num_samples)]
        sampling = (
            self.cfg.temperature if temperature is None else temperature,
            self.cfg.top_p if top_p is None else top_p,
        )
        uniforms = None
        stream = self.draws == "stream" and seed is None and not greedy
        seed = None if stream else call_seed(seed, greedy)
        if seed is not None:
            places = range(len(prompts)) if positions is None else positions
            keys = [(p, j) for p in places for j in range(num_samples)]
            uniforms = row_uniforms(seed, keys, max_new_tokens)
        size = self.cfg.batch_size
        starts = range(0, len(rows), size)
        # lockstep: every rank makes as many generate calls, agreed before the first (each is a collective);
        # a rank with fewer batches decodes a 1-token stand-in for each missing one and discards it
        calls = len(starts) if self.lockstep is None else self.lockstep.max_int(len(starts))
        parts = []
        for i in range(calls):
            if i >= len(starts):
                self._generate([[self.tokenizer.pad_token_id]], max_new_tokens, True, sampling, None)
                continue
            s = starts[i]
            batch_uniforms = None if uniforms is None else uniforms[s : s + size]
            parts.append(
                self._generate(rows[s : s + size], max_new_tokens, greedy, sampling, batch_uniforms, stream)
            )
        return concat_batches(parts, self.tokenizer.pad_token_id) if parts else None

    def _shared_prefill(self, input_ids, attn):
        """The KV cache of every prompt but its last token, computed once per distinct prompt and
        copied to each of its rows; None when no two rows share a prompt.

        ``generate`` then prefills only the last prompt token of each row. The G samples of a group
        share their prompt, so this saves (G - 1) / G of the prompt's forward (transformers' documented
        prefix reuse: a cache passed in covers the first tokens of ``input_ids``). Same arithmetic per
        row; the batch shapes differ, so float32 rounding may differ in the last bits.
        """
        from transformers import DynamicCache

        if input_ids.shape[1] < 2:
            return None
        unique, inverse = torch.unique(torch.cat([input_ids, attn], 1), dim=0, return_inverse=True)
        if unique.shape[0] == input_ids.shape[0]:
            return None
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        first = torch.full((unique.shape[0],), input_ids.shape[0], device=input_ids.device, dtype=torch.long)
        first = first.scatter_reduce(0, inverse, rows, reduce="amin")  # one row per distinct prompt
        position_ids = (attn.long().cumsum(-1) - 1).masked_fill(attn == 0, 1)  # as generate sets them
        cache = DynamicCache(config=self.model.config)
        self.model(
            input_ids=input_ids[first, :-1],
            attention_mask=attn[first, :-1],
            position_ids=position_ids[first, :-1],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        cache.reorder_cache(inverse)
        return cache

    def _generate(self, rows, max_new_tokens, greedy, sampling, uniforms, stream=False) -> RolloutBatch:
        tok, device = self.tokenizer, self.model.device
        enc = tok.pad({"input_ids": rows}, return_tensors="pt", padding_side="left")
        input_ids, attn = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        gen = pinned_generation_config(  # argmax decoding: TokenChooser draws the samples
            max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=self.eos_ids
        )
        processors = LogitsProcessorList()
        temperature, top_p = sampling
        if not greedy:
            if temperature != 1.0:
                processors.append(TemperatureLogitsWarper(temperature))
            if top_p < 1.0:
                processors.append(TopPLogitsWarper(top_p))
        chooser = TokenChooser(None if greedy else uniforms, stream)
        processors.append(chooser)
        with checkpoint_defaults_hidden(self.model):
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attn,
                generation_config=gen,
                logits_processor=processors,
                # sharded: one forward per decoding step on every rank (the prefill's shape varies by rank)
                past_key_values=None if self.lockstep is not None else self._shared_prefill(input_ids, attn),
                synced_gpus=self.lockstep is not None,  # until every rank's rows are done
            )
        response = out[:, input_ids.shape[1] :]
        mask, reasons = finish_masks(response, self.eos_ids)
        response = response.masked_fill(~mask, tok.pad_token_id)
        logprobs = torch.stack(chooser.logprobs, 1).masked_fill(~mask, 0.0)
        return RolloutBatch(
            prompt_ids=input_ids,
            prompt_mask=attn.bool(),
            response_ids=response,
            response_mask=mask,
            finish_reasons=reasons,
            texts=tok.batch_decode(response, skip_special_tokens=True),
            sampling_logprobs=logprobs,
        )
