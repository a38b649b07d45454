"""Deterministic, resumable data order shared by all ranks."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Sampler


class GlobalBatchSampler(Sampler[int]):
    """Endless epochs of a seeded permutation, cut into global batches.

    Rank r takes rows [r * local, (r + 1) * local) of each global batch, so
    the union over ranks is the single-process batch. The position is a
    pure function of the step, which makes resuming exact: start at
    ``start_step`` and the same indices follow. The last partial global
    batch of an epoch is dropped (fixed shapes).
    """

    def __init__(self, size: int, global_batch: int, rank=0, world=1, seed=0, start_step=0):
        if global_batch % world:
            raise ValueError(f"batch size {global_batch} is not divisible by {world} processes")
        if size < global_batch:
            raise ValueError(f"the data set has {size} items, fewer than one batch of {global_batch}")
        self.size, self.global_batch, self.rank, self.world = size, global_batch, rank, world
        self.seed, self.start_step = seed, start_step
        self.local = global_batch // world
        self.batches_per_epoch = size // global_batch

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, batch within epoch) of the batch used by ``step`` (0-based)."""
        return divmod(step, self.batches_per_epoch)

    def __iter__(self):
        epoch, batch = self.position(self.start_step)
        while True:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**64)  # any seed: 64 bits
            order = torch.randperm(self.size, generator=g)
            for b in range(batch, self.batches_per_epoch):
                start = b * self.global_batch + self.rank * self.local
                yield from order[start : start + self.local].tolist()
            epoch, batch = epoch + 1, 0


def make_loader(dataset, global_batch, rank, world, seed, start_step, num_workers, pin_memory=False):
    sampler = GlobalBatchSampler(len(dataset), global_batch, rank, world, seed, start_step)
    loader = DataLoader(
        dataset,
        batch_size=sampler.local,
        sampler=sampler,
        drop_last=True,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )
    return loader, sampler
