"""Data under several processes: each split seen once, the global batch kept.

A run on W processes (devices x nodes, Lightning's DDP) must measure what the run on one
process measures. Two rules make that so, and the datamodules follow them through the helpers
here (Lightning's own sampler injection is off: ``trainer.use_distributed_sampler: false``,
because its ``DistributedSampler`` pads a split to a multiple of W with repeated samples and
reshuffles the training order by its own seed):

- **Training keeps the global batch.** ``task.batch_size`` is the global batch. Each process
  takes ``batch_size / W`` samples of every global batch, cut from the one global order
  (:class:`GlobalBatchShare`); DDP averages the W gradients, which for equal shares is the
  gradient of the global batch's mean. So the number of optimiser steps, and what each step
  sees, do not depend on W, and devices are neutral in a run's identity
  (docs/protocol/matrix.md). A global batch that W does not divide is refused at start.
  The last, smaller batch of an epoch is split as evenly as it goes; a process left with no
  sample of it repeats that batch's last sample (only when the batch is smaller than W).
- **Evaluation sees every sample once.** Validation and test loaders give process r the
  samples r, r + W, r + 2W, ... (Lightning's ``UnrepeatedDistributedSampler``, never padded);
  the metrics are torchmetrics objects, whose sums are added across processes when computed.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

from torch.utils.data import DataLoader, Sampler

from aaren_bench.errors import ConfigError
from aaren_bench.resume import PassThrough


def process_share(trainer) -> tuple[int, int]:
    """(global rank, world size) of this process; (0, 1) without a trainer (a datamodule used alone)."""
    if trainer is None:
        return 0, 1
    return int(trainer.global_rank), int(trainer.world_size)


def device_batch(global_batch: int, world: int, key: str = "task.batch_size") -> int:
    """The per-process batch of a global batch split over ``world`` processes."""
    global_batch, world = int(global_batch), int(world)
    if world < 1:
        raise ValueError(f"world size must be >= 1, got {world}")
    if global_batch % world:
        lower, upper = world * (global_batch // world), world * math.ceil(global_batch / world)
        raise ConfigError(
            f"{key}={global_batch} is the global batch and must split evenly over the {world} processes "
            f"(devices x nodes) of this run; use {key}={lower or world} or {upper}, or another number of devices"
        )
    return global_batch // world


class GlobalBatchShare(PassThrough):
    """This process's share of each global batch of an order that every process draws alike.

    ``sampler`` yields the global order (e.g. :class:`aaren_bench.resume.EpochShuffle`, RL's
    window sampler); batch k is its items ``[k B, (k+1) B)``; process r takes items
    ``[r b, (r+1) b)`` of it, ``b = B / W``. ``set_epoch`` and ``epoch`` pass through.
    """

    def __init__(self, sampler: Sampler, global_batch: int, rank: int, world: int):
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in [0, {world})")
        self.sampler, self.global_batch, self.rank, self.world = sampler, int(global_batch), int(rank), int(world)
        self.share = device_batch(global_batch, world)

    def _part(self, chunk: list) -> list:
        if len(chunk) == self.global_batch:
            return chunk[self.rank * self.share:(self.rank + 1) * self.share]
        # the last, smaller batch: as even a split as it goes (sizes differ by at most one)
        base, extra = divmod(len(chunk), self.world)
        start = self.rank * base + min(self.rank, extra)
        part = chunk[start:start + base + (self.rank < extra)]
        return part or chunk[-1:]  # a batch smaller than the world: this process repeats its last sample

    def __iter__(self) -> Iterator:
        order = list(iter(self.sampler))
        for k in range(0, len(order), self.global_batch):
            yield from self._part(order[k:k + self.global_batch])

    def __len__(self) -> int:
        n = len(self.sampler)
        full, rest = divmod(n, self.global_batch)
        return full * self.share + (len(self._part(list(range(rest)))) if rest else 0)


def eval_loader(dataset, *, batch_size: int, rank: int = 0, world: int = 1, **kwargs) -> DataLoader:
    """An evaluation loader in order; under W processes, process r gets samples r, r + W, ...
    (no sample padded or repeated; every process gets at least one, or the split is refused)."""
    if world == 1:
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, **kwargs)
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    if len(dataset) < world:
        raise ConfigError(f"an evaluation split of {len(dataset)} sample(s) cannot be shared by {world} processes "
                          f"(each needs at least one); run it on fewer devices")
    sampler = UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, **kwargs)


def global_mean(module, total, count):
    """A process's loss whose DDP average is ``sum of totals / sum of counts`` over the global batch.

    DDP averages the gradients of the W processes; a loss normalised by the process's own count
    (events scored, valid steps) would weigh a process with few of them as much as one with many.
    ``total * W / (count summed over processes)`` makes the average exact. On one process: ``total / count``.
    """
    trainer = getattr(module, "_trainer", None)
    world = int(trainer.world_size) if trainer is not None else 1
    if world == 1:
        return total / count
    import torch

    count = torch.as_tensor(count, dtype=total.dtype, device=total.device)
    return total * world / trainer.strategy.reduce(count, reduce_op="sum").clamp_min(1)


def global_sum(module, total):
    """A process's loss whose DDP average is the sum of ``total`` over the global batch (``total * W``)."""
    trainer = getattr(module, "_trainer", None)
    return total * (int(trainer.world_size) if trainer is not None else 1)
