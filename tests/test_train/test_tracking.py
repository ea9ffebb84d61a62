"""What a run leaves for the researcher: one W&B run per job of a sweep, named and grouped, and metrics.json with
the final metrics and the best checkpoint."""

import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from strongpose.tracking import sweep_run_names
from strongpose.train import best_checkpoint, train, write_run_summary

TINY_RUN = ["trainer=cpu", "data.input_size=64", "data.batch_size=2", "data.max_train_images=2",
            "data.max_val_images=2", "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1",
            "trainer.enable_model_summary=false", "callbacks.coco_eval.log_images=1"]


def test_a_run_writes_its_final_metrics_and_names_its_best_checkpoint(train_config, tmp_path, capsys):
    _, run = train(train_config(["trainer.max_epochs=2", "callbacks.model_checkpoint.save_top_k=2"],
                                output_dir=tmp_path))
    summary = json.loads((tmp_path / "metrics.json").read_text())
    best = best_checkpoint(run["trainer"].checkpoint_callback)
    assert summary["best_checkpoint"] == best == run["best_checkpoint"] and best["monitor"] == "val/loss"
    assert summary["global_step"] == 2
    losses = [float(v) for v in run["trainer"].checkpoint_callback.best_k_models.values()]
    assert best["score"] == pytest.approx(min(losses))  # the best of the validations, not the last
    assert summary["metrics"]["val/loss"] == pytest.approx(float(run["trainer"].callback_metrics["val/loss"]))
    done = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"best val/loss={best['score']:.4f}: {best['path']}" in done and str(tmp_path / "metrics.json") in done


def test_a_new_attempt_removes_the_last_ones_run_files(train_config, tmp_path):
    (tmp_path / "failed.txt").write_text("an earlier attempt's traceback")
    (tmp_path / "metrics.json").write_text("{}")
    train(train_config(["trainer.limit_val_batches=0", "callbacks.coco_eval=null",
                        "callbacks.model_checkpoint.monitor=null"], output_dir=tmp_path))
    assert not (tmp_path / "failed.txt").exists()
    assert json.loads((tmp_path / "metrics.json").read_text())["global_step"] == 1


def test_a_finished_run_started_again_in_its_folder_keeps_its_metrics(train_config, tmp_path, capsys):
    """resume=auto found last.ckpt at the run's end: nothing trained or validated, and metrics.json was rewritten
    with no metrics (a sweep's value gone with them)."""
    overrides = ["callbacks.coco_eval=null"]
    first, _ = train(train_config(overrides, output_dir=tmp_path))
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert "val/loss" in first and written["metrics"]["val/loss"] == pytest.approx(first["val/loss"])
    capsys.readouterr()
    again, objects = train(train_config(overrides, output_dir=tmp_path))
    assert objects["trainer"].global_step == written["global_step"]  # nothing trained
    assert "Nothing to train: " in capsys.readouterr().out
    assert again["val/loss"] == pytest.approx(first["val/loss"])
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"] == written["metrics"]


def test_non_finite_metrics_are_null_in_metrics_json(tmp_path):
    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path)}, "optimized_metric": "val/loss"})
    best = {"path": "x.ckpt", "monitor": "val/loss", "score": math.inf}
    path = write_run_summary(cfg, {"val/loss": math.nan, "val/AP": 0.5}, "last.ckpt", best,
                             SimpleNamespace(global_step=3, current_epoch=1))
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON readers (jq, JavaScript) refuse them
    summary = json.loads(text)
    assert summary["metrics"] == {"val/loss": None, "val/AP": 0.5} and summary["best_checkpoint"]["score"] is None


def test_a_run_that_fails_before_fit_finishes_its_wandb_run(train_config, tmp_path, monkeypatch):
    """log_hyperparams starts the W&B run; a bad init_from then failed with it open, and the next job of a
    multirun logged into it."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(Exception, match="nothing.ckpt"):
        train(train_config(["logger=wandb", f"init_from={tmp_path / 'nothing.ckpt'}"], output_dir=tmp_path))
    assert list((tmp_path / "wandb").glob("offline-run-*")) and wandb.run is None


def test_a_sweep_job_is_named_by_its_overrides_and_grouped_by_its_sweep(train_config):
    assert sweep_run_names() == {}  # not a multirun
    cfg = train_config(["model.lr=0.001"], output_dir="/unused", return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.mode = "MULTIRUN"
        cfg.hydra.job.override_dirname = "model.lr=0.001"
        cfg.hydra.sweep.dir = "/multirun/2026-11-27/11-10-18"
    HydraConfig.instance().set_config(cfg)
    try:
        assert sweep_run_names() == {"name": "model.lr=0.001", "group": "2026-11-27/11-10-18"}
    finally:
        HydraConfig.instance().cfg = None
    # the README's "logger.wandb.name / group win": both are keys (group was refused as unknown)
    given = train_config(["logger=wandb", "logger.wandb.name=mine", "logger.wandb.group=ours"], output_dir="/unused")
    assert (given.logger.wandb.name, given.logger.wandb.group) == ("mine", "ours")


def test_every_failing_job_of_a_sweep_is_named_and_leaves_its_traceback(tmp_path):
    """Hydra prints the first failing job's error at the end of the sweep, and the jobs' train.log were empty."""
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    done = subprocess.run([sys.executable, "-m", "strongpose.train", "-m", "logger=none", *TINY_RUN,
                           "data.train_images=/nothing", "data.train_annotations=/nothing/a.json,/nothing/b.json",
                           f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 1
    for job, name in (("0", "a.json"), ("1", "b.json")):
        line = f"failed: FileNotFoundError: train_annotations: COCO annotation file not found: /nothing/{name} " \
               f"(traceback in {tmp_path / 'sweep' / job / 'failed.txt'})"  # after "job N (its overrides)"
        assert line in done.stderr + done.stdout
        assert f"job {job} (" in (tmp_path / "sweep" / job / "train.log").read_text()
        assert line in (tmp_path / "sweep" / job / "train.log").read_text()
        assert "Traceback" in (tmp_path / "sweep" / job / "failed.txt").read_text()


@pytest.mark.slow
def test_each_job_of_a_sweep_logs_to_its_own_wandb_run(tmp_path):
    """WandbLogger leaves its run open: the next job of the multirun (the same process) logged into it."""
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    done = subprocess.run([sys.executable, "-m", "strongpose.train", "-m", "logger=wandb", *TINY_RUN,
                           "model.lr=1e-3,3e-4", f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "already in progress" not in done.stdout + done.stderr
    for job in ("0", "1"):
        assert len(list((tmp_path / "sweep" / job / "wandb").glob("offline-run-*"))) == 1, job
        assert json.loads((tmp_path / "sweep" / job / "metrics.json").read_text())["best_checkpoint"]


def test_tensorboard_logger_gets_the_losses_metrics_and_drawn_predictions(train_config, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(train_config(["logger=tensorboard", *TINY_RUN], output_dir=tmp_path))
    (folder,) = (tmp_path / "tensorboard").glob("version_*")
    events = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/loss_skhm", "val/loss", "val/AP", "lr-AdamW"} <= scalars, sorted(scalars)
    assert "hp_metric" not in scalars  # Lightning's placeholder of -1, off
    validations = [e.step for e in events.Scalars("val/AP")]
    assert len(validations) == 2  # one image a validation, at the step of its metrics (lined up in TensorBoard)
    assert [image.step for image in events.Images("val/predictions/0")] == validations
    assert {(image.width, image.height) for image in events.Images("val/predictions/0")} == {(64, 64)}


def test_a_resumed_run_goes_on_in_its_tensorboard_run(train_config, tmp_path):
    """One TensorBoard run however often the training was resumed in its folder (a requeued job): the same
    version_N, each validation's metrics once."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = ["logger=tensorboard", *TINY_RUN]
    train(train_config(run, output_dir=tmp_path))
    train(train_config([*run, "trainer.max_epochs=4"], output_dir=tmp_path))  # resume=auto: 2 more epochs
    assert [p.name for p in (tmp_path / "tensorboard").iterdir()] == ["version_0"]
    events = EventAccumulator(str(tmp_path / "tensorboard" / "version_0"), size_guidance={"scalars": 0})
    events.Reload()
    steps = [e.step for e in events.Scalars("val/AP")]
    assert len(steps) == 4 and steps == sorted(set(steps))
