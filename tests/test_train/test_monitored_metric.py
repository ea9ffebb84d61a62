"""What a run is judged on is checked before training: an optimized_metric nothing logs is refused up front (it
failed in Lightning's checkpoint callback after the first validation epoch), a run too short to validate, or one
that does not validate with a val/* metric to optimise, says so, and training data of one's own validated on the
embedded sample is refused."""

import logging

import pytest

from strongpose.config_check import ConfigError
from strongpose.data import sample_paths
from strongpose.lit_module import StrongPoseModule
from strongpose.train import train


@pytest.mark.parametrize(("overrides", "message"), [
    (["optimized_metric=val/APtypo"], r"optimized_metric='val/APtypo' is not logged by this run \(did you mean "
                                      r"'val/AP'\?\); it logs: train/images_per_sec, train/loss, "),
    (["optimized_metric=val/AP", "callbacks.coco_eval=null"],
     r"optimized_metric='val/AP' is not logged by this run; the COCO statistics \(val/AP, \.\.\.\) need "
     r"callbacks.coco_eval, which is off"),
    (["optimized_metric=val/AP_easy"], r"optimized_metric='val/AP_easy' is CrowdPose's AP by crowd index, logged only "
                                       r"when every validation image has a crowdIndex; .*annotations.json has none"),
    (["callbacks.model_checkpoint.monitor=val/los"], r"optimized_metric='val/los' is not logged by this run \(did "
                                                     r"you mean 'val/loss'\?\)"),
])
def test_a_metric_nothing_logs_is_refused_before_training(train_config, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        train(train_config(overrides, output_dir=tmp_path))
    assert not (tmp_path / "checkpoints").exists()


class Own(StrongPoseModule):
    def validation_step(self, batch, batch_idx):
        out = super().validation_step(batch, batch_idx)
        self.log("val/own", 1.0)
        return out


def test_a_module_of_ones_own_may_log_other_metrics(train_config, tmp_path):
    metrics, objects = train(train_config([f"model._target_={__name__}.Own", "optimized_metric=val/own",
                                           "callbacks.coco_eval=null"], output_dir=tmp_path))
    assert type(objects["model"]).__name__ == "Own" and metrics["val/own"] == 1.0


def test_a_run_too_short_to_validate_says_so(train_config, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        metrics, _ = train(train_config(["trainer.max_epochs=1", "trainer.check_val_every_n_epoch=2",
                                         "callbacks.coco_eval=null"], output_dir=tmp_path))
    assert "val/loss" not in metrics
    assert ("trainer.max_epochs=1 is below trainer.check_val_every_n_epoch=2: no validation will run, so the run "
            "ends without val/* metrics or a best checkpoint, and optimized_metric val/loss has no value for a "
            "sweeper") in caplog.text


def test_training_without_validation_says_a_val_metric_gets_no_value(train_config, tmp_path, caplog):
    """trainer.limit_val_batches=0 with a sweep's val/* metric: the run ended without it, saying nothing."""
    with caplog.at_level(logging.WARNING):
        metrics, objects = train(train_config(["trainer.limit_val_batches=0", "optimized_metric=val/AP"],
                                              output_dir=tmp_path))
    assert ("trainer.limit_val_batches=0: no validation will run, so optimized_metric val/AP has no value for a "
            "sweeper and the checkpoint callback monitoring val/AP keeps no best checkpoint; set "
            "optimized_metric=null (or train/loss) to train without validating") in caplog.text
    assert caplog.text.count("trainer.limit_val_batches=0: no validation") == 1  # once
    # the run still ends: no value (main returns None), no best checkpoint, its last one
    assert "val/AP" not in metrics and "train/loss" in metrics and objects["best_checkpoint"] is None
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_training_without_validation_on_a_train_metric_does_not_warn(train_config, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        metrics, _ = train(train_config(["trainer.limit_val_batches=0", "optimized_metric=train/loss",
                                         "callbacks.coco_eval=null"], output_dir=tmp_path))
    assert "no validation will run" not in caplog.text and "train/loss" in metrics


def test_own_training_data_validated_on_the_sample_is_refused(train_config, tmp_path):
    """Only the train pair given: validation, the best checkpoint and a sweep's metric were the sample's, unsaid."""
    images, annotations = sample_paths()
    mine = tmp_path / "mine.json"  # data of one's own (here a copy of the sample's annotations)
    mine.write_text(annotations.read_text())
    own = [f"data.train_images={images}", f"data.train_annotations={mine}"]
    with pytest.raises(ConfigError, match=r"data\.train_images / data\.train_annotations are given but "
                                          r"data\.val_images / data\.val_annotations are not: validation would run on "
                                          r"the embedded 13-image COCO sample"):
        train(train_config(own, output_dir=tmp_path))
    _, objects = train(train_config([*own, "trainer.limit_val_batches=0", "callbacks.coco_eval=null",
                                     "callbacks.model_checkpoint.monitor=null"], output_dir=tmp_path))
    assert objects["trainer"].global_step == 1  # training without validation may


def test_lightning_s_step_and_epoch_may_be_monitored(train_config, tmp_path):
    """The usual way to keep the newest checkpoints; the first version of the check refused them."""
    _, objects = train(train_config(["callbacks.model_checkpoint.monitor=step", "callbacks.model_checkpoint.mode=max",
                                     "callbacks.coco_eval=null"], output_dir=tmp_path))
    assert objects["best_checkpoint"]["monitor"] == "step"
