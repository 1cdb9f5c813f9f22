"""Multi-process trials: one run as a torch.distributed job (gloo on CPU, nccl on GPU).

The launcher (submitit, torchrun, or anything else) sets torch's `env://` variables (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT, LOCAL_RANK); `ProcessGroup.from_environment` joins the group when WORLD_SIZE > 1, so
`core` never needs to know which launcher ran it.

Every rank reads its contiguous slice of the global batch (`train.batch_size` stays the contrastive batch),
and the losses see local rows against the gathered columns of every rank, as open_clip's `ClipLoss` with
`local_loss=True, gather_with_grad=True`: the gather is differentiable, so each rank's features receive the
gradient of every rank's loss, and averaging the parameter gradients over ranks gives exactly the gradient of
the single-process loss on the global batch (the mean of the per-rank row means). Gradients are averaged with
one flat all-reduce per step instead of wrapping the model in DistributedDataParallel, because a compression
stage replaces the model mid-run (prune-to-dense) and its mask parameters and multipliers live in the
optimizer, not the model; every parameter the optimizer steps is reduced, whatever module it belongs to.

Rank 0 alone logs, evaluates, checkpoints and asks the orchestrator whether to stop; it broadcasts that answer.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ablate.core.config.base import ConfigError


def backend_for(device: torch.device) -> str:
    """nccl between GPUs, gloo between CPU processes (nccl has no CPU tensors, gloo no fast GPU collectives)."""
    return "nccl" if device.type == "cuda" else "gloo"


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in the trial: rank `rank` of `world_size` (1: not distributed)."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def from_environment(cls, device: torch.device, timeout_s: float | None = None) -> ProcessGroup:
        """Join the launcher's process group if it started several processes; otherwise a group of one.

        `timeout_s` bounds every wait on the peers, the rendezvous and each collective: when a rank dies or hangs,
        the others raise after this long instead of torch's default 30 minutes, so the trial fails and is retried
        from its checkpoint."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        if not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            timeout = None if timeout_s is None else timedelta(seconds=timeout_s)
            dist.init_process_group(backend=backend_for(device), timeout=timeout)
        return cls(dist.get_rank(), dist.get_world_size())

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, global_batch: int) -> slice:
        """This rank's rows of a global batch of `global_batch`, which the world size must divide."""
        if global_batch % self.world_size:
            raise ConfigError(
                f"train.batch_size: {global_batch} does not split over the trial's {self.world_size} processes "
                "(nodes x tasks_per_node)"
            )
        local = global_batch // self.world_size
        return slice(self.rank * local, (self.rank + 1) * local)

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's `tensor` concatenated along dim 0 in rank order; differentiable (gradients flow back to
        the rank that owns each row)."""
        if not self.distributed:
            return tensor
        if tensor.requires_grad:
            return _GatherRows.apply(tensor, self.rank, self.world_size)
        return _all_gather(tensor, self.world_size)

    def average_gradients(self, parameters: Iterable[torch.Tensor]) -> None:
        """Replace each gradient by its mean over ranks, in one flat all-reduce."""
        if not self.distributed:
            return
        grads = [parameter.grad for parameter in parameters if parameter.grad is not None]
        if not grads:
            return
        flat = torch.cat([grad.reshape(-1) for grad in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of `values` (e.g. the per-rank losses, whose mean is the global batch's)."""
        if not self.distributed:
            return values
        values = values.detach().clone()
        dist.all_reduce(values)
        return values / self.world_size

    def agree(self, flag: bool) -> bool:
        """Rank 0's `flag` on every rank: its decisions (stop early, pruned) bind the whole group."""
        if not self.distributed:
            return flag
        decision = [flag]
        dist.broadcast_object_list(decision, src=0)
        return bool(decision[0])

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _all_gather(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class _GatherRows(torch.autograd.Function):
    """All-gather along rows whose backward hands each rank the gradient of its own rows summed over every
    rank's loss (an all-reduce of the gathered gradient, then this rank's slice). Written out because
    `torch.distributed.nn.all_gather` is deprecated and reduce-scatter, its usual backward, is missing in gloo."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
        ctx.rank, ctx.world_size, ctx.rows = rank, world_size, tensor.shape[0]
        return _all_gather(tensor, world_size)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows], None, None
