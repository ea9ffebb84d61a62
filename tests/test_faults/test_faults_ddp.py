"""Under DDP a NaN loss on one rank makes every rank skip that step (a rank skipping alone would leave the
others waiting in the gradient all-reduce), and a requeue signal on one rank makes every rank save at the
same step: two CPU processes (gloo) through the real command line."""

from pathlib import Path

import pytest

from strongpose.checkpoint import read_checkpoint

HERE = Path(__file__).parent
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
       "logger=none", "data.input_size=64", "data.batch_size=1", "data.max_train_images=4",
       "trainer.max_epochs=2", "trainer.limit_val_batches=0", "trainer.enable_model_summary=false",
       "callbacks.coco_eval=null", "callbacks.model_checkpoint.monitor=null", "backbone.neck_channels=32",
       "model.heads.width=32", "hydra.run.dir=run"]


@pytest.mark.slow
def test_a_nan_on_one_rank_is_skipped_by_all_ranks(tmp_path, train_cli):
    args = [*DDP, "+callbacks.nan._target_=fault_injection.NaNBatchOnRank", "+callbacks.nan.rank=1",
            "+callbacks.nan.steps=[1]"]
    done = train_cli(args, tmp_path, importable=[HERE])  # exit status 0
    log = done.stdout + done.stderr
    assert "non-finite loss at step 1 (loss nan on images" in log  # rank 1
    assert "non-finite loss at step 1 (loss finite here, non-finite on another rank)" in log  # rank 0
    final = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert final["global_step"] == 4 and final["train/nonfinite_steps"] == 1


@pytest.mark.slow
def test_a_requeue_signal_on_one_rank_saves_every_rank_at_the_same_step(tmp_path, cli, fake_scontrol):
    # 4 steps an epoch: the signalled step is inside it, where the flag travels with the guard's all-reduce
    args = [*DDP, "data.max_train_images=8", "+callbacks.sig._target_=fault_injection.SignalOnRank",
            "+callbacks.sig.rank=1", "+callbacks.sig.step=1"]
    done = cli("strongpose.train", args, tmp_path, importable=[HERE], check=False)
    log = done.stdout + done.stderr
    saved = tmp_path / "run" / "checkpoints" / "interrupted.ckpt"
    assert done.returncode != 0 and f"SIGUSR1 (time limit): checkpoint saved to {saved} (step 2)" in log, log[-3000:]
    # rank 1's signalled step finished on both ranks (the flag travelled with the non-finite guard's all-reduce)
    assert read_checkpoint(saved)["global_step"] == 2
    assert fake_scontrol.read_text().splitlines() == ["requeue 4242"]  # once, by rank 0
