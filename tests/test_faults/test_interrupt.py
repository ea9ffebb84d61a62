"""Ctrl-C finishes the step in progress, then saves checkpoints/interrupted.ckpt and says how to resume;
SIGTERM (a cluster's preemption warning) saves the same way."""

import os
import signal

import pytest

from strongpose.checkpoint import read_checkpoint
from strongpose.lit_module import StrongPoseModule
from strongpose.train import train

QUICK = ["trainer.max_epochs=10", "trainer.limit_val_batches=0", "callbacks.coco_eval=null",
         "callbacks.model_checkpoint=null", "+trainer.enable_checkpointing=false"]


@pytest.fixture
def signal_during_second_step(monkeypatch):
    """``send(signum, times)``: the process signals itself in the middle of its second training step."""
    previous = signal.getsignal(signal.SIGINT)
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
    signal.signal(signal.SIGINT, previous)  # Lightning leaves Ctrl-C ignored after a KeyboardInterrupt


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
