"""A run killed with SIGKILL and resumed from last.ckpt ends exactly where an uninterrupted run ends; Ctrl-C
saves a checkpoint, says where, and the run resumes from it. (Subprocess runs of experiments/crash_resume.py.)"""

import signal

import pytest

from strongpose.checkpoint import read_checkpoint

STEPS_PER_EPOCH, EPOCHS = 3, 4  # crash_resume.TINY: 6 images in batches of 2, 4 epochs


@pytest.fixture(scope="module")
def crash_resume():
    import crash_resume  # experiments/ (pytest's pythonpath)

    return crash_resume


@pytest.mark.slow
def test_killed_at_an_epoch_end_and_resumed_matches_the_uninterrupted_run_bit_for_bit(crash_resume, tmp_path):
    # at an epoch end (mid-epoch resume, also exact, is tested in process by test_mid_epoch_resume.py)
    r = crash_resume.crash_and_resume(tmp_path)
    assert 0 < r["killed_at"] < STEPS_PER_EPOCH * EPOCHS and r["killed_at"] % STEPS_PER_EPOCH == 0
    assert r["steps_resumed"] == r["steps_reference"] == STEPS_PER_EPOCH * EPOCHS
    assert r["lr_resumed"] == r["lr_reference"]
    assert r["max_abs_ema"] == r["max_abs_raw"] == r["max_abs_adam"] == 0.0  # EMA and raw weights, Adam moments


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_says_where_and_resumes(crash_resume, tmp_path):
    args = [*crash_resume.TINY, *crash_resume.EVERY_STEP]
    stepping = tmp_path / "run" / "checkpoints" / "last.ckpt"  # written after each step: training is under way
    done = crash_resume.train_cli([*args, "trainer.max_epochs=1000", "hydra.run.dir=run"], tmp_path, "run.log",
                                  kill_when=stepping, signum=signal.SIGINT)
    saved = tmp_path / "run" / "checkpoints" / "interrupted.ckpt"
    assert done.returncode == 1, done.stdout[-3000:]  # Lightning's graceful shutdown
    assert "Ctrl-C: saving a checkpoint after this training step" in done.stdout
    checkpoint = read_checkpoint(saved)
    step, epoch = checkpoint["global_step"], checkpoint["epoch"]
    assert f"Interrupted: checkpoint saved to {saved} (step {step}); resume with ckpt_path={saved}" in done.stdout
    assert step >= 1 and "current_model_state" in checkpoint  # EMA and raw weights both

    resumed = crash_resume.train_cli([*args, f"trainer.max_epochs={epoch + 2}", f"ckpt_path={saved}",
                                      "hydra.run.dir=resumed"], tmp_path, "resumed.log")
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert f"Restored all states from the checkpoint at {saved}" in resumed.stdout
    final = read_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert final["global_step"] == (epoch + 2) * STEPS_PER_EPOCH
