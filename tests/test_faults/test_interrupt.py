"""Ctrl-C finishes the step in progress, then saves checkpoints/interrupted.ckpt and says how to resume;
SIGTERM (a cluster's preemption warning) saves the same way; SIGUSR1 (SLURM's time-limit warning) saves,
then requeues the job."""

import os
import signal
import subprocess
import sys

import pytest
from lightning.pytorch.plugins.environments import SLURMEnvironment

from strongpose.checkpoint import read_checkpoint
from strongpose.faults import InterruptCheckpoint
from strongpose.lit_module import StrongPoseModule
from strongpose.train import train

QUICK = ["trainer.max_epochs=10", "trainer.limit_val_batches=0", "callbacks.coco_eval=null",
         "callbacks.model_checkpoint=null", "+trainer.enable_checkpointing=false"]


@pytest.fixture
def signal_during_second_step(monkeypatch):
    """``send(signum, times, at=2)``: the process signals itself in the middle of its ``at``-th training step."""
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGUSR1)
    real_step = StrongPoseModule.training_step
    calls = []

    def send(signum, times=1, at=2):
        def step(self, batch, batch_idx):
            calls.append(batch_idx)
            if len(calls) == at:
                for _ in range(times):
                    os.kill(os.getpid(), signum)  # Python runs the handler at once, mid-step
            return real_step(self, batch, batch_idx)

        monkeypatch.setattr(StrongPoseModule, "training_step", step)
        return calls

    yield send
    signal.signal(signal.SIGINT, previous[0])  # Lightning leaves Ctrl-C ignored after a KeyboardInterrupt
    signal.signal(signal.SIGUSR1, previous[1])


@pytest.mark.parametrize(("signum", "exit_code", "said"), [
    (signal.SIGINT, 1, "Interrupted: checkpoint saved to"),
    (signal.SIGTERM, 143, "Stopped by SIGTERM: checkpoint saved to"),  # not 0: the training did not end
])
def test_a_signal_mid_step_saves_after_that_step(train_config, tmp_path, signal_during_second_step, capsys,
                                                 signum, exit_code, said):
    calls = signal_during_second_step(signum)
    with pytest.raises(SystemExit) as stopped:  # KeyboardInterrupt: Lightning's sys.exit(1); SIGTERM: train's 143
        train(train_config(QUICK, output_dir=tmp_path))
    assert stopped.value.code == exit_code and len(calls) == 2
    saved = tmp_path / "checkpoints" / "interrupted.ckpt"
    assert read_checkpoint(saved)["global_step"] == 2  # the signalled step finished and is in the checkpoint
    assert f"{said} {saved} (step 2); resume with ckpt_path={saved}" in capsys.readouterr().out


def test_with_gradient_accumulation_the_save_waits_for_the_optimiser_step(train_config, tmp_path,
                                                                           signal_during_second_step):
    """A checkpoint between two optimiser steps would drop the gradients of the micro-batches since the last
    one, while the resumed loader skips their images."""
    calls = signal_during_second_step(signal.SIGINT, at=3)  # batch 2 of 8: the first half of step 2
    with pytest.raises(SystemExit):
        train(train_config([*QUICK, "trainer.accumulate_grad_batches=2", "data.batch_size=1",
                            "data.max_train_images=8"], output_dir=tmp_path))
    assert calls == [0, 1, 2, 3]  # batch 3 completed the optimiser step, then the run stopped
    saved = read_checkpoint(tmp_path / "checkpoints" / "interrupted.ckpt")
    assert saved["global_step"] == 2
    assert saved["COCOKeypointDataModule"]["train_position"] == {"epoch": 0, "batches": 4, "batch_size": 1, "world_size": 1}


def test_with_accumulation_a_validation_between_two_optimiser_steps_does_not_hold_the_save(
        train_config, tmp_path, signal_during_second_step, capsys):
    """Optimiser steps after batches 1, 3, 5, 7; Lightning validates after batch 2 (val_check_interval=3), in the
    middle of the second step. A signal in batch 2 must not wait for that validation (on a cluster it can
    outlast SLURM's warning): the save comes before it, and batch 2's gradients are dropped."""
    calls = signal_during_second_step(signal.SIGINT, at=3)
    with pytest.raises(SystemExit):
        train(train_config([*QUICK, "trainer.accumulate_grad_batches=2", "data.batch_size=1",
                            "data.max_train_images=8", "trainer.limit_val_batches=1",
                            "trainer.val_check_interval=3"], output_dir=tmp_path))
    assert calls == [0, 1, 2]
    saved = read_checkpoint(tmp_path / "checkpoints" / "interrupted.ckpt")
    assert saved["global_step"] == 1
    assert saved["COCOKeypointDataModule"]["train_position"] == {"epoch": 0, "batches": 3, "batch_size": 1, "world_size": 1}
    assert saved["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]["total"]["started"] == 0  # not run
    assert "before a validation, between two optimiser steps" in capsys.readouterr().out


def test_a_second_ctrl_c_stops_at_once_without_saving(train_config, tmp_path, signal_during_second_step, capsys):
    calls = signal_during_second_step(signal.SIGINT, times=2)
    with pytest.raises(SystemExit):
        train(train_config(QUICK, output_dir=tmp_path))
    assert len(calls) == 2 and not (tmp_path / "checkpoints" / "interrupted.ckpt").exists()
    out = capsys.readouterr().out
    assert "Ctrl-C: saving a checkpoint after this training step" in out and "Stopped without saving" in out


def test_a_finished_resumed_run_removes_the_interrupted_checkpoint_it_started_from(train_config, tmp_path,
                                                                                  signal_during_second_step, capsys):
    with_last = ["trainer.max_epochs=10", "trainer.limit_val_batches=0", "callbacks.coco_eval=null"]
    signal_during_second_step(signal.SIGINT)
    with pytest.raises(SystemExit):
        train(train_config(with_last, output_dir=tmp_path))
    saved, last = tmp_path / "checkpoints" / "interrupted.ckpt", tmp_path / "checkpoints" / "last.ckpt"
    assert saved.is_file()
    capsys.readouterr()
    # resume=auto goes on from it: at the end, last.ckpt holds everything and the interrupted checkpoint goes
    _, resumed = train(train_config(["trainer.max_steps=3", *with_last], output_dir=tmp_path))
    assert resumed["trainer"].global_step == 3 and read_checkpoint(last)["global_step"] == 3
    assert not saved.exists() and f"The run resumed from {saved} has finished: removed it" in capsys.readouterr().out
    # a run that did not start from it leaves it alone (another run's state)
    saved.write_bytes(last.read_bytes())
    train(train_config(["trainer.max_steps=4", *with_last, f"ckpt_path={last}"], output_dir=tmp_path))
    assert saved.is_file() and read_checkpoint(last)["global_step"] == 4


@pytest.mark.parametrize("under_slurm", [False, True], ids=["job-id-only", "lightning-detects-slurm"])
def test_the_requeue_signal_saves_after_the_step_then_requeues_the_slurm_job(train_config, tmp_path,
                                                                            signal_during_second_step, capsys,
                                                                            monkeypatch, fake_scontrol, under_slurm):
    """With SLURM's variables set, Lightning picks SLURMEnvironment(auto_requeue=True) by itself: it must
    leave the signal to the callback (no hpc_ckpt_N.ckpt saved mid-step, one requeue)."""
    if under_slurm:
        for name, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_NODELIST": "localhost",
                            "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}.items():
            monkeypatch.setenv(name, value)
    calls = signal_during_second_step(signal.SIGUSR1)
    with pytest.raises(SystemExit) as stopped:
        train(train_config(QUICK, output_dir=tmp_path / "run"))
    assert stopped.value.code == 1 and len(calls) == 2
    saved = tmp_path / "run" / "checkpoints" / "interrupted.ckpt"
    assert read_checkpoint(saved)["global_step"] == 2
    assert fake_scontrol.read_text().splitlines() == ["requeue 4242"]
    assert not list((tmp_path / "run").rglob("hpc_ckpt_*.ckpt"))
    out = capsys.readouterr().out
    assert "SIGUSR1: saving a checkpoint after this training step, then requeueing" in out
    assert f"SIGUSR1 (time limit): checkpoint saved to {saved} (step 2)" in out and "requeued SLURM job 4242" in out
    # the requeued job, started again in the same folder, goes on from there (resume=auto)
    _, again = train(train_config(["trainer.max_steps=3", *QUICK], output_dir=tmp_path / "run"))
    assert again["trainer"].global_step == 3 and f"Resuming from {saved}" in capsys.readouterr().out
    environment = again["trainer"]._accelerator_connector.cluster_environment
    # under SLURM train() gives Lightning its SLURMEnvironment with auto_requeue off: callbacks.interrupt's requeue
    # or none (with requeue_signal=null), never Lightning's mid-step one
    assert isinstance(environment, SLURMEnvironment) == under_slurm and not getattr(environment, "auto_requeue", False)


def test_an_unknown_requeue_signal_is_refused():
    with pytest.raises(ValueError, match="SIGUSR3"):
        InterruptCheckpoint(requeue_signal="SIGUSR3")


@pytest.mark.parametrize("signum", ["SIGUSR1", "SIGUSR2"])
def test_a_data_worker_outlives_the_time_limit_signal(signum):
    """SLURM signals every process of the job, data workers included; a worker started by spawn or forkserver
    (Python 3.14's default) has the signal's default action, which ends it: a fresh process stands in for one."""
    code = ("import os, signal; from strongpose.data.sampling import init_worker; init_worker(0); "
            f"os.kill(os.getpid(), signal.{signum}); print('alive')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "alive", done.stderr
