"""Gradient accumulation trains as one batch of the window's images: k micro-batches of b against one batch of
k*b on the same images, the same LR and the same weights after the optimiser steps (to tolerance).

Each micro-batch's loss terms divide by the window's mean counts (valid offset cells, heat-map weights), which
the training loader reads a window ahead (``ResumableDataLoader``, ``window_counts``); with the micro-batches'
own counts the weights were off by 3.7 % of their change (2 steps of 8 images at 64 px), with the window's 1e-6. BatchNorm is kept in eval mode, SGD is the
optimiser: as in test_ddp_cpu.py, whose module docstring says why.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset

from strongpose.data.resumable import ResumableDataLoader, with_window_counts
from strongpose.data.sampling import SeededSampler
from strongpose.train import train

BASE_LR = 0.1
COMMON = [
    "logger=none", "trainer=cpu", "data.input_size=64", "data.max_train_images=8", "data.max_val_images=1",
    "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1", "trainer.enable_model_summary=false",
    "trainer.precision=32-true", "callbacks.ema=null", "callbacks.progress_bar=null", "model/optimizer=sgd",
    f"model.lr={BASE_LR}", "+callbacks.record._target_=scale_recorder.Recorder", "+callbacks.record.eval_batchnorm=true",
]


def _batches(counts: list[float]) -> list[dict]:
    return [{"loss_counts": {"short": value, "skhm": 10 * value}} for value in counts]


def _shares(batches: list[dict]) -> list[float]:
    return [float(batch["window_counts"]["short"]) for batch in batches]


def test_each_batch_gets_its_windows_mean_counts():
    batches = list(with_window_counts(iter(_batches([1, 2, 3, 4, 5])), accumulate=2))
    assert _shares(batches) == [1.5, 1.5, 3.5, 3.5, 2.5]  # the epoch's last window: its sum over k
    assert float(batches[0]["window_counts"]["skhm"]) == 15.0
    # a resumed epoch starting at its batch 3: the first window is that batch alone
    assert _shares(with_window_counts(iter(_batches([4, 5, 6])), accumulate=2, first=3)) == [2.0, 5.5, 5.5]
    # batches without counts (targets encoded on the device) get none
    assert all("window_counts" not in b for b in with_window_counts(iter([{}, {}, {}]), accumulate=2))


class _Counted(Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, key: tuple[int, int]) -> dict:
        return {"loss_counts": {"short": float(key[0])}}


def test_a_loader_resumed_inside_an_epoch_starts_inside_its_window():
    def loader(accumulate: int = 2) -> ResumableDataLoader:
        return ResumableDataLoader(_Counted(), batch_size=1, sampler=SeededSampler(6, shuffle=False),
                                   collate_fn=lambda items: items[0], accumulate_grad_batches=accumulate)

    assert _shares(loader()) == [0.5, 0.5, 2.5, 2.5, 4.5, 4.5]
    resumed = loader()
    resumed.load_state_dict({"epoch": 0, "batches": 3, "batch_size": 1, "world_size": 1})
    assert _shares(resumed) == [1.5, 4.5, 4.5]  # keys 3 | 4 5
    assert _shares(resumed) == [0.5, 0.5, 2.5, 2.5, 4.5, 4.5]  # the next epoch from its start
    assert "window_counts" not in next(iter(loader(accumulate=1)))


def test_two_accumulated_micro_batches_train_as_one_batch_of_their_images(train_config, tmp_path):
    weights, starts = {}, {}
    for name, layout in {"one": ["data.batch_size=4"],
                         "accumulated": ["data.batch_size=2", "trainer.accumulate_grad_batches=2"]}.items():
        out = tmp_path / name
        _, objects = train(train_config([*COMMON, *layout, f"+callbacks.record.out={out}/record"],
                                        output_dir=out, tiny=False))
        assert objects["trainer"].global_step == 2  # 8 images, 4 per optimiser step
        weights[name] = objects["model"].state_dict()
        starts[name] = torch.load(out / "record" / "initial.pt", weights_only=True)
    start = starts["one"]
    assert all(torch.equal(start[k], v) for k, v in starts["accumulated"].items())
    floats = [k for k, v in start.items() if v.is_floating_point()]
    change = math.sqrt(sum(float((weights["one"][k] - start[k]).square().sum()) for k in floats))
    gap = math.sqrt(sum(float((weights["accumulated"][k] - weights["one"][k]).square().sum()) for k in floats))
    # measured: 1.0e-6 of the change (float32 sums in another order); with each micro-batch's own counts 3.7e-2
    assert change > 0 and gap < 1e-4 * change, (gap, change)
