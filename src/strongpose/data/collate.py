"""Batching that drops bad samples (a :class:`SkippedSample` or ``None`` from the dataset) and counts them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch.utils.data import default_collate, get_worker_info
from torch.utils.data._utils.collate import collate, default_collate_fn_map

_ALIGN = 64  # bytes: every view starts where any dtype (and a cache line) may start


class SkippedSample(NamedTuple):
    """What the dataset returns for a sample it cannot use: enough for the main process to name it."""

    image_id: int
    file_name: str
    reason: str


def _empty_like(batch: Any) -> Any:
    """Zero-length version of a collated batch (every tensor sliced to ``[:0]``)."""
    if isinstance(batch, torch.Tensor):
        return batch[:0]
    if isinstance(batch, dict):
        return {k: _empty_like(v) for k, v in batch.items()}
    return batch


class SkipBadCollate:
    """``collate_fn``: collate the good samples (:func:`packed_collate`) and add ``num_skipped`` (int) and ``skipped`` (list of
    :class:`SkippedSample`, the bad samples that said why; a ``None`` item is counted but not named).

    When every sample of a batch is bad, returns a batch of size 0 with the usual keys and map shapes
    (from ``make_empty()``, e.g. ``functools.partial(coco.empty_sample, codec, input_size)``; built only
    then, so workers do not carry it), so a training step can skip it by ``batch["image"].shape[0] == 0``.
    """

    def __init__(self, make_empty: Callable[[], dict]) -> None:
        self.make_empty = make_empty

    def __call__(self, items: list[dict | SkippedSample | None]) -> dict:
        good = [item for item in items if isinstance(item, dict)]
        batch = packed_collate(good) if good else _empty_like(default_collate([self.make_empty()]))
        batch["num_skipped"] = len(items) - len(good)
        batch["skipped"] = [item for item in items if isinstance(item, SkippedSample)]
        return batch


class _Stack:
    """A tensor field of the batch, not stacked yet: the samples' tensors (a plain class, not a tuple, so that
    no container walk mistakes it for one)."""

    __slots__ = ("tensors",)

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        self.tensors = tensors


def _defer(batch: list[torch.Tensor], *, collate_fn_map: dict | None = None) -> _Stack:
    return _Stack(list(batch))


def _leaves(tree: Any) -> list:
    """The tensors and pending stacks of a plain dict / list tree (other containers are left alone)."""
    if isinstance(tree, (_Stack, torch.Tensor)):
        return [tree]
    if type(tree) is dict:
        return [leaf for value in tree.values() for leaf in _leaves(value)]
    if type(tree) is list:
        return [leaf for value in tree for leaf in _leaves(value)]
    return []


def _fill(tree: Any, views: dict[int, torch.Tensor]) -> Any:
    if isinstance(tree, (_Stack, torch.Tensor)):
        return views[id(tree)]
    if type(tree) is dict:
        return {key: _fill(value, views) for key, value in tree.items()}
    if type(tree) is list:
        return [_fill(value, views) for value in tree]
    return tree


def _pending(tree: Any) -> bool:
    """Whether a stack is still unmade anywhere in ``tree`` (inside a container _fill does not walk)."""
    if isinstance(tree, _Stack):
        return True
    if isinstance(tree, Mapping):
        return any(_pending(value) for value in tree.values())
    if isinstance(tree, (list, tuple)):
        return any(_pending(value) for value in tree)
    return False


def _pack(tree: Any) -> Any:
    """Every tensor of ``tree`` as a view of one buffer in shared memory, stacked there."""
    leaves = _leaves(tree)
    if not leaves:
        return tree
    layout, total = [], 0
    for leaf in leaves:
        first = leaf.tensors[0] if isinstance(leaf, _Stack) else leaf
        shape = (len(leaf.tensors), *first.shape) if isinstance(leaf, _Stack) else tuple(leaf.shape)
        nbytes = first.element_size() * torch.Size(shape).numel()
        layout.append((leaf, first.dtype, shape, total, nbytes))
        total += -(-nbytes // _ALIGN) * _ALIGN
    # as default_collate does in a worker: allocate in shared memory at once rather than copy there when
    # pickled; never 0 bytes (an empty mapping cannot be shared)
    storage = torch.UntypedStorage._new_shared(max(total, _ALIGN))
    buffer = torch.empty(0, dtype=torch.uint8).set_(storage)
    views = {}
    for leaf, dtype, shape, offset, nbytes in layout:
        view = buffer[offset:offset + nbytes].view(dtype).view(shape)
        if isinstance(leaf, _Stack):
            torch.stack(leaf.tensors, out=view)
        else:
            view.copy_(leaf)
        views[id(leaf)] = view
    return _fill(tree, views)


def packed_collate(samples: list[dict]) -> dict:
    """``default_collate`` of dict samples; in a DataLoader worker, each top-level entry's tensors stacked into
    views of one shared-memory buffer.

    Why not default_collate: a worker hands each storage of a batch to the main process separately (with
    torch's default file_descriptor sharing, one socket round trip per storage), and on a GPU the thread
    that receives them (the pin-memory thread) needs the GIL for each while the training loop holds it
    (experiments/probe_loader_gil.py on the CPU: 1.4-1.5 batches/s with default_collate vs 9.8-10.0 packed
    against a pure-Python main thread, 10.5 vs 11.9 against one running small torch ops; on a GPU: not yet
    measured). Our batches hold 13 tensors; packed by entry (image, targets, meta) they
    travel as 3 storages. The meta entry gets its own small buffer, so that keeping an image id alive does not
    keep the batch's maps alive (one target map kept alive keeps all of them: ~50 MB at batch 32, 512 px).
    Same keys, shapes, dtypes and values as default_collate (tested); samples that are not plain dicts, or
    hold tensors in tuples, get default_collate itself."""
    if get_worker_info() is None or not all(type(sample) is dict for sample in samples):
        return default_collate(samples)  # no process boundary to cross (a fresh big buffer costs page faults)
    tree = collate(samples, collate_fn_map={**default_collate_fn_map, torch.Tensor: _defer})
    batch = {key: _pack(value) for key, value in tree.items()}
    if _pending(batch):  # a tensor inside a tuple, namedtuple or custom container: torch's way instead
        return default_collate(samples)
    return batch
