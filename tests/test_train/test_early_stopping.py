"""callbacks=[default,early_stopping]: the run stops when optimized_metric stops improving, which way is better
follows the metric, a run that stopped stays stopped when started again, and impossible setups are refused."""

import json
import logging

import pytest
import torch

from strongpose.callbacks import EarlyStopping
from strongpose.config_check import ConfigError
from strongpose.train import train

RUN = ["callbacks=[default,early_stopping]", "callbacks.coco_eval=null", "trainer.max_epochs=6",
       "data.max_train_images=2", "callbacks.early_stopping.patience=1"]


def test_the_direction_follows_the_metric():
    assert EarlyStopping(monitor="val/AP", mode="auto").mode == "max"
    assert EarlyStopping(monitor="val/loss", mode="auto").mode == "min"
    assert EarlyStopping(monitor="val/AP", mode="min").mode == "min"  # as asked


def test_a_run_stops_when_its_metric_stops_improving_and_stays_stopped(train_config, tmp_path, caplog):
    # no validation can improve on the first by a billion: the second uses up the patience of 1
    cfg = train_config([*RUN, "callbacks.early_stopping.min_delta=1e9"], output_dir=tmp_path)
    _, run = train(cfg)
    trainer = run["trainer"]
    assert trainer.current_epoch == 2 and trainer.global_step == 2  # 2 of 6 epochs, one step each
    stopper = next(c for c in trainer.callbacks if isinstance(c, EarlyStopping))
    assert stopper.monitor == "val/loss" and stopper.mode == "min" and stopper.stopped_epoch == 1
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 2
    with caplog.at_level(logging.WARNING, logger="strongpose.callbacks"):
        _, again = train(train_config([*RUN, "callbacks.early_stopping.min_delta=1e9"], output_dir=tmp_path))
    assert again["trainer"].global_step == 2  # resume=auto: not one more step
    finished = json.loads((tmp_path / "metrics.json").read_text())
    assert finished["global_step"] == 2 and finished["metrics"]["val/loss"] is not None  # kept, as it stopped
    assert "had not improved for 1 validations when this run stopped early" in caplog.text


def test_a_larger_patience_lets_a_stopped_run_go_on(train_config, tmp_path):
    """Lightning restores the checkpoint's patience: the configured one holds, so a stopped run can go on."""
    stop = [*RUN, "callbacks.early_stopping.min_delta=1e9"]
    train(train_config(stop, output_dir=tmp_path))
    _, more = train(train_config([*stop, "callbacks.early_stopping.patience=3"], output_dir=tmp_path))
    assert more["trainer"].global_step > 2  # it trained on (and stopped again once 3 validations had not improved)
    stopper = next(c for c in more["trainer"].callbacks if isinstance(c, EarlyStopping))
    assert stopper.patience == 3


def test_a_run_that_improves_goes_on(train_config, tmp_path):
    _, run = train(train_config([*RUN, "trainer.max_epochs=3", "callbacks.early_stopping.patience=3"],
                                output_dir=tmp_path))
    assert run["trainer"].current_epoch == 3


def test_an_early_stop_that_can_never_be_decided_is_refused(train_config, tmp_path):
    with pytest.raises(ConfigError, match="limit_val_batches=0: no validation will run, but early stopping "
                                          "watches val/loss"):
        train(train_config([*RUN, "trainer.limit_val_batches=0"], output_dir=tmp_path))
    with pytest.raises(ConfigError, match="early stopping watches epoch, which only grows"):
        train(train_config([*RUN, "callbacks.early_stopping.monitor=epoch"], output_dir=tmp_path))
    with pytest.raises(ConfigError, match="val/loss_typo"):  # named before training, as a checkpoint monitor is
        train(train_config([*RUN, "callbacks.early_stopping.monitor=val/loss_typo"], output_dir=tmp_path))


def test_final_test_metric_stops_by_its_validation_twin(train_config, tmp_path):
    cfg = train_config(["callbacks=[default,early_stopping]", "final_test=true", "optimized_metric=test/AP"],
                       output_dir=tmp_path)
    from strongpose.final_test import monitor_validation_twin

    monitor_validation_twin(cfg)
    assert cfg.callbacks.early_stopping.monitor == "val/AP" == cfg.callbacks.model_checkpoint.monitor
