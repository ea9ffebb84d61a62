"""Gradient accumulation trains as one batch of the window's images: k micro-batches of b against one batch of
k*b on the same images, the same LR and the same weights after the optimiser steps (to tolerance).

Each micro-batch's loss terms divide by the window's mean counts (valid offset cells, heat-map weights), which
the training loader reads a window ahead (``ResumableDataLoader``, ``window_counts``); with the micro-batches'
own counts the weights were off by 3.7 % of their change (2 steps of 8 images at 64 px), with the window's 1e-6. BatchNorm is kept in eval mode, SGD is the
optimiser: as in test_ddp_cpu.py, whose module docstring says why.
"""

from __future__ import annotations

import gc
import math
import weakref

import torch
from torch.utils.data import Dataset

from strongpose.data.resumable import ResumableDataLoader, with_window_counts
from strongpose.models.losses import COUNT_SCALE
from strongpose.data.sampling import SeededSampler
from strongpose.lit_module import StrongPoseModule
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


def _shares(batches) -> list[float]:
    return [int(batch["window_counts"]["short"]) / COUNT_SCALE for batch in batches]


def test_each_batch_gets_its_windows_mean_counts():
    batches = list(with_window_counts(iter(_batches([1, 2, 3, 4, 5])), accumulate=2))
    assert _shares(batches) == [1.5, 1.5, 3.5, 3.5, 2.5]  # the epoch's last window: its sum over k
    assert int(batches[0]["window_counts"]["skhm"]) == 15 * COUNT_SCALE
    # integers (fixed point): Lightning casts a batch's floats to float16 under 16-true (65504 at most)
    assert batches[0]["window_counts"]["skhm"].dtype == torch.int64
    # a resumed epoch starting at its batch 3: the first window is that batch alone
    assert _shares(with_window_counts(iter(_batches([4, 5, 6])), accumulate=2, first=3)) == [2.0, 5.5, 5.5]
    # limit_train_batches=3 (or overfit_batches): Lightning steps after the 3rd batch; the 4th is not trained
    assert _shares(with_window_counts(iter(_batches([1, 2, 3, 4])), accumulate=2, length=3))[:3] == [1.5, 1.5, 1.5]
    # batches without counts (targets encoded on the device) get none
    assert all("window_counts" not in b for b in with_window_counts(iter([{}, {}, {}]), accumulate=2))


def test_the_window_holds_no_batch_already_handed_on():
    alive = []

    class Batch(dict):  # weakly referenced (a plain dict cannot be)
        pass

    def batches():
        for value in range(8):
            batch = Batch(loss_counts={"short": float(value)})
            alive.append(weakref.ref(batch))
            yield batch

    for batch in with_window_counts(batches(), accumulate=4):
        del batch  # the consumer is done with it
        gc.collect()
        assert sum(ref() is not None for ref in alive) <= 4  # the window read ahead, not two


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


def test_an_epoch_cut_short_ends_its_last_window_where_lightning_steps(train_config, tmp_path, monkeypatch):
    """trainer.limit_train_batches=3 with 2 micro-batches per step: Lightning steps after the 3rd batch alone,
    whose counts must not include the 4th, never trained."""
    real_step = StrongPoseModule.training_step
    seen = []

    def step(self, batch, batch_idx):
        seen.append((dict(batch["loss_counts"]), {k: int(v) for k, v in batch["window_counts"].items()}))
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(StrongPoseModule, "training_step", step)
    train(train_config([*COMMON, "data.batch_size=1", "data.max_train_images=6", "trainer.accumulate_grad_batches=2",
                        "trainer.limit_train_batches=3", f"+callbacks.record.out={tmp_path}/record"],
                       output_dir=tmp_path, tiny=False))
    assert len(seen) == 3
    own, window = seen[2]
    assert window == {name: round(value / 2 * COUNT_SCALE) for name, value in own.items()}
