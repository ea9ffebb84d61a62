"""Ctrl-C finishes the step in progress, then saves checkpoints/interrupted.ckpt and says how to resume;
SIGTERM (a cluster's preemption warning) saves the same way; SIGUSR1 (SLURM's time-limit warning) saves,
then requeues the job."""

import os
import signal

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
    """``send(signum, times)``: the process signals itself in the middle of its second training step."""
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGUSR1)
    real_step = StrongPoseModule.training_step
    calls = []

    def send(signum, times=1):
        def step(self, batch, batch_idx):
            calls.append(batch_idx)
            if len(calls) == 2:
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
    (signal.SIGTERM, None, "Stopped by SIGTERM: checkpoint saved to"),
])
def test_a_signal_mid_step_saves_after_that_step(train_config, tmp_path, signal_during_second_step, capsys,
                                                 signum, exit_code, said):
    calls = signal_during_second_step(signum)
    with pytest.raises(SystemExit) as stopped:  # KeyboardInterrupt: Lightning's sys.exit(1); SIGTERMException
        train(train_config(QUICK, output_dir=tmp_path))
    assert stopped.value.code == exit_code and len(calls) == 2
    saved = tmp_path / "checkpoints" / "interrupted.ckpt"
    assert read_checkpoint(saved)["global_step"] == 2  # the signalled step finished and is in the checkpoint
    assert f"{said} {saved} (step 2); resume with ckpt_path={saved}" in capsys.readouterr().out


def test_a_second_ctrl_c_stops_at_once_without_saving(train_config, tmp_path, signal_during_second_step, capsys):
    calls = signal_during_second_step(signal.SIGINT, times=2)
    with pytest.raises(SystemExit):
        train(train_config(QUICK, output_dir=tmp_path))
    assert len(calls) == 2 and not (tmp_path / "checkpoints" / "interrupted.ckpt").exists()
    out = capsys.readouterr().out
    assert "Ctrl-C: saving a checkpoint after this training step" in out and "Stopped without saving" in out


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
    assert isinstance(environment, SLURMEnvironment) == under_slurm and (not under_slurm or environment.auto_requeue)


def test_an_unknown_requeue_signal_is_refused():
    with pytest.raises(ValueError, match="SIGUSR3"):
        InterruptCheckpoint(requeue_signal="SIGUSR3")
