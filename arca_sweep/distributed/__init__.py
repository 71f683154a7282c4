"""One arm across many processes: the world an arm runs in (``dist`` config section).

World size and ranks come from the environment: torchrun's (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``) or, in a SLURM task that submitit started with more than one task
(``hydra.launcher.tasks_per_node``, ``nodes``), submitit's ``TorchDistributedEnvironment().export()``,
which sets the same variables from SLURM's. Without either an arm is one process (:data:`SINGLE`), and
nothing below does any communication.

The division of work (docs: README "One arm on many GPUs"):

- rollouts are data parallel by whole prompt groups: rank r generates the prompts r, r + W, r + 2W, ...
  of the step (:func:`my_prompts`, :class:`arca_sweep.distributed.engine.ShardedEngine`) and every rank
  then holds the whole batch, so group advantages, rewards, batch-scope credit and every logged metric
  are computed exactly as in one process;
- each rank scores and backpropagates only its own rows; loss aggregations read the whole batch's token
  and sequence counts, the LoRA gradients are summed across ranks before clipping, and every rank takes
  the same optimizer step (:mod:`arca_sweep.learner.update`);
- side effects happen on rank 0 only: the arm's lock, metrics, samples, eval results, checkpoint,
  adapter, W&B and summary (:mod:`arca_sweep.train`).
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
from dataclasses import dataclass

import torch

from arca_sweep.errors import UserError


@dataclass(frozen=True)
class World:
    """This process's place in the arm's process group: ``rank`` of ``size``, ``local_rank`` on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    backend: str | None = None  # None: one process, no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks, in place (float64 sums of float32 values stay float32)."""
        if self.size > 1:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def sum_floats(self, *values: float) -> list[float]:
        """Each of ``values`` summed over the ranks (one collective, in float64)."""
        if self.size == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.comm_device)
        return self.all_reduce_sum(t).tolist()

    def max_int(self, value: int) -> int:
        """The largest of every rank's ``value``."""
        if self.size == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.comm_device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())

    def all_gather_object(self, obj) -> list:
        """Every rank's ``obj``, in rank order."""
        if self.size == 1:
            return [obj]
        out = [None] * self.size
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj, src: int = 0):
        """Rank ``src``'s ``obj`` on every rank."""
        if self.size == 1:
            return obj
        box = [obj if self.rank == src else None]
        torch.distributed.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self) -> None:
        if self.size > 1:
            torch.distributed.barrier()

    @property
    def comm_device(self) -> torch.device:
        """Where collectives' tensors live: the rank's GPU under nccl, else the CPU."""
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


log = logging.getLogger(__name__)
SINGLE = World()


def env_world() -> tuple[int, int, int, int]:
    """(rank, world size, local rank, local world size) from torchrun's variables, or from a multi-task SLURM
    job's through submitit (which exports torchrun's variables for this task); (0, 1, 0, 1) otherwise."""
    if "TORCHELASTIC_RUN_ID" not in os.environ and "SLURM_JOB_ID" in os.environ:
        export_submitit_env()
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(size)))
    return rank, size, local_rank, local_size


def export_submitit_env() -> None:
    """In a task of a submitit job with several tasks: set torchrun's variables (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) from SLURM's. A SLURM job not
    started by submitit (an ``srun`` of one's own) is left alone: launch torchrun in it instead.

    A submitit task's world is SLURM's alone: rank variables it inherited from the shell that submitted the
    sweep (sbatch exports that environment) are stale, and are dropped before SLURM's are exported."""
    try:
        from submitit import JobEnvironment
        from submitit.helpers import TorchDistributedEnvironment

        job = JobEnvironment()  # raises outside a submitit job
    except Exception:
        return
    for name in RANK_VARIABLES:
        os.environ.pop(name, None)
    if job.num_tasks > 1:  # every GPU stays visible: a task uses cuda:LOCAL_RANK
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def backend_for(dist_cfg, device: torch.device) -> str:
    """``dist.backend``, with ``auto`` as nccl on CUDA and gloo on CPU."""
    if dist_cfg.backend == "nccl" and device.type != "cuda":
        raise UserError(
            f"dist.backend=nccl needs CUDA, and this arm runs on {device.type}: use dist.backend=gloo or auto"
        )
    if dist_cfg.backend != "auto":
        return dist_cfg.backend
    return "nccl" if device.type == "cuda" else "gloo"


def start_world(dist_cfg, device: torch.device) -> World:
    """Join the arm's process group (``torch.distributed.init_process_group`` from the environment) when
    there is more than one process; :data:`SINGLE` otherwise. A collective that waits longer than
    ``dist.timeout_s`` (a dead rank) raises on the survivors, so a job never hangs on a lost peer."""
    rank, size, local_rank, local_size = env_world()
    if size > 1 and not {"MASTER_ADDR", "MASTER_PORT"} <= os.environ.keys():
        raise UserError(
            f"WORLD_SIZE={size} is set but MASTER_ADDR/MASTER_PORT are not: launch the arm with torchrun "
            "(or a SLURM job's tasks), or unset WORLD_SIZE and RANK to run it in one process"
        )
    if size == 1:
        if dist_cfg.shard:
            log.warning("dist.shard=true does nothing in one process: launch the arm on several (torchrun)")
        return SINGLE
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    backend = backend_for(dist_cfg, device)
    if not torch.distributed.is_initialized():  # once per process: a multirun's arms share the group
        torch.distributed.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(seconds=dist_cfg.timeout_s),
            rank=rank,
            world_size=size,
        )
        atexit.register(_leave)
    return World(rank, size, local_rank, local_size, backend)


def _leave() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def stop_world(world: World) -> None:
    """After an arm: the ranks part together (the group itself lives on for the process's next arm)."""
    world.barrier()


def my_prompts(n_prompts: int, world: World) -> list[int]:
    """The positions of this rank's prompts among ``n_prompts``: r, r + W, r + 2W, ... (strided, so each
    of the learner's mini-batches, a contiguous range of prompts, is shared out across ranks)."""
    return list(range(world.rank, n_prompts, world.size))


def my_rows(n_rows: int, group_size: int, world: World) -> torch.Tensor:
    """The batch rows of this rank's prompts (:func:`my_prompts`), each prompt's G rows, in batch order."""
    if world.size == 1:
        return torch.arange(n_rows)
    prompts = torch.tensor(my_prompts(n_rows // group_size, world), dtype=torch.long)
    return (prompts[:, None] * group_size + torch.arange(group_size)).reshape(-1)
