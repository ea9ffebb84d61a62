"""Batching that drops bad samples (a :class:`SkippedSample` or ``None`` from the dataset) and counts them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.data import default_collate, get_worker_info
from torch.utils._pytree import tree_flatten, tree_unflatten
from torch.utils.data._utils.collate import collate, default_collate_fn_map

from strongpose.models.losses import term_counts

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
    :class:`SkippedSample`, the bad samples that said why; a ``None`` item is counted but not named). With
    ``count_loss_terms`` (gradient accumulation) a batch with targets gets ``loss_counts`` too, what each loss term
    divides by (:func:`~strongpose.models.losses.term_counts`, floats: counted in the worker, ~0.26 ms per 512-px
    image, for :class:`~strongpose.data.resumable.ResumableDataLoader`'s accumulation windows).

    When every sample of a batch is bad, returns a batch of size 0 with the usual keys and map shapes
    (from ``make_empty()``, e.g. ``functools.partial(coco.empty_sample, codec, input_size)``; built only
    then, so workers do not carry it), so a training step can skip it by ``batch["image"].shape[0] == 0``.
    ``collate`` stacks the good samples (benchmarks compare ``torch.utils.data.default_collate``); it travels
    with the loader's collate_fn to the workers, whatever their start method.
    """

    def __init__(self, make_empty: Callable[[], dict], collate: Callable[[list], dict] | None = None,
                 count_loss_terms: bool = False) -> None:
        self.make_empty = make_empty
        self.collate = collate or packed_collate
        self.count_loss_terms = count_loss_terms

    def __call__(self, items: list[dict | SkippedSample | None]) -> dict:
        good = pad_people([item for item in items if isinstance(item, dict)])
        batch = self.collate(good) if good else _empty_like(default_collate(pad_people([self.make_empty()])))
        batch["num_skipped"] = len(items) - len(good)
        batch["skipped"] = [item for item in items if isinstance(item, SkippedSample)]
        if self.count_loss_terms and "targets" in batch:
            batch["loss_counts"] = term_counts(batch["targets"])
        return batch


def pad_people(samples: list[dict]) -> list[dict]:
    """Samples whose ``people`` (N, K, 3) differ in N, padded with zero rows (unlabelled: v = 0) to the
    largest N, at least 1, so that they stack (``encode_on="device"`` batches)."""
    if not samples or "people" not in samples[0]:
        return samples
    most = max(1, max(len(sample["people"]) for sample in samples))
    # F.pad's last pair pads the first dim (people) at its end
    return [{**sample, "people": F.pad(sample["people"], (0, 0, 0, 0, 0, most - len(sample["people"])))}
            for sample in samples]


class _Stack:
    """A tensor field of the batch, not stacked yet: the samples' tensors (a plain class, not a tuple: a leaf
    to pytree)."""

    __slots__ = ("tensors",)

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        self.tensors = tensors


def _defer(batch: list[torch.Tensor], *, collate_fn_map: dict | None = None) -> _Stack:
    return _Stack(list(batch))


def _pack(tree: Any) -> Any:
    """Every tensor of ``tree`` as a view of one buffer in shared memory, stacked there (the tree walked by
    torch's pytree: dicts, lists, tuples and namedtuples keep their types)."""
    leaves, spec = tree_flatten(tree)
    layout, total = [], 0
    for i, leaf in enumerate(leaves):
        if not isinstance(leaf, (_Stack, torch.Tensor)):
            continue
        first = leaf.tensors[0] if isinstance(leaf, _Stack) else leaf
        shape = (len(leaf.tensors), *first.shape) if isinstance(leaf, _Stack) else tuple(leaf.shape)
        nbytes = first.element_size() * torch.Size(shape).numel()
        layout.append((i, first.dtype, shape, total, nbytes))
        total += -(-nbytes // _ALIGN) * _ALIGN
    if not layout:
        return tree
    # as default_collate does in a worker: allocate in shared memory at once rather than copy there when
    # pickled; never 0 bytes (an empty mapping cannot be shared)
    storage = torch.UntypedStorage._new_shared(max(total, _ALIGN))
    buffer = torch.empty(0, dtype=torch.uint8).set_(storage)
    for i, dtype, shape, offset, nbytes in layout:
        view = buffer[offset:offset + nbytes].view(dtype).view(shape)
        if isinstance(leaves[i], _Stack):
            torch.stack(leaves[i].tensors, out=view)
        else:
            view.copy_(leaves[i])
        leaves[i] = view
    return tree_unflatten(leaves, spec)


def _opaque(tree: Any) -> bool:
    """Whether a container pytree does not know (a custom one collate rebuilt) sits among the leaves: its
    tensors were not stacked."""
    return any(isinstance(leaf, (Mapping, Sequence)) and not isinstance(leaf, (str, bytes))
               for leaf in tree_flatten(tree)[0])


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
    hold containers torch's pytree does not know, get default_collate itself."""
    if get_worker_info() is None or not all(type(sample) is dict for sample in samples):
        return default_collate(samples)  # no process boundary to cross (a fresh big buffer costs page faults)
    tree = collate(samples, collate_fn_map={**default_collate_fn_map, torch.Tensor: _defer})
    if _opaque(tree):  # torch's way for containers we cannot walk
        return default_collate(samples)
    return {key: _pack(value) for key, value in tree.items()}
