"""Under DDP a NaN loss on one rank makes every rank skip that step (a rank skipping alone would leave the
others waiting in the gradient all-reduce): two CPU processes (gloo) through the real command line."""

from pathlib import Path

import pytest

from strongpose.checkpoint import read_checkpoint

HERE = Path(__file__).parent


@pytest.mark.slow
def test_a_nan_on_one_rank_is_skipped_by_all_ranks(tmp_path, train_cli):
    args = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
            "logger=none", "data.input_size=64", "data.batch_size=1", "data.max_train_images=4",
            "trainer.max_epochs=2", "trainer.limit_val_batches=0", "trainer.enable_model_summary=false",
            "callbacks.coco_eval=null", "callbacks.model_checkpoint.monitor=null", "backbone.neck_channels=32",
            "model.heads.width=32", "+callbacks.nan._target_=fault_injection.NaNBatchOnRank",
            "+callbacks.nan.rank=1", "+callbacks.nan.steps=[1]", "hydra.run.dir=run"]
    done = train_cli(args, tmp_path, importable=[HERE])  # exit status 0
    log = done.stdout + done.stderr
    assert "non-finite loss at step 1 (loss nan on images" in log  # rank 1
    assert "non-finite loss at step 1 (loss finite here, non-finite on another rank)" in log  # rank 0
    final = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert final["global_step"] == 4 and final["train/nonfinite_steps"] == 1
