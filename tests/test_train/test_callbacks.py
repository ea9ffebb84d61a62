import pytest
import torch
from torch.optim.swa_utils import AveragedModel

from strongpose.callbacks import EMA


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
