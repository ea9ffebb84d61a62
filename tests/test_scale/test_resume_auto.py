"""resume=auto: a run started again in the same folder (a requeued SLURM job) continues from the newest
checkpoint there instead of starting over."""

from __future__ import annotations

import os
import pytest

from strongpose.train import checkpoint_to_resume, train


def _touch(path, mtime: float):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    os.utime(path, (mtime, mtime))
    return path


def test_picks_the_newest_checkpoint_of_the_run_folder(tmp_path):
    folders = (tmp_path, tmp_path / "checkpoints")  # the run folder, the checkpoint callback's
    assert checkpoint_to_resume(None, "auto", *folders) is None  # a new run
    last = _touch(tmp_path / "checkpoints" / "last.ckpt", 1000)
    _touch(tmp_path / "checkpoints" / "epoch001-step000010.ckpt", 1000)  # same moment: last.ckpt wins
    assert checkpoint_to_resume(None, "auto", *folders) == str(last)
    # Lightning's own SLURM requeue (when a user turns it on) saves hpc_ckpt_N.ckpt in the run folder
    hpc = _touch(tmp_path / "hpc_ckpt_1.ckpt", 2000)
    assert checkpoint_to_resume(None, "auto", *folders) == str(hpc)
    _touch(tmp_path / "checkpoints" / "last.ckpt", 3000)  # the requeued job went on and saved again
    assert checkpoint_to_resume(None, "auto", *folders) == str(last)
    # the checkpoint folder when the callback has none of its own
    assert checkpoint_to_resume(None, "auto", tmp_path) == str(last)


def test_an_explicit_ckpt_path_wins_and_null_starts_afresh(tmp_path):
    _touch(tmp_path / "checkpoints" / "last.ckpt", 1000)
    assert checkpoint_to_resume("other.ckpt", "auto", tmp_path) == "other.ckpt"
    assert checkpoint_to_resume(None, None, tmp_path) is None
    assert checkpoint_to_resume(None, False, tmp_path) is None
    with pytest.raises(ValueError, match="resume must be 'auto' or null"):
        checkpoint_to_resume(None, "yes", tmp_path)


def test_training_again_in_the_same_folder_continues(train_config, tmp_path):
    _, first = train(train_config(["trainer.max_epochs=1", "callbacks.ema=null"], output_dir=tmp_path))
    steps = first["trainer"].global_step
    assert steps >= 1 and (tmp_path / "checkpoints" / "last.ckpt").is_file()
    _, second = train(train_config(["trainer.max_epochs=2", "callbacks.ema=null"], output_dir=tmp_path))
    assert second["trainer"].global_step == 2 * steps and second["trainer"].current_epoch == 2
