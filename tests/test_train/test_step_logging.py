"""The training step's loss terms are logged only at the steps whose values are read (written to the loggers,
or before a validation or the end: each self.log costs host time), with the values of that very step, so that
no logger row and no metrics.json holds another step's."""

import csv
import json
from collections import defaultdict

import lightning as L
import pytest
from lightning.pytorch.callbacks import Timer

from strongpose.lit_module import DEFAULT_LOSS_WEIGHTS, LOSS, NONFINITE
from strongpose.train import train

SMALL = ["logger=csv", "trainer.limit_val_batches=0", "callbacks.coco_eval=null", "backbone.neck_channels=32",
         "model.heads.width=32", "callbacks.model_checkpoint=null", "+trainer.enable_checkpointing=false"]


def weighted_total(row: dict) -> float:
    return sum(w * float(row[f"train/{LOSS}_{name}"]) for name, w in DEFAULT_LOSS_WEIGHTS.items()
               if row.get(f"train/{LOSS}_{name}") not in (None, ""))


@pytest.fixture
def logged_names(monkeypatch):
    """The names the module logs, per training batch (1-based)."""
    names = defaultdict(list)
    real_log = L.LightningModule.log

    def log(self, name, *args, **kwargs):
        if self.trainer.training:
            names[self.trainer.fit_loop.epoch_loop.batch_progress.total.ready].append(name)
        return real_log(self, name, *args, **kwargs)

    monkeypatch.setattr(L.LightningModule, "log", log)
    return names


SEVEN_STEPS = ["data.max_train_images=7", "data.batch_size=1", "trainer.log_every_n_steps=3"]  # an epoch of 7


def test_terms_are_logged_at_the_written_steps_with_their_own_values(train_config, tmp_path, logged_names):
    # Lightning writes steps 3 and 6 (1-based); the 7th ends the epoch and the run
    cfg = train_config([*SMALL, *SEVEN_STEPS, "trainer.max_epochs=1"], output_dir=tmp_path)
    train(cfg)
    terms = {f"train/{LOSS}_{name}" for name in DEFAULT_LOSS_WEIGHTS if name != "long"} | {NONFINITE}
    assert sorted(logged_names) == [1, 2, 3, 4, 5, 6, 7]
    assert all(names.count(f"train/{LOSS}") == 1 for names in logged_names.values())  # the total at every step
    assert sorted(step for step, names in logged_names.items() if terms <= set(names)) == [3, 6, 7]
    assert all(logged_names[step] == [f"train/{LOSS}"] for step in (1, 2, 4, 5))  # nor images/s
    assert all("train/images_per_sec" in logged_names[step] for step in (3, 6, 7))
    rows = list(csv.DictReader(open(next(tmp_path.glob("csv/version_*/metrics.csv")))))
    written = [r for r in rows if r.get(f"train/{LOSS}_skhm")]
    assert [int(r["step"]) for r in written] == [2, 5]
    for row in written:  # the terms of the step whose total is written beside them, not an earlier one's
        assert weighted_total(row) == pytest.approx(float(row[f"train/{LOSS}"]), rel=1e-5)
    final = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert weighted_total(final) == pytest.approx(final[f"train/{LOSS}"], rel=1e-5)  # the last step's terms


def test_every_step_logs_its_terms_at_the_default_interval(train_config, tmp_path, logged_names):
    train(train_config([*SMALL, "trainer.max_epochs=3"], output_dir=tmp_path))  # log_every_n_steps=1
    assert sorted(logged_names) == [1, 2, 3]
    assert all(f"train/{LOSS}_skhm" in logged_names[step] for step in (1, 2, 3))


def test_the_logging_test_is_lightnings():
    # strongpose.log_steps asks Lightning's logger connector whether a step's values are written; without that
    # (private) property the terms would be logged at every step: a Lightning upgrade that drops it shows here
    from lightning.pytorch.trainer.connectors.logger_connector.logger_connector import _LoggerConnector
    assert isinstance(getattr(_LoggerConnector, "should_update_logs", None), property)


class StopAtBatch(L.Callback):
    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.fit_loop.epoch_loop.batch_progress.total.ready == self.batch:
            trainer.should_stop = True  # what EarlyStopping or a Ctrl-C's checkpoint does


def test_a_run_stopped_in_a_step_writes_that_steps_terms(train_config, tmp_path, logged_names):
    cfg = train_config([*SMALL, *SEVEN_STEPS, "trainer.max_epochs=1",
                        f"+callbacks.stop._target_={__name__}.StopAtBatch", "+callbacks.stop.batch=2"],
                       output_dir=tmp_path)
    train(cfg)
    assert sorted(logged_names) == [1, 2] and f"train/{LOSS}_skhm" in logged_names[2]
    rows = [r for r in csv.DictReader(open(next(tmp_path.glob("csv/version_*/metrics.csv"))))
            if r.get(f"train/{LOSS}_skhm")]
    assert [int(r["step"]) for r in rows] == [1]
    assert weighted_total(rows[0]) == pytest.approx(float(rows[0][f"train/{LOSS}"]), rel=1e-5)


class StopAtEpochEnd(L.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True  # as EarlyStopping does after a validation, Timer(interval="epoch")


def test_a_run_stopped_after_an_epoch_ends_with_that_epochs_last_terms(train_config, tmp_path, logged_names):
    cfg = train_config([*SMALL, "data.max_train_images=4", "data.batch_size=1", "trainer.log_every_n_steps=3",
                        "trainer.max_epochs=5", f"+callbacks.stop._target_={__name__}.StopAtEpochEnd"],
                       output_dir=tmp_path)
    train(cfg)
    assert sorted(logged_names) == [1, 2, 3, 4] and f"train/{LOSS}_skhm" in logged_names[4]  # the epoch's last
    final = json.loads((tmp_path / "metrics.json").read_text())
    assert final["global_step"] == 4
    assert weighted_total(final["metrics"]) == pytest.approx(final["metrics"][f"train/{LOSS}"], rel=1e-5)


def test_images_per_second_sees_a_max_time_stop(train_config, tmp_path, logged_names, monkeypatch):
    """Lightning's Timer (max_time), appended after the configured callbacks, stops the run in step 2: Lightning
    writes that step, so images/s (a callback) must be logged there too, not left as it was at step 1."""
    trainers = []
    start = Timer.on_train_start

    def on_train_start(self, trainer, pl_module):
        trainers.append(trainer)
        start(self, trainer, pl_module)

    monkeypatch.setattr(Timer, "on_train_start", on_train_start)
    monkeypatch.setattr(Timer, "time_elapsed",
                        lambda self, stage="train": 1e9 if trainers and trainers[0].global_step >= 2 else 0.0)
    cfg = train_config([*SMALL, *SEVEN_STEPS, "trainer.max_epochs=1", "+trainer.max_time=00:01:00:00"],
                       output_dir=tmp_path)
    train(cfg)
    names = [type(c).__name__ for c in trainers[0].callbacks]
    assert names.index("ImagesPerSecond") > names.index("Timer")
    assert sorted(logged_names) == [1, 2] and "train/images_per_sec" in logged_names[2]
    assert f"train/{LOSS}_skhm" in logged_names[2]
