"""Batch order as a pure function of (seed, step), which is what makes resume exact.

Epoch e visits a seeded permutation of the dataset; step s reads batch s mod (n // batch) of epoch
s // (n // batch). Indices are visit ids, e·n + position, so a dataset can draw per-visit randomness (which
augmentation, which caption) that differs between epochs yet is fixed by the step. A resumed run builds the
sampler at its checkpoint step and sees the very batches an uninterrupted run would have seen, whatever the
number of loader workers.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class StepBatchSampler(Sampler[list[int]]):
    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int,
        start_step: int,
        end_step: int,
        rows: slice = slice(None),
    ) -> None:
        """`rows`: the part of each batch this process reads (its rank's share in a multi-process trial)."""
        if num_samples < batch_size:
            raise ValueError(f"the training split has {num_samples} samples, fewer than one batch ({batch_size})")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.start_step, self.end_step, self.rows = start_step, end_step, rows
        self.batches_per_epoch = num_samples // batch_size  # the ragged tail of each epoch is dropped

    def epoch_permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_samples, generator=generator)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, permutation = -1, torch.empty(0, dtype=torch.long)
        for step in range(self.start_step, self.end_step):
            step_epoch, batch = divmod(step, self.batches_per_epoch)
            if step_epoch != epoch:
                epoch, permutation = step_epoch, self.epoch_permutation(step_epoch)
            positions = permutation[batch * self.batch_size : (batch + 1) * self.batch_size]
            yield (positions[self.rows] + epoch * self.num_samples).tolist()  # visit ids: epoch·n + position

    def __len__(self) -> int:
        return self.end_step - self.start_step
