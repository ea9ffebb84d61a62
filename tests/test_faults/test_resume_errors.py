"""Resuming (train with ckpt_path=...) reads with weights_only=True and explains a checkpoint that does not
fit: another backbone, skeleton or stride, or a truncated file."""

import shutil

import pytest
import torch

from strongpose.checkpoint import CheckpointError
from strongpose.config_check import ConfigError
from strongpose.train import train

# one step per epoch, no validation, no COCO evaluation: the cheapest run that writes last.ckpt
QUICK = ["trainer.limit_val_batches=0", "callbacks.coco_eval=null", "callbacks.model_checkpoint.monitor=null",
         "+callbacks.model_checkpoint.save_on_train_epoch_end=true"]


_FIRST_RUN: dict = {}  # one training run for the whole module (train_config is function-scoped)


@pytest.fixture
def last_ckpt(train_config, tmp_path_factory):
    if "last" not in _FIRST_RUN:
        folder = tmp_path_factory.mktemp("first")
        train(train_config([*QUICK, "trainer.max_epochs=1"], output_dir=folder))
        _FIRST_RUN["last"] = folder / "checkpoints" / "last.ckpt"
    return _FIRST_RUN["last"]


@pytest.mark.parametrize(("override", "expected"), [
    ("backbone=resnet34", "backbone arch: checkpoint 'resnet18', model 'resnet34'"),
    ("codec.stride=16", "codec stride: checkpoint 8, model 16"),
    ("model.heads.width=32", "model.heads width: checkpoint 64, model 32"),
    ("model.heads.num_convs=2", "model.heads num_convs: checkpoint 1, model 2"),
])
def test_resuming_into_another_model_names_the_differences(train_config, tmp_path, last_ckpt, override, expected):
    cfg = train_config([*QUICK, override, "trainer.max_epochs=2", f"ckpt_path={last_ckpt}"], output_dir=tmp_path)
    with pytest.raises(CheckpointError, match="does not fit this model") as error:
        train(cfg)
    assert expected in str(error.value) and "Missing key" not in str(error.value)


def test_resuming_from_a_truncated_file_says_so(train_config, tmp_path, last_ckpt):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(last_ckpt.read_bytes()[:100_000])
    cfg = train_config([*QUICK, "trainer.max_epochs=2", f"ckpt_path={broken}"], output_dir=tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"broken\.ckpt \(100000 bytes\) cannot be read: truncated"):
        train(cfg)


def test_resuming_loads_with_weights_only(train_config, tmp_path, last_ckpt, monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    copy = shutil.copy(last_ckpt, tmp_path / "last.ckpt")
    cfg = train_config([*QUICK, "trainer.max_epochs=2", f"ckpt_path={copy}"], output_dir=tmp_path / "run")
    _, objects = train(cfg)
    assert objects["trainer"].global_step == 2
    assert calls and all(value is True for value in calls)


def test_resuming_with_another_global_batch_is_refused(train_config, tmp_path, last_ckpt):
    """The learning rate (scaled to the global batch), the schedule's steps and the epoch's position would all
    be the checkpoint's: Lightning restores them over the new run's. The same product at an epoch's end goes on."""
    cfg = train_config([*QUICK, "trainer.max_epochs=2", "data.batch_size=1", f"ckpt_path={last_ckpt}"],
                       output_dir=tmp_path / "other")
    with pytest.raises(ConfigError, match=r"global batch of 2 \(2 per device x 1 devices x 1 accumulated\), this "
                                          r"run's is 1 \(1 per device x 1 devices x 1 accumulated\)"):
        train(cfg)
    same = train_config([*QUICK, "trainer.max_epochs=2", "data.batch_size=1", "trainer.accumulate_grad_batches=2",
                         f"ckpt_path={last_ckpt}"], output_dir=tmp_path / "same")
    _, objects = train(same)
    assert objects["trainer"].global_step == 2


def test_head_specs_compare_what_shapes_the_heads_tensors():
    from strongpose.checkpoint import spec_mismatch
    from strongpose.lit_module import heads_spec

    assert heads_spec(None) == heads_spec({}) == heads_spec({"num_convs": 1, "width": 64, "heatmap_prior": 0.1})
    assert spec_mismatch(heads_spec({"width": 64}), heads_spec({"width": 32}), "model.heads") == [
        "model.heads width: checkpoint 64, model 32"]
    # without hidden layers the width and kernel size shape nothing
    assert heads_spec({"num_convs": 0, "width": 64}) == heads_spec({"num_convs": 0, "width": 32, "kernel_size": 1})
