"""A run interrupted mid-epoch (Ctrl-C's interrupted.ckpt) and resumed ends with the same weights as an
uninterrupted run: the resumed epoch goes on with the batches it had not trained on (for any num_workers),
and Lightning does not warn that the loader is not resumable. The sampler skips per DDP rank."""

import logging
import os
import signal

import pytest
import torch

from strongpose.config_check import ConfigError
from strongpose.data.resumable import ResumableDataLoader
from strongpose.data.sampling import SeededSampler
from strongpose.lit_module import StrongPoseModule
from strongpose.train import train

# 4 images in batches of 2: 2 steps per epoch, 2 epochs; no validation (it does not change the weights)
RUN = ["data.max_train_images=4", "trainer.max_epochs=2", "trainer.limit_val_batches=0",
       "callbacks.coco_eval=null", "callbacks.progress_bar=null", "backbone.neck_channels=32",
       "model.heads.width=32", "callbacks.model_checkpoint.monitor=null"]
INTERRUPT_AT = 3  # the first step of the second epoch: the checkpoint is 1 batch into epoch 1


def weights(path):
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return checkpoint["global_step"], {**checkpoint["state_dict"], **{
        f"raw.{k}": v for k, v in checkpoint["current_model_state"].items()}}  # EMA and raw weights


@pytest.fixture
def ctrl_c_during_step(monkeypatch):
    """``arm(n)``: the process sends itself SIGINT during its n-th training step; yields the batch ids."""
    previous = signal.getsignal(signal.SIGINT)
    real_step = StrongPoseModule.training_step
    seen = []

    def arm(n):
        def step(self, batch, batch_idx):
            seen.append(batch["meta"]["image_id"].tolist())
            if n is not None and len(seen) == n:
                os.kill(os.getpid(), signal.SIGINT)  # InterruptCheckpoint saves after this step
            return real_step(self, batch, batch_idx)

        monkeypatch.setattr(StrongPoseModule, "training_step", step)
        seen.clear()
        return seen

    yield arm
    signal.signal(signal.SIGINT, previous)  # Lightning leaves Ctrl-C ignored after a KeyboardInterrupt


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_interrupted_mid_epoch_and_resumed_matches_the_uninterrupted_run(train_config, tmp_path, recwarn,
                                                                         ctrl_c_during_step, workers):
    run = [*RUN, f"data.num_workers={workers}"]
    reference = ctrl_c_during_step(None)
    train(train_config(run, output_dir=tmp_path / "reference"))
    reference = list(reference)

    interrupted = ctrl_c_during_step(INTERRUPT_AT)
    with pytest.raises(SystemExit):
        train(train_config(run, output_dir=tmp_path / "run"))
    saved = tmp_path / "run" / "checkpoints" / "interrupted.ckpt"
    checkpoint = torch.load(saved, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == INTERRUPT_AT and checkpoint["epoch"] == 1  # mid-epoch
    assert checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 1, "batches": 1, "batch_size": 2, "world_size": 1}]
    interrupted = list(interrupted)

    resumed = ctrl_c_during_step(None)
    train(train_config([*run, f"ckpt_path={saved}"], output_dir=tmp_path / "resumed"))
    assert interrupted + resumed == reference  # the same batches, none replayed, none missed
    assert not [w for w in recwarn if "not resumable" in str(w.message)]

    step_a, a = weights(tmp_path / "reference" / "checkpoints" / "last.ckpt")
    step_b, b = weights(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert step_a == step_b == 4 and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "weights differ"  # bit for bit


@pytest.mark.slow
def test_a_run_that_dies_resumes_from_its_periodic_last_checkpoint_as_the_uninterrupted_run(train_config, tmp_path,
                                                                                           monkeypatch):
    """A job that dies without a signal (a node failure: no interrupted.ckpt) resumes from the last.ckpt that
    last_every_n_train_steps wrote inside an epoch, and ends as a straight run does."""
    run = [*RUN, "callbacks.model_checkpoint.last_every_n_train_steps=3"]
    real_step = StrongPoseModule.training_step
    seen, dies_after = [], [None]

    def step(self, batch, batch_idx):
        if len(seen) == dies_after[0]:
            raise RuntimeError("node failure")  # in the middle of a step: nothing more is saved
        seen.append(batch["meta"]["image_id"].tolist())
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(StrongPoseModule, "training_step", step)
    train(train_config(run, output_dir=tmp_path / "reference"))
    reference = seen[:]

    seen.clear()
    dies_after[0] = 3
    with pytest.raises(RuntimeError, match="node failure"):
        train(train_config(run, output_dir=tmp_path / "run"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 3 and checkpoint["epoch"] == 1  # 1 batch into epoch 1

    seen.clear()
    dies_after[0] = None
    train(train_config([*run, f"ckpt_path={last}"], output_dir=tmp_path / "resumed"))
    assert reference[:3] + seen == reference  # the remaining batches, none replayed, none missed
    step_a, a = weights(tmp_path / "reference" / "checkpoints" / "last.ckpt")
    step_b, b = weights(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert step_a == step_b == 4 and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "weights differ"  # bit for bit


@pytest.mark.slow
def test_a_run_that_died_between_an_epochs_last_batch_and_its_end_then_stopped_trains_each_batch_once(
        train_config, tmp_path, monkeypatch):
    """Resumed from a last.ckpt written after an epoch's last batch but before its end, Lightning counts the next
    epochs one short (completed == started): a checkpoint inside one of them was taken for one that max_steps
    stopped, and the next resume replayed a finished epoch's batches (10 steps of 8 in a review); a max_steps or
    max_time stop inside such an epoch was saved one epoch behind (8 steps of 6)."""
    # a constant LR: the max_steps run's schedule would be 3 steps long
    run = [*RUN, "trainer.max_epochs=3", "callbacks.model_checkpoint.last_every_n_train_steps=1", "model.scheduler=null"]
    real_step = StrongPoseModule.training_step
    seen = []

    def step(self, batch, batch_idx):
        seen.append(batch["meta"]["image_id"].tolist())
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(StrongPoseModule, "training_step", step)
    train(train_config(run, output_dir=tmp_path / "reference"))
    reference, trained = seen[:], []
    die = "+callbacks.die._target_=fault_injection.FailAfterStep"
    for fault in ([die, "+callbacks.die.step=2", "+callbacks.die.at_epoch_end=true"],  # epoch 0 done, not ended
                  ["trainer.max_steps=3"],  # stopped inside epoch 1
                  [die, "+callbacks.die.step=4"],  # died at epoch 2's first batch (after epoch 1's last)
                  ["+callbacks.stop._target_=fault_injection.StopAfterStep", "+callbacks.stop.step=5"],  # max_time's
                  []):  # the rest; each run resumes the last one's last.ckpt (resume=auto)
        seen.clear()
        if fault[:1] == [die]:
            with pytest.raises(RuntimeError, match="died after step"):
                train(train_config([*run, *fault], output_dir=tmp_path / "run"))
        else:
            train(train_config([*run, *fault], output_dir=tmp_path / "run"))
        trained += seen
    assert trained == reference  # each batch once: none replayed, none missed
    step_a, a = weights(tmp_path / "reference" / "checkpoints" / "last.ckpt")
    step_b, b = weights(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert step_a == step_b == 6
    assert all(torch.equal(a[k], b[k]) for k in a), "weights differ"


@pytest.mark.parametrize("world", [1, 2, 3])
def test_each_rank_skips_its_own_consumed_keys(world):
    size, epoch, batch, done = 11, 3, 2, 1
    for rank in range(world):
        full = SeededSampler(size, seed=5, num_replicas=world, rank=rank)
        full.set_epoch(epoch)
        keys = list(full)
        resumed = SeededSampler(size, seed=5, num_replicas=world, rank=rank)
        resumed.resume(epoch, done * batch)  # no set_epoch: a loader's workers draw keys before Lightning calls it
        assert list(resumed) == keys[done * batch:] and keys[0][1] == epoch
        assert list(resumed) == [(i, epoch + 1) for i, _ in _epoch(size, 5, world, rank, epoch + 1)]  # once only
        assert len(resumed) == len(full)  # Lightning counts the epoch's batches from the full length


def test_a_skip_meant_for_another_epoch_is_dropped():
    sampler = SeededSampler(8, seed=0)
    sampler.resume(2, 4)
    sampler.set_epoch(3)  # e.g. the checkpoint's epoch was over after all
    assert len(list(sampler)) == 8


def _epoch(size, seed, world, rank, epoch):
    sampler = SeededSampler(size, seed=seed, num_replicas=world, rank=rank)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_a_loader_whose_sampler_lightning_replaced_restarts_its_epoch(caplog):
    """trainer.overfit_batches makes Lightning rebuild the loader with a SequentialSampler, which cannot skip:
    resuming such a run (experiment=overfit) restarts the epoch with a warning rather than failing."""
    loader = ResumableDataLoader(list(range(8)), batch_size=2, shuffle=False)
    with caplog.at_level(logging.WARNING):
        loader.load_state_dict({"epoch": 3, "batches": 1})
    assert "(SequentialSampler, not a SeededSampler) cannot skip the 1 batches already trained in epoch 3" in caplog.text
    assert [b.tolist() for b in loader] == [[0, 1], [2, 3], [4, 5], [6, 7]]


@pytest.mark.parametrize(("batch_size", "world", "refused"), [(2, 2, False), (4, 1, True), (2, 1, True), (1, 4, True)])
def test_a_position_inside_an_epoch_needs_the_same_batch_and_ranks(batch_size, world, refused):
    """Saved after 3 batches of 2 on each of 2 ranks: with another split each rank would skip 3 x its batch
    of its own (other) shard, and Lightning would count the epoch's batches in the old size."""
    loader = ResumableDataLoader(list(range(32)), batch_size=batch_size,
                                 sampler=SeededSampler(32, num_replicas=world, rank=0))
    state = {"epoch": 1, "batches": 3, "batch_size": 2, "world_size": 2}
    if refused:
        with pytest.raises(ConfigError, match=r"stopped inside epoch 1, after 3 batches of 2 images per device on 2 "
                                              rf"devices; .* this run has {batch_size} on {world}\."):
            loader.load_state_dict(state)
    else:
        loader.load_state_dict(state)
    loader.load_state_dict({**state, "batches": 0})  # at an epoch's end any split goes on
    loader.load_state_dict({"epoch": 1, "batches": 3})  # saved before the split was recorded: as it is
