"""SeededSampler under DDP: disjoint shards that cover the set, one shuffle per epoch whatever the number
of processes, and Lightning keeps it instead of wrapping it in a second shuffle."""

from __future__ import annotations

import itertools

import pytest
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from strongpose.data.sampling import EndlessSampler, SeededSampler


def _keys(sampler: SeededSampler, epoch: int) -> list[tuple[int, int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize(("size", "world"), [(8, 2), (11, 2), (10, 3), (1, 4)])
def test_shards_are_disjoint_cover_the_set_and_have_equal_length(size, world):
    shards = [_keys(SeededSampler(size, seed=5, num_replicas=world, rank=r), epoch=3) for r in range(world)]
    assert {len(s) for s in shards} == {len(SeededSampler(size, num_replicas=world, rank=0))} == {-(-size // world)}
    assert {epoch for s in shards for _, epoch in s} == {3}
    indices = [i for s in shards for i, _ in s]
    assert set(indices) == set(range(size))
    padding = len(indices) - size  # the first keys of the shuffle, repeated so every rank has as many
    assert 0 <= padding < world and len(set(indices)) == size


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_the_ranks_kth_batches_make_the_single_process_kth_batch(batch):
    world, size = 2, 12
    single = [i for i, _ in _keys(SeededSampler(size, seed=1), epoch=0)]
    ranks = [[i for i, _ in _keys(SeededSampler(size, seed=1, num_replicas=world, rank=r), epoch=0)]
             for r in range(world)]
    for k in range(size // (world * batch)):
        together = {i for shard in ranks for i in shard[k * batch:(k + 1) * batch]}
        assert together == set(single[k * world * batch:(k + 1) * world * batch])


def test_set_epoch_reshuffles_reproducibly():
    sampler = SeededSampler(50, seed=0, num_replicas=2, rank=1)
    first, second = _keys(sampler, 0), _keys(sampler, 1)
    assert [i for i, _ in first] != [i for i, _ in second]
    assert _keys(SeededSampler(50, seed=0, num_replicas=2, rank=1), 1) == second
    assert [i for i, _ in _keys(SeededSampler(50, seed=1, num_replicas=2, rank=1), 1)] != [i for i, _ in second]
    assert [epoch for _, epoch in sampler] == [2] * 25  # no set_epoch: the next iteration moves on


def test_without_a_process_group_it_is_one_replica_and_rejects_a_bad_rank():
    sampler = SeededSampler(7)
    assert (sampler.num_replicas, sampler.rank, len(sampler)) == (1, 0, 7)
    with pytest.raises(ValueError, match="rank"):
        SeededSampler(7, num_replicas=2, rank=2)


def test_lightning_keeps_it_under_ddp():
    """Lightning wraps any other sampler in a DistributedSamplerWrapper that shuffles the sampler's order
    again (training loaders always get shuffle=True), which would tie the order to the world size."""
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False)
    requires_wrapper = trainer._data_connector._requires_distributed_sampler  # noqa: SLF001
    assert requires_wrapper(DataLoader(range(8), shuffle=True))  # what happens to other samplers
    assert not requires_wrapper(DataLoader(range(8), sampler=SeededSampler(8, num_replicas=2, rank=0)))


def test_seed_and_epoch_are_not_interchangeable():
    """(seed 0, epoch 1) and (seed 1, epoch 0) are different shuffles: a seed sweep must not replay another
    seed's epochs."""
    assert [i for i, _ in _keys(SeededSampler(50, seed=0), 1)] != [i for i, _ in _keys(SeededSampler(50, seed=1), 0)]


def test_the_endless_sampler_reshuffles_every_epoch():
    keys = list(itertools.islice(iter(EndlessSampler(20)), 60))
    epochs = [[i for i, e in keys if e == epoch] for epoch in range(3)]
    assert all(sorted(order) == list(range(20)) for order in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
