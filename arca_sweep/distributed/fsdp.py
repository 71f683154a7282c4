"""``dist.shard=true``: FSDP2 (``torch.distributed.fsdp.fully_shard``) over the arm's ranks, one unit per
decoder layer, for a base that does not fit one device.

Each decoder layer's weights (the frozen base and its LoRA factors) are split across the ranks and
gathered for the layer's forward and backward only; the LoRA gradients are reduce-scattered as sums
(FSDP's mean times the world size, :func:`arca_sweep.learner.update.sum_gradients`: the one-process gradient). The embeddings, the final
norm and the LM head stay whole on every rank: the learner computes the token statistics from the head's
weight itself, in vocabulary chunks (:mod:`arca_sweep.learner.token_stats`), and they are a small share of
a large model's weights.

Every forward and backward of a sharded layer is a collective: all ranks must run the same sequence of
them. So under sharding the rollout engine decodes in lockstep (transformers' ``synced_gpus``) with as
many generate calls on every rank, the learner runs as many micro-batches on every rank (a rank short of
rows runs two rows whose loss counts 0) and takes the reference pass and the policy pass in the same shape
on every rank (:class:`arca_sweep.learner.update.Learner`).
"""

from __future__ import annotations

import torch

from arca_sweep.distributed import World


def is_sharded(tensor) -> bool:
    """A DTensor (a parameter or optimizer state of a sharded layer)."""
    return hasattr(tensor, "device_mesh")


def shard_model(model, world: World, device: torch.device) -> None:
    """``fully_shard`` every decoder layer of the peft ``model`` over the world's ranks, gradients summed."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from arca_sweep.learner.decoder import decoder_and_head

    mesh = init_device_mesh(device.type, (world.size,))
    decoder, _ = decoder_and_head(model)
    for layer in decoder.layers:
        fully_shard(layer, mesh=mesh)  # (its gradients: the mean over ranks; sum_gradients makes it the sum)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole of ``tensor`` (a collective for a DTensor: every rank must call it), on the CPU."""
    if is_sharded(tensor):
        tensor = tensor.full_tensor()
    return tensor.detach().cpu().clone()


def full_adapter(model) -> dict[str, torch.Tensor]:
    """Every trainable parameter, whole (every rank calls it)."""
    return {n: full(p) for n, p in model.named_parameters() if p.requires_grad}


def full_optimizer_state(optimizer) -> dict:
    """``optimizer.state_dict()`` with every sharded state tensor whole: the unsharded checkpoint's format."""
    sd = optimizer.state_dict()
    state = {
        i: {k: full(v) if torch.is_tensor(v) else v for k, v in s.items()} for i, s in sd["state"].items()
    }
    return {"state": state, "param_groups": sd["param_groups"]}


def restore_sharded(state: dict, model, optimizer) -> int:
    """:func:`arca_sweep.arm_dir.checkpoint.restore` for a sharded model: every rank keeps its shard of the
    checkpoint's whole adapter and optimizer state."""
    from torch.distributed.tensor import distribute_tensor

    from arca_sweep.arm_dir.checkpoint import set_rng_states

    def like(param, value):
        if not is_sharded(param):
            return value.to(param.device, param.dtype)
        return distribute_tensor(
            value.to(param.dtype), param.device_mesh, param.placements, src_data_rank=None
        )

    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["adapter"].items():
            p = params[name]
            local = like(p, value)
            (p.to_local() if is_sharded(p) else p).copy_(local.to_local() if is_sharded(local) else local)
    sd = state["optimizer"]
    order = [p for group in optimizer.param_groups for p in group["params"]]
    converted = {
        i: {k: like(order[int(i)], v) if torch.is_tensor(v) and v.dim() > 0 else v for k, v in s.items()}
        for i, s in sd["state"].items()
    }
    optimizer.load_state_dict({"state": converted, "param_groups": sd["param_groups"]})
    set_rng_states(state["rng"])
    return state["step"]
