"""Batching that drops bad samples (a :class:`SkippedSample` or ``None`` from the dataset) and counts them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch.utils.data import default_collate


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
    """``collate_fn``: default-collate the good samples and add ``num_skipped`` (int) and ``skipped`` (list of
    :class:`SkippedSample`, the bad samples that said why; a ``None`` item is counted but not named).

    When every sample of a batch is bad, returns a batch of size 0 with the usual keys and map shapes
    (from ``make_empty()``, e.g. ``functools.partial(coco.empty_sample, codec, input_size)``; built only
    then, so workers do not carry it), so a training step can skip it by ``batch["image"].shape[0] == 0``.
    """

    def __init__(self, make_empty: Callable[[], dict]) -> None:
        self.make_empty = make_empty

    def __call__(self, items: list[dict | SkippedSample | None]) -> dict:
        good = [item for item in items if isinstance(item, dict)]
        batch = default_collate(good) if good else _empty_like(default_collate([self.make_empty()]))
        batch["num_skipped"] = len(items) - len(good)
        batch["skipped"] = [item for item in items if isinstance(item, SkippedSample)]
        return batch
