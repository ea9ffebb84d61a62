"""Host waits of a training step (strongpose.host_syncs), counted on the CPU: on a GPU each one makes the host
wait for the whole step queued so far. A step of the GPU preset reads the device once (the non-finite
guard's decision); Lightning's per-batch read of progress-bar values, the EMA's update count and
``self.log`` of Python numbers are gone, and a new per-step read makes the test fail."""

from __future__ import annotations

import sys
import time
import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback

from strongpose.callbacks import ProgressBar
from strongpose.collectives import any_rank, flags_of_any_rank
from strongpose.faults import (InterruptCheckpoint, NonFiniteLossGuard, _time_based_validation_due,
                               _validation_next, validation_or_end_next)
from strongpose.host_syncs import CountHostSyncs, HostSyncCounter
from strongpose.train import train

GPU_PRESET_ON_THE_CPU = [
    "trainer=gpu", "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.benchmark=false",
    "logger=csv", "data.input_size=64", "data.batch_size=2", "data.max_train_images=null", "data.num_workers=0",
    "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=100", "trainer.enable_model_summary=false",
    "+callbacks.host_syncs._target_=strongpose.host_syncs.CountHostSyncs", "+callbacks.host_syncs.report=false",
]


def test_the_counter_counts_device_reads_and_data_dependent_shapes_not_host_numbers():
    with HostSyncCounter() as syncs:
        x = torch.randn(6)
        float(x.sum())  # .item() of a computed tensor: a wait on a GPU
        bool((x > 0).any())
        x[x > 0]  # the mask's count sizes the output
        x.nonzero()
        x[x > 0] = 0.0  # a masked_fill_: no wait
        x.cpu().tolist()  # one copy to the host (the list is read from the copy)
        count = torch.tensor(3.0)  # made from a Python number: stays on the host in a GPU run
        (count * 2).item()
        count.tolist()
        syncs.counting = False
        x.sum().item()  # not counting
    ops = [event.op.split(".")[1] for event in syncs.events]
    assert ops == ["_local_scalar_dense", "_local_scalar_dense", "index", "nonzero", "cpu"]
    assert torch.Tensor.cpu is torch._C.TensorBase.cpu  # the wrapped methods put back
    assert syncs.events[0].where.startswith(f"tests/test_scale/{__name__.rsplit('.', 1)[-1]}.py:")


def test_a_step_of_the_gpu_preset_reads_the_device_once(train_config, tmp_path):
    # the bar's once-a-second read left out (a slow CI step would make it every step); its epoch-end read stays
    cfg = train_config([*GPU_PRESET_ON_THE_CPU, "callbacks.progress_bar.metrics_every_s=1e9"], output_dir=tmp_path)
    assert cfg.trainer.log_every_n_steps >= 50  # the GPU preset logs (a read of every logged value) seldom
    _, objects = train(cfg)
    (counted,) = [c for c in objects["callbacks"] if isinstance(c, CountHostSyncs)]
    assert counted.batches == 12  # 11 images, batch 2: 6 steps an epoch
    per_step = counted.counter.per_step()
    # the steps inside an epoch (the first and the epoch ends read more: new logged names, the bar's refresh)
    inside = [1, 2, 3, 4, 7, 8, 9, 10]
    assert {step: per_step.get(step, 0) for step in inside} == dict.fromkeys(inside, 1), counted.summary()
    sources = counted.counter.sources(set(inside))
    assert len(sources) == 1 and "strongpose/faults.py" in next(iter(sources))[1], sources
    assert counted.summary()[-1].startswith("steps=12 logging_steps=0 host_syncs_per_step=1 max=")

    # the training loss still reaches the bar, read from the logged values rather than through prog_bar
    (bar,) = [c for c in objects["callbacks"] if isinstance(c, ProgressBar)]
    shown = bar.get_metrics(objects["trainer"], objects["model"])
    assert isinstance(shown["train/loss"], float) and shown["train/loss"] > 0
    assert "train/images_per_sec" in shown


def test_the_bar_reads_the_loss_at_most_every_metrics_every_s(monkeypatch):
    clock = iter([0.0, 0.4, 0.9, 1.2, 1.5])
    monkeypatch.setattr("strongpose.callbacks.time.perf_counter", lambda: next(clock))
    monkeypatch.setattr("lightning.pytorch.callbacks.TQDMProgressBar.get_metrics", lambda self, t, m: {})
    reads = []

    class Logged(dict):
        def __getitem__(self, name):
            reads.append(name)
            return torch.tensor(float(len(reads)))

    trainer = SimpleNamespace(callback_metrics=Logged({"train/loss": None}), global_step=0)
    bar = ProgressBar(metrics_every_s=1.0)
    bar._in_train_batch = True  # as during on_train_batch_end  # noqa: SLF001
    shown = [bar.get_metrics(trainer, None)["train/loss"] for _ in range(4)]  # at 0, 0.4, 0.9, 1.2 s
    assert shown == [1.0, 1.0, 1.0, 2.0] and len(reads) == 2
    bar._in_train_batch = False  # an epoch's end or validation's: a fresh read  # noqa: SLF001
    assert bar.get_metrics(trainer, None)["train/loss"] == 3.0


def test_into_a_file_the_bar_is_redrawn_every_file_every_s_and_at_its_end(monkeypatch):
    clock = iter([0.0, 10.0, 31.0, 40.0])
    monkeypatch.setattr("strongpose.callbacks.time.perf_counter", lambda: next(clock))
    monkeypatch.setattr("sys.stdout.isatty", lambda: False)  # a SLURM log
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)  # (a notebook's stdout is no TTY either)
    bar = ProgressBar(file_every_s=30.0)
    assert [bar._should_update(n, 5) for n in (1, 2, 3, 4, 5)] == [True, False, True, False, True]  # noqa: SLF001
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)  # a terminal: every batch
    assert all(bar._should_update(n, 5) for n in (1, 2, 3))  # noqa: SLF001


@pytest.fixture
def one_process_group(tmp_path):
    """A gloo group of this process alone: an all-reduce returns its input."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield SimpleNamespace(world_size=2, strategy=SimpleNamespace(root_device=torch.device("cpu")))
    dist.destroy_process_group()


def test_under_ddp_the_interrupt_flag_travels_with_the_guards_all_reduce(one_process_group):
    interrupt = InterruptCheckpoint()
    trainer = one_process_group
    trainer.callbacks, trainer.global_step = [interrupt], 0
    guard, finite = NonFiniteLossGuard(), torch.tensor(1.0)
    interrupt.on_train_batch_start(trainer, None, {}, 0)
    with HostSyncCounter() as syncs:
        assert guard.skip(finite, {}, trainer) is False
    assert interrupt._requested_on_any_rank is False  # noqa: SLF001
    assert [e.op for e in syncs.events] == ["Tensor.tolist"]  # one read of both all-reduced flags
    interrupt._requested = True  # as Ctrl-C / SIGUSR1 set it  # noqa: SLF001
    interrupt.on_train_batch_start(trainer, None, {}, 1)
    assert interrupt._requested_on_any_rank is None  # noqa: SLF001
    assert guard.skip(finite, {}, trainer) is False
    assert interrupt._requested_on_any_rank is True  # noqa: SLF001
    assert guard.skip(torch.tensor(float("nan")), {"meta": {"image_id": [7]}}, trainer) is True


def test_the_step_before_validation_or_the_end_reads_the_interrupt_flag_itself():
    # there a signal that came after the guard's all-reduce must not wait for the validation to end
    def trainer(batches=10, every=10, max_steps=-1, step=3, per_epoch=1, total=None, last=False, stop=False,
                epoch=0, validation=True, seconds=None, can_stop=True, since_validation=0.0):
        loop = SimpleNamespace(total_batch_idx=total, batch_progress=SimpleNamespace(is_last_batch=last))
        return SimpleNamespace(num_training_batches=batches, val_check_batch=every, max_steps=max_steps,
                               global_step=step, check_val_every_n_epoch=per_epoch, should_stop=stop,
                               fit_loop=SimpleNamespace(epoch_loop=loop, _can_stop_early=can_stop),
                               current_epoch=epoch, enable_validation=validation, _val_check_time_interval=seconds,
                               _last_val_time=time.monotonic() - since_validation)
    assert [validation_or_end_next(trainer(), i) for i in (0, 8, 9)] == [False, False, True]
    assert [validation_or_end_next(trainer(every=4), i) for i in (2, 3, 7)] == [False, True, True]
    assert validation_or_end_next(trainer(batches=float("inf"), every=float("inf")), 5) is False
    assert validation_or_end_next(trainer(batches=float("inf"), every=float("inf"), last=True), 5) is True
    assert validation_or_end_next(trainer(max_steps=3, step=3), 0) is True
    assert validation_or_end_next(trainer(stop=True), 0) is True  # max_time, early stopping
    # check_val_every_n_epoch=None: every val_check_batch batches of the run, across epochs
    assert validation_or_end_next(trainer(every=4, per_epoch=None, total=11), 1) is True
    assert validation_or_end_next(trainer(every=4, per_epoch=None, total=12), 2) is False
    # a time-based val_check_interval: Lightning decides by each rank's clock, so every batch reads the flag
    assert validation_or_end_next(trainer(every=None, per_epoch=None, seconds=60.0), 2) is True
    # validation alone (the mid-window save's test): not in an epoch that does not validate, nor without a
    # validation loop; the end of the epoch still counts for the read above
    assert _validation_next(trainer(every=4, per_epoch=2, epoch=0), 3) is False
    assert _validation_next(trainer(every=4, per_epoch=2, epoch=1), 3) is True
    assert _validation_next(trainer(every=4, validation=False), 3) is False
    assert validation_or_end_next(trainer(validation=False), 9) is True
    assert _validation_next(trainer(every=float("inf"), batches=10), 9) is True
    assert _validation_next(trainer(every=float("inf"), batches=10), 8) is False
    # a requested stop validates first only once min_epochs / min_steps are met (Lightning's _can_stop_early)
    assert _validation_next(trainer(stop=True), 0) is True
    assert _validation_next(trainer(stop=True, can_stop=False), 0) is False
    # time-based: validation due by this rank's clock (checked a moment after the hooks: 1 s early)
    assert _time_based_validation_due(trainer(every=None, per_epoch=None)) is True  # batch-based: no clock
    assert _time_based_validation_due(trainer(every=None, per_epoch=None, seconds=60.0, since_validation=30)) is False
    assert _time_based_validation_due(trainer(every=None, per_epoch=None, seconds=60.0, since_validation=59.5)) is True


def test_flags_of_any_rank_take_device_tensors_and_bools(one_process_group):
    assert any_rank(torch.tensor(True), one_process_group) is True
    assert any_rank(~torch.isfinite(torch.tensor(1.0)), one_process_group) is False
    assert any_rank(True, one_process_group) is True and any_rank(False, None) is False
    assert flags_of_any_rank([torch.tensor(False), True, False], one_process_group) == [False, True, False]
    assert flags_of_any_rank([1, 0], SimpleNamespace(world_size=1)) == [True, False]


class CudaSyncWarnings(Callback):
    """Counts, per training step, the warnings of ``torch.cuda.set_sync_debug_mode("warn")``: what the
    CPU count above stands for, measured where it matters (a GPU test: skipped without one)."""

    def __init__(self) -> None:
        self.per_step: dict[int, list[str]] = {}
        self._records: list = []
        self._catch = None
        self._step = -1

    def on_train_start(self, trainer, pl_module) -> None:
        self._catch = warnings.catch_warnings(record=True)
        self._records = self._catch.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._close_step()
        self._step += 1

    def on_train_end(self, trainer, pl_module) -> None:
        self._close_step()
        torch.cuda.set_sync_debug_mode("default")
        self._catch.__exit__(None, None, None)

    def _close_step(self) -> None:
        if self._step >= 0:
            self.per_step[self._step] = [f"{w.filename}:{w.lineno}" for w in self._records
                                         if "synchronizing" in str(w.message)]
        self._records.clear()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.set_sync_debug_mode)")
def test_on_a_gpu_a_step_of_the_gpu_preset_synchronises_once(train_config, tmp_path):
    cfg = train_config(["trainer=gpu", "logger=csv", "data.input_size=64", "data.batch_size=2",
                        "data.max_train_images=null", "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=100",
                        "callbacks.progress_bar.metrics_every_s=1e9",
                        f"+callbacks.sync._target_={__name__}.CudaSyncWarnings"], output_dir=tmp_path)
    _, objects = train(cfg)
    (counted,) = [c for c in objects["callbacks"] if isinstance(c, CudaSyncWarnings)]
    inside = [1, 2, 3, 4, 7, 8, 9, 10]
    assert {s: len(counted.per_step[s]) for s in inside} == dict.fromkeys(inside, 1), counted.per_step
