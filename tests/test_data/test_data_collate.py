"""packed_collate: default_collate's batch, its tensors travelling from a worker as one storage per entry."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.multiprocessing.reductions as reductions
from torch.utils.data import DataLoader, Dataset, default_collate

from strongpose.data.collate import packed_collate
from strongpose.data.datamodule import COCOKeypointDataModule


class Mixed(Dataset):
    """Samples with every kind of field a batch may hold: dtypes of 1, 2 and 4 bytes, odd sizes, numpy,
    ints, strings, a list of tensors."""

    def __len__(self) -> int:
        return 5

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        return {"image": torch.randint(0, 255, (3, 5, 7), dtype=torch.uint8, generator=g),
                "targets": {"a": torch.randn(3, 3, generator=g).half(), "b": torch.rand(7, generator=g) > 0.5,
                            "c": torch.randn(1, 2, 3, generator=g)},
                "meta": {"image_id": 100 + i, "affine": np.full((2, 3), i, np.float32)},
                "name": f"img{i}", "pairs": [torch.full((2,), float(i)), torch.full((3,), i, dtype=torch.int64)]}


def same(a, b) -> None:
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            same(x, y)
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    else:
        assert a == b


def storages(tree) -> set[int]:
    if isinstance(tree, torch.Tensor):
        return {tree.untyped_storage().data_ptr()}
    values = tree.values() if isinstance(tree, dict) else tree if isinstance(tree, list) else []
    return set().union(*[storages(v) for v in values]) if values else set()


def test_a_workers_packed_batch_equals_default_collate_with_one_storage_per_entry():
    data = Mixed()
    loader = DataLoader(data, batch_size=3, num_workers=1, collate_fn=packed_collate)
    batches = list(loader)
    assert [len(b["name"]) for b in batches] == [3, 2]
    for start, batch in zip((0, 3), batches):
        expected = default_collate([data[i] for i in range(start, min(start + 3, len(data)))])
        same(expected, batch)
        per_entry = [storages(batch[key]) for key in ("image", "targets", "meta", "pairs")]
        assert [len(s) for s in per_entry] == [1, 1, 1, 1]  # each entry: views of one buffer
        assert len(set().union(*per_entry)) == 4  # and the entries do not share one


class Box(NamedTuple):
    corners: torch.Tensor
    label: int


class WithNamedTuple(Mixed):
    def __getitem__(self, i: int) -> dict:
        return {**super().__getitem__(i), "box": Box(torch.full((2, 2), float(i)), i),
                "empty": torch.zeros(0, 4)}


def test_namedtuples_pack_too_and_empty_fields_get_a_buffer():
    data = WithNamedTuple()
    batch = next(iter(DataLoader(data, batch_size=3, num_workers=1, collate_fn=packed_collate)))
    same(default_collate([data[i] for i in range(3)]), batch)  # the namedtuple holds tensors, not stacks
    assert isinstance(batch["box"], Box) and isinstance(batch["box"].corners, torch.Tensor)
    only_empty = next(iter(DataLoader([{"x": torch.zeros(0)}] * 2, batch_size=2, num_workers=1,
                                      collate_fn=packed_collate)))
    assert only_empty["x"].shape == (2, 0)  # a 0-byte entry still gets a (non-empty) buffer


def test_a_batch_crosses_the_process_boundary_as_three_storages(codec, monkeypatch):
    if torch.multiprocessing.get_sharing_strategy() != "file_descriptor":
        return  # another strategy passes storages by name: nothing to count here
    data = COCOKeypointDataModule(codec, input_size=64, batch_size=3, num_workers=1)
    data.setup("fit")
    batches = iter(data.val_dataloader())  # the worker is forked here, with the real reduction
    received = []
    rebuild = reductions.rebuild_storage_fd  # what unpickling calls per storage, in this process
    monkeypatch.setattr(reductions, "rebuild_storage_fd", lambda *a: received.append(1) or rebuild(*a))
    next(batches)
    assert len(received) == 3


def test_in_the_main_process_it_is_default_collate():
    items = [Mixed()[i] for i in range(3)]
    batch = packed_collate(items)
    same(default_collate(items), batch)
    assert len(storages(batch["targets"])) == 3  # no packing where nothing crosses a process boundary


def test_the_data_modules_batches_travel_as_three_storages(codec):
    data = COCOKeypointDataModule(codec, input_size=64, batch_size=3, num_workers=1)
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    tensors = [batch["image"], *batch["targets"].values(), *batch["meta"].values()]
    assert len(tensors) == 13 and len(storages(tensors)) == 3
    reference = COCOKeypointDataModule(codec, input_size=64, batch_size=3, num_workers=0)
    reference.setup("fit")
    same({k: v for k, v in next(iter(reference.val_dataloader())).items()}, batch)
