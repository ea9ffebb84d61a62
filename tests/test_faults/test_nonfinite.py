"""A NaN / infinite loss skips its step (no weight update), is counted, and too many in a row stop the run
with the images named."""

import csv
import functools

import pytest
import torch

from strongpose.faults import NonFiniteLossError, NonFiniteLossGuard
from strongpose.lit_module import StrongPoseModule
from strongpose.models import ResNetBackbone
from strongpose.train import train

NAN = torch.tensor(float("nan"))


def _batch(ids):
    return {"meta": {"image_id": torch.tensor(ids)}}


def test_guard_skips_counts_and_resets_on_a_finite_loss():
    guard = NonFiniteLossGuard(max_in_a_row=2)
    assert not guard.skip(torch.tensor(1.0), _batch([1]))
    assert guard.skip(NAN, _batch([1])) and guard.skip(torch.tensor(float("inf")), _batch([2]))
    assert not guard.skip(torch.tensor(0.5), _batch([3]))
    assert (guard.total, guard.in_a_row) == (2, 0)


def test_guard_stops_one_past_the_limit_naming_the_images():
    guard = NonFiniteLossGuard(max_in_a_row=1)
    guard.skip(NAN, _batch([7, 8]))
    with pytest.raises(NonFiniteLossError, match=r"2 training steps in a row.*max_nonfinite_steps=1.*images \[42, 43\]"):
        guard.skip(NAN, _batch([42, 43]))
    with pytest.raises(NonFiniteLossError):
        NonFiniteLossGuard(max_in_a_row=0).skip(NAN, _batch([1]))  # 0: stop at the first
    with pytest.raises(ValueError):
        NonFiniteLossGuard(max_in_a_row=-1)


def test_a_nan_batch_leaves_batchnorm_statistics_and_weights_alone(codec, batch):
    torch.manual_seed(0)
    backbone = ResNetBackbone("resnet18", output_stride=codec.stride, neck_channels=32)
    module = StrongPoseModule(codec, backbone, functools.partial(torch.optim.AdamW), heads={"width": 32})
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    module.training_step(batch, 0).backward()
    optimizer.step()  # a finite step first: AdamW then has momentum that would move the weights again
    state = {k: v.clone() for k, v in module.state_dict().items()}
    moments = [m.clone() for p in module.parameters() for m in optimizer.state[p].values()]
    poisoned = {**batch, "image": batch["image"].float()}  # float pixels (the network takes them) can be NaN
    poisoned["image"][0, 0, 0, 0] = float("nan")  # spreads to every BatchNorm statistic in the forward
    loss = module.training_step(poisoned, 1)
    assert not torch.isfinite(loss) and module.nonfinite.total == 1
    loss.backward()  # as on every DDP rank
    assert not all(torch.isfinite(b).all() for b in module.buffers())  # the NaN reached the statistics
    module.on_after_backward()
    module.on_before_optimizer_step(optimizer)
    optimizer.step()
    assert all(torch.equal(v, state[k]) for k, v in module.state_dict().items())  # weights and statistics
    assert all(torch.equal(a, b) for a, b in zip(moments, [m for p in module.parameters()
                                                          for m in optimizer.state[p].values()], strict=True))
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["train/nonfinite_steps"] == 1


def test_a_run_skips_nonfinite_steps_then_stops_naming_the_images(train_config, tmp_path, monkeypatch):
    # call 1: NaN, skipped; call 2 finite (the streak resets); calls 3, 4: NaN, the second in a row stops the run
    nan_calls, states, ids = {1, 3, 4}, [], []
    real_step, real_losses, real_skip = StrongPoseModule.training_step, StrongPoseModule.losses, NonFiniteLossGuard.skip

    def training_step(self, batch, batch_idx):  # weights and BatchNorm statistics as the previous step left them
        states.append(torch.cat([t.detach().flatten().double() for t in [*self.parameters(), *self.buffers()]]))
        return real_step(self, batch, batch_idx)

    def losses(self, outputs, targets, **options):
        out = real_losses(self, outputs, targets, **options)
        if self.training and len(states) - 1 in nan_calls:
            out = {**out, "total": out["total"] * float("nan")}
        return out

    def skip(self, loss, batch, trainer=None):
        ids.append(batch["meta"]["image_id"].tolist())
        return real_skip(self, loss, batch, trainer)

    monkeypatch.setattr(StrongPoseModule, "training_step", training_step)
    monkeypatch.setattr(StrongPoseModule, "losses", losses)
    monkeypatch.setattr(NonFiniteLossGuard, "skip", skip)
    cfg = train_config(["trainer.max_epochs=10", "trainer.limit_val_batches=0", "model.max_nonfinite_steps=1",
                        "logger=csv", "callbacks.coco_eval=null", "backbone.neck_channels=32",
                        "model.heads.width=32", "callbacks.model_checkpoint=null", "+trainer.enable_checkpointing=false"],
                       output_dir=tmp_path)
    with pytest.raises(NonFiniteLossError, match="2 training steps in a row") as error:
        train(cfg)
    assert len(states) == 5 and f"images {ids[-1]}" in str(error.value)  # the stopping batch's image ids
    moved = [not torch.equal(a, b) for a, b in zip(states, states[1:])]
    assert moved == [True, False, True, False]  # skipped steps leave weights and statistics alone
    rows = list(csv.DictReader(open(next(tmp_path.glob("csv/version_*/metrics.csv")))))
    counts = [float(r["train/nonfinite_steps"]) for r in rows if r.get("train/nonfinite_steps")]
    assert counts == [0, 1, 1, 2]  # the stopping step raises before it is logged


def test_a_nan_micro_batch_drops_the_whole_accumulated_step(codec, batch):
    # trainer.accumulate_grad_batches=2: Lightning calls on_before_optimizer_step after the second micro-batch
    # only; the first one's NaN gradients are in .grad by then, so a finite second one must not un-skip the step
    torch.manual_seed(0)
    backbone = ResNetBackbone("resnet18", output_stride=codec.stride, neck_channels=32)
    module = StrongPoseModule(codec, backbone, functools.partial(torch.optim.AdamW), heads={"width": 32})
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    weights = [p.detach().clone() for p in module.parameters()]
    poisoned = {**batch, "image": batch["image"].float()}  # float pixels (the network takes them) can be NaN
    poisoned["image"][0, 0, 0, 0] = float("nan")
    module.training_step(poisoned, 0).backward()
    module.on_after_backward()
    buffers = [b.clone() for b in module.buffers()]  # the NaN micro-batch's statistics are put back
    module.training_step(batch, 1).backward()  # finite: its BatchNorm update stays
    module.on_after_backward()
    assert all(torch.isfinite(b).all() for b in module.buffers())
    assert not all(torch.equal(a, b) for a, b in zip(buffers, module.buffers(), strict=True))
    module.on_before_optimizer_step(optimizer)
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(weights, module.parameters(), strict=True))
