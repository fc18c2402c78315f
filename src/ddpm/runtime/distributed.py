"""Several processes, one training run: PyTorch's DistributedDataParallel, launched by torchrun.

    torchrun --nproc_per_node=4 -m ddpm train ...     # 4 GPUs (NCCL) or 4 CPU processes (gloo)

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them everything runs in one process and
none of this does anything. The configured batch size is the global batch: every rank draws the
same global batch indices, timesteps and noise (one shared generator), and keeps its own slice of
them. So a step over N ranks computes the same gradient as one process with the whole batch, and
a run can resume with a different number of processes. Only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run directory, logs and shows progress."""
        return self.rank == 0

    def shard(self, batch: Tensor) -> Tensor:
        """This rank's contiguous slice of a global batch (the batch size divides evenly)."""
        size = len(batch) // self.world_size
        return batch[self.rank * size : (self.rank + 1) * size]

    def mean(self, value: Tensor) -> Tensor:
        """The mean of `value` over the ranks (a no-op in one process)."""
        if self.enabled:
            value = value.detach().clone()
            dist.all_reduce(value)
            value /= self.world_size
        return value

    def average_gradients(self, module: nn.Module) -> None:
        """Each gradient of `module` replaced by its mean over the ranks, as DDP does for the network."""
        if self.enabled:
            average_gradients(module)

    def max(self, values: list[float], device: torch.device) -> list[float]:
        """Each value's largest over the ranks, on every rank (the values themselves in one process)."""
        if not self.enabled:
            return values
        tensor = torch.tensor(values, device=device, dtype=torch.float64)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor.tolist()

    def gather(self, tensor: Tensor) -> Tensor:
        """Every rank's `tensor` (same shape on each), concatenated in rank order."""
        if not self.enabled:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def wrap(self, network: nn.Module, device: torch.device) -> nn.Module:
        """The network as DDP sees it: gradients are averaged across ranks during backward."""
        if not self.enabled:
            return network
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None)


def average_gradients(module: nn.Module) -> None:
    """Each gradient of `module` replaced by its mean over the process group's ranks (nothing without
    one): for what trains outside DDP, a learned loss weighting or a discriminator's heads."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        for p in module.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= dist.get_world_size()


def init_distributed(device_name: str = "auto") -> tuple[Distributed, str]:
    """Join the process group torchrun describes, if any; returns it and the device this rank uses.

    NCCL on CUDA (one GPU per rank, by LOCAL_RANK), gloo on CPU.
    """
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return Distributed(), device_name
    info = Distributed(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    use_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
        device_name = f"cuda:{info.local_rank}"
    if not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
        if attempt is None:
            dist.init_process_group(backend)
        else:
            # Under `torchrun --max-restarts`, the store the agent serves can outlive a failed attempt;
            # its keys (the dead workers' addresses) must not meet the next attempt's: a prefix each.
            store, rank, world_size = next(dist.rendezvous("env://"))
            dist.init_process_group(backend, store=dist.PrefixStore(f"ddpm-attempt-{attempt}", store), rank=rank,
                                    world_size=world_size)
    return info, device_name


EXIT_WAIT = timedelta(minutes=2)  # how long a rank that is done waits for the others before it leaves


def close_distributed(finished: bool = True) -> None:
    """Leave the process group. A rank whose command `finished` first waits, through the store, until
    every rank has finished its own: gloo can abort a rank that is still completing the last
    collective (the final barrier) when a peer tears its connections down (pytorch/gloo#155), and
    torchrun would then report a run that ended well as failed. A rank that failed leaves at once."""
    if not dist.is_initialized():
        return
    if finished and dist.get_world_size() > 1:
        store = dist.distributed_c10d._get_default_store()
        if store.add("ddpm-finished", 1) == dist.get_world_size():  # the last rank to finish says so
            store.set("ddpm-all-finished", "1")
        try:
            store.wait(["ddpm-all-finished"], EXIT_WAIT)
        except RuntimeError:  # DistStoreError: a rank that never came; leave regardless
            pass
    dist.destroy_process_group()
