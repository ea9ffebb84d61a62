"""End-to-end training runs on the embedded sample (tiny inputs, CPU, no logger)."""

import logging
from pathlib import Path

import pytest
import torch

from strongpose.callbacks import Compile, ModelCheckpoint
from strongpose.checkpoint import CONFIG_KEY
from strongpose.config_check import ConfigError
from strongpose.lit_module import StrongPoseModule
from strongpose.train import example_for_the_summary, train

DEPTHS = ["resnet18", "resnet34", "resnet50",
          pytest.param("resnet101", marks=pytest.mark.slow), pytest.param("resnet152", marks=pytest.mark.slow)]


def test_debug_fdr_runs_with_anomaly_detection(train_config, tmp_path):
    _, objects = train(train_config(["debug=fdr", "data.input_size=64"], output_dir=tmp_path, tiny=False))
    trainer = objects["trainer"]
    assert trainer.fast_dev_run and trainer.global_step == 1 and not trainer.loggers
    assert trainer._detect_anomaly and not torch.is_anomaly_enabled()  # Lightning turns it on for the fit only


def test_the_model_summary_counts_flops_and_changes_nothing(train_config, tmp_path, capsys):
    """Lightning counts FLOPs from an example input: one blank image at the training size, without gradients or
    BatchNorm statistics; the run's losses are the same as without a summary. None for a compiled network."""
    runs = {}
    for summary in (True, False):
        metrics, objects = train(train_config(["trainer.fast_dev_run=true", f"trainer.enable_model_summary={summary}"],
                                              output_dir=tmp_path / str(summary)))
        runs[summary] = {key: value for key, value in metrics.items() if key != "train/images_per_sec"}
        assert (objects["model"].example_input_array is not None) == summary
    assert "Total FLOPs: 0" not in capsys.readouterr().out
    assert runs[True] == runs[False]
    cfg = train_config(["trainer.enable_model_summary=true"], output_dir=tmp_path)
    model = objects["model"]  # of the run without a summary: no example
    example_for_the_summary(cfg, model, objects["datamodule"], [Compile(enabled=True)])
    assert model.example_input_array is None
    example_for_the_summary(cfg, model, objects["datamodule"], [Compile(enabled=False)])
    assert model.example_input_array.shape == (1, 3, 64, 64)


def test_fast_dev_run_of_the_default_config(train_config, tmp_path):
    cfg = train_config(["trainer.fast_dev_run=true", "logger=none"], output_dir=tmp_path, tiny=False)
    metrics, objects = train(cfg)
    assert objects["trainer"].global_step == 1
    assert not list(tmp_path.rglob("*.ckpt"))  # a dev run writes no checkpoint (ModelCheckpoint's save_last did)
    assert {"train/loss", "val/loss", "train/loss_skhm", "val/loss_long"} <= set(metrics)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())


@pytest.mark.parametrize("backbone", DEPTHS)
def test_fast_dev_run_of_each_backbone(train_config, tmp_path, backbone):
    cfg = train_config([f"backbone={backbone}", "trainer.fast_dev_run=true"], output_dir=tmp_path)
    _, objects = train(cfg)
    assert objects["model"].net.backbone.arch == backbone
    assert objects["trainer"].global_step == 1


def test_resume_from_last_checkpoint_continues_the_step_count(train_config, tmp_path):
    _, first = train(train_config(["trainer.max_epochs=1"], output_dir=tmp_path))
    steps = first["trainer"].global_step
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert steps >= 1 and last.is_file()
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)  # as Lightning resumes
    assert checkpoint["global_step"] == steps
    assert "current_model_state" in checkpoint  # EMA: state_dict holds the averaged weights
    saved = checkpoint[CONFIG_KEY]  # the resolved run config travels with the weights
    assert saved["backbone"]["arch"] == "resnet18" and saved["paths"]["output_dir"] == str(tmp_path)

    _, second = train(train_config(["trainer.max_epochs=2", f"ckpt_path={last}"], output_dir=tmp_path))
    assert second["trainer"].global_step == 2 * steps
    assert second["trainer"].current_epoch == 2


def test_a_resume_with_a_longer_schedule_steps_at_its_rate_from_the_first_step(train_config, tmp_path, monkeypatch):
    """The optimiser came back with the old schedule's last rate (its floor) and kept it for one step."""
    rates = []
    step = StrongPoseModule.training_step
    monkeypatch.setattr(StrongPoseModule, "training_step", lambda self, batch, batch_idx: (
        rates.append(self.optimizers().param_groups[0]["lr"]), step(self, batch, batch_idx))[1])
    quick = ["trainer.limit_val_batches=0", "callbacks.coco_eval=null", "callbacks.model_checkpoint.monitor=null",
             "data.max_train_images=4"]
    train(train_config([*quick, "trainer.max_epochs=4"], output_dir=tmp_path / "straight"))
    straight = rates[:]
    rates.clear()
    train(train_config([*quick, "trainer.max_epochs=2"], output_dir=tmp_path / "short"))
    rates.clear()
    train(train_config([*quick, "trainer.max_epochs=4", f"ckpt_path={tmp_path / 'short' / 'checkpoints' / 'last.ckpt'}"],
                       output_dir=tmp_path / "resumed"))
    assert len(straight) == 8 and rates == straight[4:]


@pytest.mark.parametrize("schedule", [["trainer.max_epochs=3", "trainer.check_val_every_n_epoch=2"],
                                      ["trainer.max_epochs=-1", "trainer.max_steps=3"],
                                      ["trainer.max_epochs=3", "trainer.check_val_every_n_epoch=2",
                                       "callbacks.model_checkpoint.save_last=link"]], ids=["epochs", "steps", "link"])
def test_last_checkpoint_holds_the_final_step_and_the_raw_weights(train_config, tmp_path, schedule):
    """Epochs after the last validation (or a max_steps end) are saved at the end, and that checkpoint keeps
    the trained weights beside the averaged ones: Lightning wrote none (epoch 3 lost) or, at the end, one
    whose current_model_state was the EMA's (WeightAveraging copies it into the model first). A resume goes
    on with epoch 3 (its position was one epoch ahead: epoch 3's shuffle skipped, epoch 4's used twice)."""
    _, run = train(train_config(schedule, output_dir=tmp_path))
    trainer, model = run["trainer"], run["model"]
    assert trainer.global_step == 3
    last = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 3 and not last.is_symlink()  # link mode: not the older top-k file
    assert checkpoint["COCOKeypointDataModule"]["train_position"]["epoch"] == 3
    raw, averaged = checkpoint["current_model_state"], checkpoint["state_dict"]
    name = next(k for k in raw if k.endswith("conv1.weight"))
    assert not torch.equal(raw[name], averaged[name])  # EMA (decay warm-up 2/11 ...) lags the weights
    # the model ends fit with the averaged weights, as before
    assert all(torch.equal(value, averaged[key]) for key, value in model.state_dict().items())


def test_last_checkpoint_every_n_steps_after_whole_optimiser_steps_only(train_config, tmp_path, monkeypatch):
    """last_every_n_train_steps=1 with 2 micro-batches per optimiser step: last.ckpt after batches 2 and 4
    (a save between them would lose the accumulated gradients), none again at the end (step 2 is saved); the
    same after a resume from step 2, whose first micro-batch is still at step 2."""
    saves = []
    write = ModelCheckpoint._write_last
    monkeypatch.setattr(ModelCheckpoint, "_write_last", lambda self, trainer: (
        saves.append((trainer.global_step, trainer.fit_loop.epoch_loop.batch_progress.current.ready)),
        write(self, trainer)))
    run = ["data.batch_size=1", "trainer.accumulate_grad_batches=2", "trainer.max_steps=-1",
           "data.max_train_images=4", "trainer.limit_val_batches=0", "callbacks.coco_eval=null",
           "callbacks.model_checkpoint.monitor=null", "callbacks.model_checkpoint.last_every_n_train_steps=1"]
    train(train_config([*run, "trainer.max_epochs=1"], output_dir=tmp_path))
    assert saves == [(1, 2), (2, 4)]  # (optimiser steps, batches of the epoch) when last.ckpt was written
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 2

    saves.clear()
    train(train_config([*run, "trainer.max_epochs=2", f"ckpt_path={last}"], output_dir=tmp_path / "resumed"))
    assert saves == [(3, 2), (4, 4)]


def test_a_periodic_last_checkpoint_leaves_the_validations_saves_alone(train_config, tmp_path):
    """A validation right after a periodic save (the same step): Lightning skipped its saves there, as if that
    step were saved already: no best-model file at all, and a last.ckpt from before the validation."""
    train(train_config(["data.max_train_images=2", "trainer.max_epochs=3", "callbacks.coco_eval=null",
                        "callbacks.model_checkpoint.save_top_k=-1",
                        "callbacks.model_checkpoint.last_every_n_train_steps=1"], output_dir=tmp_path))
    saved = sorted(path.name for path in (tmp_path / "checkpoints").iterdir())
    assert saved == ["epoch000-step000001.ckpt", "epoch001-step000002.ckpt", "epoch002-step000003.ckpt", "last.ckpt"]
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    state = next(v for k, v in last["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert len(state["best_k_models"]) == 3  # written after the last validation


@pytest.mark.parametrize("every", [0, -3, True, 2.5])
def test_last_checkpoint_every_n_steps_must_be_a_positive_integer(every):
    with pytest.raises(ConfigError, match=rf"last_every_n_train_steps must be a positive integer or null, got {every}"):
        ModelCheckpoint(last_every_n_train_steps=every)


def test_a_run_stopped_by_max_steps_inside_an_epoch_goes_on_with_that_epoch(train_config, tmp_path, monkeypatch):
    """Lightning counts an epoch that max_steps stopped as completed (and keeps its batch count): the
    checkpoint saves it as unfinished, so that a longer resumed run trains the batches a straight run does
    (it went on with the next epoch, one batch in: one batch of each epoch lost)."""
    seen = []
    step = StrongPoseModule.training_step

    def recording(self, batch, batch_idx):
        seen.append(batch["meta"]["image_id"].tolist())
        return step(self, batch, batch_idx)

    monkeypatch.setattr(StrongPoseModule, "training_step", recording)
    run = ["data.max_train_images=4", "trainer.max_epochs=-1", "callbacks.coco_eval=null"]  # 2 steps an epoch
    train(train_config([*run, "trainer.max_steps=1"], output_dir=tmp_path / "a"))
    checkpoint = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["COCOKeypointDataModule"]["train_position"] == {"epoch": 0, "batches": 1, "batch_size": 2,
                                                                      "world_size": 1}
    train(train_config([*run, "trainer.max_steps=3"], output_dir=tmp_path / "a"))  # resume=auto
    resumed = list(seen)
    seen.clear()
    train(train_config([*run, "trainer.max_steps=3"], output_dir=tmp_path / "b"))
    assert resumed == seen and len(seen) == 3


def test_cli_runs_from_any_folder_and_says_where_the_checkpoint_is(tmp_path, train_cli):
    args = ["logger=csv", "trainer=cpu", "data.input_size=64", "data.batch_size=2", "data.max_train_images=2",
            "data.max_val_images=2", "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1",
            "trainer.enable_model_summary=false", "hydra.run.dir=run"]
    done = train_cli(args, tmp_path)
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / ".hydra" / "config.yaml").is_file()
    assert list(run.glob("csv/version_0/metrics.csv"))
    lines = [line for line in done.stdout.splitlines() if line.startswith("Done:")]
    assert len(lines) == 1 and str(Path("run") / "checkpoints" / "last.ckpt") in lines[0]


@pytest.mark.slow
def test_multirun_gives_each_job_its_own_folder(tmp_path, train_cli, cli):
    args = ["-m", "logger=none", "trainer=cpu", "data.input_size=64", "data.batch_size=2",
            "data.max_train_images=2", "data.max_val_images=2", "trainer.fast_dev_run=true",
            "backbone=resnet18,resnet34", "hydra.sweep.dir=sweep"]
    train_cli(args, tmp_path, timeout=600)
    jobs = sorted(p.parent.parent.name for p in (tmp_path / "sweep").glob("*/.hydra/overrides.yaml"))
    assert jobs == ["0", "1"]
    summary = cli("strongpose.sweep_summary", ["dir=sweep"], tmp_path).stdout.splitlines()  # the jobs' own files
    assert summary[1].split() == ["run", "backbone", "val/loss", "step", "status"]
    assert sorted(line.split()[1] for line in summary[2:4]) == ["resnet18", "resnet34"]
    assert summary[-1] == "done 2, failed 0, unfinished 0"



def test_frozen_norm_without_pretrained_weights_is_warned_about(train_config, tmp_path, caplog):
    cfg = train_config(["backbone.norm=frozen", "trainer.fast_dev_run=true"], output_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="strongpose.train"):
        train(cfg)
    assert "backbone.norm=frozen without backbone.pretrained=true" in caplog.text
