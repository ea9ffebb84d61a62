"""hparams_search=optuna: the direction follows optimized_metric, a search that could only find nonsense is
refused, a missing plugin is named with its extra, and a real search's best trial is the best job."""

import importlib.util
import json

import pytest
import yaml
from omegaconf import OmegaConf

from strongpose.config_check import ConfigError, missing_plugin_hint
from strongpose.sweep_direction import check_sweep_direction, sweep_direction


def sweeper(train_config, tmp_path, *overrides):
    cfg = train_config(["hparams_search=optuna", *overrides], output_dir=tmp_path, return_hydra_config=True)
    return cfg, cfg.hydra.sweeper


def test_the_direction_follows_the_metric_and_every_searched_key_exists(train_config, tmp_path):
    cfg, found = sweeper(train_config, tmp_path)
    assert cfg.optimized_metric == "val/AP" and found.direction == "maximize"
    assert found._target_.endswith("OptunaSweeper") and found.sampler._target_ == "optuna.samplers.TPESampler"
    for key in found.params:  # a typo in the preset would be a new key that nothing reads
        assert OmegaConf.select(cfg, key, throw_on_missing=True) is not None, key
    _, loss_term = sweeper(train_config, tmp_path, "optimized_metric=val/loss_skhm")
    assert loss_term.direction == "minimize"
    assert [sweep_direction(m) for m in ("val/AR", "val/AP_hard", "train/loss", None)] == [
        "maximize", "maximize", "minimize", "minimize"]


def test_a_sweep_against_its_metric_is_refused():
    params = {"model.lr": "tag(log, interval(1e-4, 3e-3))", "model.loss.weights.mid": "interval(0.1, 1.0)"}
    check_sweep_direction("val/AP", OmegaConf.create({"direction": "maximize", "params": params}))
    with pytest.raises(ConfigError, match="direction=minimize but optimized_metric=val/AP is best high"):
        check_sweep_direction("val/AP", OmegaConf.create({"direction": "minimize", "params": {}}))
    with pytest.raises(ConfigError, match="direction=maximize but optimized_metric=val/loss_skhm is best low"):
        check_sweep_direction("val/loss_skhm", {"direction": "MAXIMIZE"})
    # searching the loss weights by the weighted total finds the smallest weights
    with pytest.raises(ConfigError, match="searches model.loss.weights.mid by optimized_metric=val/loss, the "
                                          "weighted total"):
        check_sweep_direction("val/loss", OmegaConf.create({"direction": "minimize", "params": params}))
    check_sweep_direction("val/loss_skhm", OmegaConf.create({"direction": "minimize", "params": params}))
    # Hydra's basic sweeper has no direction (nothing is picked); a multi-objective list is the user's own
    check_sweep_direction("val/loss", OmegaConf.create({"max_batch_size": None, "params": params}))
    check_sweep_direction("val/AP", {"direction": ["minimize", "maximize"]})
    check_sweep_direction("val/AP", None)


def test_a_missing_plugin_is_named_with_the_extra_that_brings_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("hydra_plugins.") else real(name, *a))
    assert missing_plugin_hint(["hparams_search=optuna", "model.lr=1"]) == (
        "hparams_search=optuna needs a Hydra plugin that is not installed (hydra_optuna_sweeper): "
        "pip install 'strongpose[sweeps]'")
    assert "strongpose[slurm]" in missing_plugin_hint(["-m", "hydra/launcher=slurm"])
    assert missing_plugin_hint(["hparams_search=lr_backbone"]) is None
    monkeypatch.setattr(importlib.util, "find_spec", real)
    assert missing_plugin_hint(["hparams_search=optuna"]) is None  # installed here (the test extra)


@pytest.mark.slow
def test_an_optuna_search_picks_its_best_job(tmp_path, train_cli, cli):
    """Three trials of a real search: the study's best value is the best job's score (what main returned),
    and sweep_summary ranks the same job first."""
    args = ["hparams_search=optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.n_startup_trials=2",
            "optimized_metric=val/loss_skhm", "logger=none", "trainer=cpu", "data.input_size=64",
            "data.batch_size=2", "data.max_train_images=4", "data.max_val_images=2", "trainer.max_epochs=2",
            "trainer.check_val_every_n_epoch=1", "trainer.enable_model_summary=false", "hydra.sweep.dir=sweep"]
    train_cli(args, tmp_path, timeout=600)
    sweep = tmp_path / "sweep"
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    scores = {job.name: json.loads((job / "metrics.json").read_text())["best_checkpoint"]["score"]
              for job in sorted(sweep.iterdir()) if (job / "metrics.json").is_file()}
    assert len(scores) == 3 and len(set(scores.values())) == 3
    best = min(scores, key=scores.get)
    assert result["best_value"] == pytest.approx(scores[best])
    overrides = yaml.safe_load((sweep / best / ".hydra" / "overrides.yaml").read_text())
    for key, value in result["best_params"].items():
        assert f"{key}={value}" in overrides
    summary = cli("strongpose.sweep_summary", ["dir=sweep"], tmp_path).stdout.splitlines()
    assert summary[2].split()[0] == best


def test_a_resumed_job_must_have_been_trained_with_its_own_configuration(train_config, tmp_path):
    from strongpose.resume_check import changed_settings

    def resolved(*overrides):
        return OmegaConf.to_container(train_config(list(overrides), output_dir=tmp_path), resolve=True)

    saved = resolved("data=coco", "data.num_workers=0")
    # a longer run, other workers (also under a group override), the fused optimiser off, moved data: the same
    # training; another learning rate, backbone or optimiser: not
    same = resolved("data=coco", "data.num_workers=3", "trainer.max_epochs=9", "model.optimizer.fused=false",
                    "data.val_images=/elsewhere", "model.lr=1e-3")
    assert changed_settings(same, saved) == []
    other = changed_settings(resolved("model.lr=0.002", "backbone=resnet34", "model/optimizer=sgd"), saved)
    assert "model.lr: 0.001 -> 0.002" in other and "backbone.arch: 'resnet18' -> 'resnet34'" in other
    assert any(line.startswith("model.optimizer._target_: 'torch.optim.AdamW' -> ") for line in other)
    # an experiment changes what is trained without an override of its keys
    assert changed_settings(resolved("experiment=overfit"), resolved())


def test_a_trial_without_a_value_for_the_sweeper_is_refused_before_training(caplog):
    import lightning as L

    from strongpose.monitored import warn_if_no_validation

    short = L.Trainer(max_epochs=1, check_val_every_n_epoch=5, logger=False, enable_checkpointing=False)
    with pytest.raises(ConfigError, match="optimized_metric=val/AP gets no value in this trial, and the sweeper "
                                          "needs it: trainer.max_epochs=1 is below trainer.check_val_every_n_epoch=5"):
        warn_if_no_validation(short, "val/AP", needed=True)
    warn_if_no_validation(short, "val/AP")  # a single run: a warning
    warn_if_no_validation(short, "train/loss", needed=True)  # logged at every step
    unvalidated = L.Trainer(max_epochs=3, limit_val_batches=0, logger=False, enable_checkpointing=False)
    with pytest.raises(ConfigError, match="trainer.limit_val_batches=0"):
        warn_if_no_validation(unvalidated, "val/loss", needed=True)


@pytest.mark.slow
def test_a_sweep_is_checked_before_its_first_trial(tmp_path, train_cli, cli):
    """Loss weights searched on the command line by the weighted total, and a new study into an earlier sweep's
    folder: refused before any trial (exit 2); the earlier sweep's files are left as they were."""
    tiny = ["logger=none", "trainer=cpu", "data.input_size=64", "data.batch_size=2", "data.max_train_images=2",
            "data.max_val_images=2", "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1",
            "trainer.enable_model_summary=false"]
    weights = cli("strongpose.train", ["-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=1",
                                       "optimized_metric=val/loss", "model.loss.weights.mid=interval(0.1,1.0)", *tiny,
                                       "hydra.sweep.dir=weights"], tmp_path, check=False)
    assert weights.returncode == 2 and "searches model.loss.weights.mid by optimized_metric=val/loss" in weights.stderr
    assert not (tmp_path / "weights").exists()
    study = ["hparams_search=optuna", "hydra.sweeper.n_trials=1", "optimized_metric=val/loss_skhm", *tiny,
             "hydra.sweep.dir=study"]
    train_cli(study, tmp_path, timeout=600)
    before = (tmp_path / "study" / "0" / "metrics.json").read_text()
    again = cli("strongpose.train", [*study, "hydra.sweeper.sampler.seed=99"], tmp_path, check=False)
    assert again.returncode == 2 and "holds an earlier sweep's jobs with checkpoints (0)" in again.stderr
    assert (tmp_path / "study" / "0" / "metrics.json").read_text() == before
    # a basic sweep run again into its folder with another value: the job refuses the other one's checkpoint,
    # keeps its metrics aside, and the folder reads failed with the reason
    grid = ["-m", *tiny, "hydra.sweep.dir=grid"]
    train_cli([*grid, "model.lr=1e-3"], tmp_path)
    earlier = (tmp_path / "grid" / "0" / "metrics.json").read_text()
    changed = cli("strongpose.train", [*grid, "model.lr=3e-4"], tmp_path, check=False)
    assert changed.returncode != 0 and "model.lr: 0.001 -> 0.0003" in changed.stdout + changed.stderr
    assert (tmp_path / "grid" / "0" / "earlier_metrics.json").read_text() == earlier
    summary = cli("strongpose.sweep_summary", ["dir=grid"], tmp_path).stdout
    assert "failed: ConfigError: resume=auto found" in summary


def test_an_optuna_search_composes_with_the_slurm_launcher(train_config, tmp_path):
    """The README's cluster search: trials as SLURM jobs of 4 GPUs, 8 at a time."""
    cfg, found = sweeper(train_config, tmp_path, "hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4",
                         "hydra.sweeper.n_jobs=8", "experiment=coco_resnet50")
    assert found.direction == "maximize" and found.n_jobs == 8
    assert cfg.hydra.launcher._target_ == "hydra_plugins.strongpose_launcher.slurm.SlurmLauncher"
    assert cfg.hydra.launcher.tasks_per_node == 4
