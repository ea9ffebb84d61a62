"""Reproducible sampling: the shuffle and each sample's augmentation depend on (seed, epoch) only.

The sampler runs in the main process and yields ``(index, epoch)`` keys, so that the dataset seeds each
sample's augmentation from (seed, epoch, index): batches are identical whatever ``num_workers`` is and
however workers are scheduled, and persistent workers still see the current epoch.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler, get_worker_info


class SeededSampler(Sampler[tuple[int, int]]):
    """Shuffles ``range(size)`` with a torch Generator seeded by (seed, epoch); yields ``(index, epoch)``.

    Lightning calls :meth:`set_epoch` before each epoch (also through its distributed wrapper); without
    it, every new iteration moves to the next epoch so augmentations still change.
    """

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True) -> None:
        self.size, self.seed, self.shuffle = int(size), int(seed), bool(shuffle)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        self.epoch += 1
        if self.shuffle:
            gen = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0]))
            order = torch.randperm(self.size, generator=gen).tolist()
        else:
            order = list(range(self.size))
        return iter([(i, epoch) for i in order])


def init_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed Python's and NumPy's global generators from torch's worker seed
    (itself derived from the loader's seeded Generator, the epoch's iterator and the worker id), for any
    code that uses them (the pipeline's own randomness is seeded per sample)."""
    info = get_worker_info()
    seed = (info.seed if info is not None else torch.initial_seed()) % 2**32
    random.seed(seed)
    np.random.seed(seed)
