"""Reproducible sampling: the shuffle and each sample's augmentation depend on (seed, epoch) only.

The sampler runs in the main process and yields ``(index, epoch)`` keys, so that the dataset seeds each
sample's augmentation from (seed, epoch, index): batches are identical whatever ``num_workers`` is and
however workers are scheduled, and persistent workers still see the current epoch. Under DDP it shards
that one shuffle itself, so that the data order does not depend on the number of processes either.
"""

from __future__ import annotations

import itertools
import math
import random
import signal
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, get_worker_info


class SeededSampler(DistributedSampler):
    """Shuffles ``range(size)`` with a torch Generator seeded by (seed, epoch); yields ``(index, epoch)``.

    Under DDP (``num_replicas`` / ``rank`` default to the initialised process group's, as when Lightning
    calls ``train_dataloader``) rank r takes positions r, r + W, r + 2W, ... of the same shuffle, padded
    like ``DistributedSampler`` with its first keys to a multiple of W: the ranks' shards are disjoint
    (but for the padding) and cover the set, and the W ranks' k-th batches of b together are exactly the
    k-th batch of 1 process x W*b. It is a ``DistributedSampler`` so that Lightning keeps it rather than
    wrapping it in a ``DistributedSamplerWrapper``, whose second shuffle (seeded by PL_GLOBAL_SEED) would
    make the order depend on the number of processes.

    Lightning calls :meth:`set_epoch` before each epoch; without it, every new iteration moves to the next
    epoch so augmentations still change.
    """

    # DistributedSampler.__init__ is not called: it wants a dataset and an initialised process group
    def __init__(self, size: int, seed: int = 0, shuffle: bool = True, num_replicas: int | None = None,
                 rank: int | None = None) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        self.num_replicas = int(num_replicas if num_replicas is not None else dist.get_world_size() if distributed else 1)
        self.rank = int(rank if rank is not None else dist.get_rank() if distributed else 0)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank must be in [0, {self.num_replicas}), got {self.rank}")
        self.size, self.seed, self.shuffle = int(size), int(seed), bool(shuffle)
        self.drop_last = False
        self.num_samples = math.ceil(self.size / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas
        self.epoch = 0
        self._skip: tuple[int, int] | None = None  # (epoch, keys of this rank's shard to skip), see resume

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume(self, epoch: int, skip: int) -> None:
        """Make the next iteration epoch ``epoch`` without the first ``skip`` keys of this rank's shard (those
        a checkpoint's run already trained on): a mid-epoch resume then sees exactly the rest of the epoch.
        The epoch is set here too because a DataLoader with workers draws indices as soon as its iterator
        exists, which Lightning creates before it calls :meth:`set_epoch`."""
        self.epoch = int(epoch)
        self._skip = (int(epoch), int(skip))

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        self.epoch += 1
        if self.shuffle:
            gen = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0]))
            order = torch.randperm(self.size, generator=gen).tolist()
        else:
            order = list(range(self.size))
        if self.size:
            order = (order * math.ceil(self.total_size / self.size))[: self.total_size]  # pad with the first keys
        keys = order[self.rank :: self.num_replicas]
        if self._skip is not None:  # one iteration only, and only the epoch it was meant for
            skip_epoch, skip = self._skip
            self._skip = None
            keys = keys[skip:] if skip_epoch == epoch else keys
        return iter([(i, epoch) for i in keys])


class EndlessSampler(torch.utils.data.Sampler):
    """Shuffled ``(index, epoch)`` keys over ``range(size)``, epoch after epoch, forever (one process).

    For throughput benchmarks on a small dataset (the embedded sample has 11 training images): batches of
    any size are full and workers never wait at an epoch boundary, while each key still seeds its own
    augmentation as :class:`SeededSampler`'s do.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"EndlessSampler needs a non-empty dataset, got size {size}")
        self.size = int(size)

    def __len__(self) -> int:
        return 2**31 - 1  # a DataLoader asks for a length; the iterator never ends

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for epoch in itertools.count():
            for i in torch.randperm(self.size, generator=torch.Generator().manual_seed(epoch)).tolist():
                yield i, epoch


# the signals clusters send every process of a job ahead of its time limit (SLURM's --signal, submitit's USR2);
# the training process handles them (callbacks.interrupt), a data worker must outlive them
TIME_LIMIT_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


def init_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed Python's and NumPy's global generators from torch's worker seed
    (itself derived from the loader's seeded Generator, the epoch's iterator and the worker id), for any
    code that uses them (the pipeline's own randomness is seeded per sample); ignore the time-limit signals,
    which SLURM sends to the workers too: a worker started by spawn or forkserver (Python 3.14's default)
    has their default action, which ends the process, and the training run with it, before it can save."""
    for signum in TIME_LIMIT_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    info = get_worker_info()
    seed = (info.seed if info is not None else torch.initial_seed()) % 2**32
    random.seed(seed)
    np.random.seed(seed)
