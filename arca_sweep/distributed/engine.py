"""Data-parallel rollouts: each rank generates whole prompt groups with its own engine, then every rank
holds the whole batch, in the order one process would have produced it."""

from __future__ import annotations

import torch

from arca_sweep.distributed import World, my_prompts
from arca_sweep.rollout import RolloutBatch


class ShardedEngine:
    """Wraps a rank's engine (HF, or vLLM on the rank's GPU). ``generate`` gives this rank the prompts
    r, r + W, ... (:func:`~arca_sweep.distributed.my_prompts`), each with all its samples, and gathers
    every rank's rows into the batch of the whole call, prompt-major as from one engine.

    Sampling draws are keyed by each row's place in the whole call (``positions``; the engines'
    ``generate``), so a row's sample is the one a single process draws for it, whatever the number of
    ranks. Each rank's engine receives the new weights itself (:meth:`sync`)."""

    def __init__(self, engine, world: World, pad_id: int, lockstep: bool = False):
        """``lockstep``: the model is sharded (``dist.shard``): every rank calls its engine, prompts or not."""
        self.engine, self.world, self.pad_id, self.lockstep = engine, world, pad_id, lockstep
        if lockstep:
            engine.lockstep = world

    def __getattr__(self, name):  # the wrapped engine's other attributes (e.g. its config)
        return getattr(self.engine, name)

    def sync(self, model) -> None:
        self.engine.sync(model)

    def generate(
        self, prompts, num_samples, max_new_tokens, greedy=False, temperature=None, top_p=None, seed=None
    ) -> RolloutBatch:
        mine = my_prompts(len(prompts), self.world)
        part = None
        if not mine and not self.lockstep:  # (fewer prompts than ranks) draw what the engine would have drawn
            draw_seed(seed, greedy)
        else:
            part = self.engine.generate(
                [prompts[i] for i in mine],
                num_samples,
                max_new_tokens,
                greedy=greedy,
                temperature=temperature,
                top_p=top_p,
                seed=seed,
                positions=mine,
            )
            part = None if part is None else _to_cpu(part)
        parts = self.world.all_gather_object((mine, part))
        return assemble(parts, len(prompts), num_samples, self.pad_id)


def draw_seed(seed: int | None, greedy: bool) -> int | None:
    """A sampled call's seed: the caller's, or one draw from the project's RNG stream (training rollouts),
    as every engine takes it (:func:`arca_sweep.rollout.call_seed`)."""
    from arca_sweep.rollout import call_seed

    return call_seed(seed, greedy)


def _to_cpu(batch: RolloutBatch) -> RolloutBatch:
    move = lambda x: None if x is None else x.cpu()  # noqa: E731
    return RolloutBatch(
        prompt_ids=move(batch.prompt_ids),
        prompt_mask=move(batch.prompt_mask),
        response_ids=move(batch.response_ids),
        response_mask=move(batch.response_mask),
        finish_reasons=batch.finish_reasons,
        texts=batch.texts,
        sampling_logprobs=move(batch.sampling_logprobs),
    )


def assemble(parts, n_prompts: int, num_samples: int, pad_id: int) -> RolloutBatch:
    """The whole call's batch from each rank's ``(prompt positions, its RolloutBatch)``: prompts left-padded
    and responses right-padded to the widest, rows in prompt order."""
    parts = [(pos, b) for pos, b in parts if pos and b is not None]
    p = max(b.prompt_ids.shape[1] for _, b in parts)
    r = max(b.response_ids.shape[1] for _, b in parts)
    n = n_prompts * num_samples
    first = parts[0][1]
    prompt_ids = first.prompt_ids.new_full((n, p), pad_id)
    prompt_mask = torch.zeros((n, p), dtype=torch.bool)
    response_ids = first.response_ids.new_full((n, r), pad_id)
    response_mask = torch.zeros((n, r), dtype=torch.bool)
    logprobs = (
        None if first.sampling_logprobs is None else torch.zeros((n, r), dtype=first.sampling_logprobs.dtype)
    )
    reasons, texts = [""] * n, [""] * n
    for positions, b in parts:
        rows = (torch.tensor(positions)[:, None] * num_samples + torch.arange(num_samples)).reshape(-1)
        pw, rw = b.prompt_ids.shape[1], b.response_ids.shape[1]
        prompt_ids[rows, p - pw :] = b.prompt_ids
        prompt_mask[rows, p - pw :] = b.prompt_mask
        response_ids[rows, :rw] = b.response_ids
        response_mask[rows, :rw] = b.response_mask
        if logprobs is not None:
            logprobs[rows, :rw] = b.sampling_logprobs
        for k, row in enumerate(rows.tolist()):
            reasons[row], texts[row] = b.finish_reasons[k], b.texts[k]
    return RolloutBatch(prompt_ids, prompt_mask, response_ids, response_mask, reasons, texts, logprobs)
