import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader

from strongpose.callbacks import EMA
from strongpose.host_syncs import HostSyncCounter


def test_ema_decay_warms_up_to_its_final_value():
    ema = EMA(decay=0.999)
    assert ema.current_decay(1) == pytest.approx(2 / 11)
    assert ema.current_decay(100) == pytest.approx(101 / 110)
    assert ema.current_decay(100_000) == 0.999
    assert EMA(decay=0.9, warmup=False).current_decay(1) == 0.9
    with pytest.raises(ValueError):
        EMA(decay=1.5)


def test_ema_update_averages_floats_and_copies_integer_buffers():
    ema = EMA(decay=0.5, warmup=False)
    model = torch.nn.BatchNorm1d(2)
    averaged = AveragedModel(model, use_buffers=True, multi_avg_fn=ema._update)
    with torch.no_grad():
        model.weight.fill_(3.0)
        model.num_batches_tracked.fill_(7)
    averaged.update_parameters(model)  # first update copies
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.num_batches_tracked.fill_(9)
    averaged.update_parameters(model)
    assert torch.allclose(averaged.module.weight, torch.full((2,), 2.0))
    assert int(averaged.module.num_batches_tracked) == 9


def test_ema_updates_from_start_step_every_n_steps():
    ema = EMA(update_every_n_steps=2, start_step=4)
    assert [s for s in range(10) if ema.should_update(step_idx=s)] == [4, 6, 8]
    assert not ema.should_update(epoch_idx=3)


def test_ema_update_matches_averaged_models_without_reading_the_device():
    # the callback's own update (the count kept on the host) against AveragedModel.update_parameters with the
    # same averaging, which reads n_averaged on the host: same weights, statistics and count, through the
    # first (copying) update, the warm-up and an integer buffer; then a resume from a checkpoint continues
    # the count (read once, while loading)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = EMA(decay=0.99)
    reference = AveragedModel(model, use_buffers=True, multi_avg_fn=ema._update)
    ema._average_model = AveragedModel(model, use_buffers=True)  # what WeightAveraging.setup makes  # noqa: SLF001

    def step_and_update(ema: EMA, counter: HostSyncCounter) -> None:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.randn(8, 3))  # new BatchNorm statistics and num_batches_tracked
        counter.counting = True
        ema.update_average(model)
        counter.counting = False
        reference.update_parameters(model)  # 3 reads an update: n_averaged == 0, > 0, int(...)

    with HostSyncCounter(counting=False) as syncs:
        for _ in range(3):
            step_and_update(ema, syncs)
        checkpoint = {"state_dict": model.state_dict()}  # as Lightning saves it, then the callback rewrites it
        ema.on_save_checkpoint(None, model, checkpoint)
        resumed = EMA(decay=0.99)
        resumed._average_model = AveragedModel(model, use_buffers=True)  # noqa: SLF001
        resumed.on_load_checkpoint(None, model, checkpoint)
        for _ in range(2):
            step_and_update(resumed, syncs)
    assert syncs.events == []
    got, expected = resumed._average_model.state_dict(), reference.state_dict()  # noqa: SLF001
    assert got.keys() == expected.keys() and int(got["n_averaged"]) == 5
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-7, msg=name)
    assert int(got["module.1.num_batches_tracked"]) == 5


class _Line(L.LightningModule):
    """y = w x fitted to y = 3 x: the smallest module that trains and validates."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.validated: list[float] = []

    def training_step(self, batch, batch_idx):
        return ((self.w * batch - 3 * batch) ** 2).mean()

    def validation_step(self, batch, batch_idx):
        self.validated.append(float(self.w))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_ema_before_its_start_step_is_the_trained_model_not_the_initial_one():
    """EMA(start_step=N): until step N validation, checkpoints and the model at the end of a shorter run
    are the weights trained so far (the average is made from a copy of the initial weights at setup)."""
    model = _Line()
    data = DataLoader(torch.ones(4, 1), batch_size=2)
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[EMA(decay=0.9, start_step=100)])
    trainer.fit(model, data, data)
    assert len(model.validated) == 4 and all(w > 1.0 for w in model.validated)  # not the initial 0
    assert float(model.w) == pytest.approx(model.validated[-1]) and float(model.w) > 1.0


def _sync_worker(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
        ema = EMA()
        ema._average_model = AveragedModel(model, use_buffers=True)  # what WeightAveraging.setup makes  # noqa: SLF001
        bn = ema._average_model.module[1]  # noqa: SLF001
        bn.running_mean.fill_(float(rank))  # each rank's own batches' statistics
        bn.running_var.fill_(1.0 + 2 * rank)
        bn.num_batches_tracked.fill_(7)
        ema.sync_buffers()
        torch.save({k: v.clone() for k, v in bn.state_dict().items()}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_ema_averages_batchnorm_statistics_over_the_ranks(tmp_path):
    """Under DDP each rank's average follows its own batches' BatchNorm statistics: before a validation or a
    checkpoint they are averaged, so that every rank validates the model that is saved."""
    mp.spawn(_sync_worker, args=(str(tmp_path / "store"), str(tmp_path / "bn")), nprocs=2, join=True)
    states = [torch.load(tmp_path / f"bn.{rank}", weights_only=True) for rank in range(2)]
    for state in states:
        assert torch.equal(state["running_mean"], torch.full((2,), 0.5))
        assert torch.equal(state["running_var"], torch.full((2,), 2.0))
        assert int(state["num_batches_tracked"]) == 7
