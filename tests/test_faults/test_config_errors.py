"""Config mistakes are explained: a wrong type names the key and the type expected, an unknown key lists
the keys that exist, an unknown group option lists the options (Hydra)."""

import os
import subprocess
import sys

import pytest

from strongpose.config_check import (ConfigError, InputErrorExit, report_input_errors, run_with_key_hints, type_errors,
                                     unknown_key_hint)
from strongpose.train import CONFIG_DIR, train


def test_the_shipped_configs_have_no_type_errors(train_config):
    for overrides in ([], ["experiment=coco_resnet50"], ["trainer=ddp"], ["model/optimizer=sgd"]):
        assert type_errors(train_config(overrides, output_dir="/unused", tiny=False)) == []


def test_wrong_types_name_the_key_and_the_expected_type(train_config):
    cfg = train_config(["model.lr=abc", "data.input_size=big", "trainer.max_epochs=1.5", "backbone.pretrained=maybe",
                        "codec.stride=8.5"], output_dir="/unused")
    errors = "\n".join(type_errors(cfg))
    assert "model.lr='abc' (str): expected float (argument 'lr' of strongpose.lit_module.StrongPoseModule)" in errors
    assert "data.input_size='big' (str): expected int" in errors
    assert "trainer.max_epochs=1.5 (float): expected int or null" in errors
    assert "backbone.pretrained='maybe' (str): expected bool" in errors
    # an interpolated value is reported where it lands too, with where it came from
    assert "backbone.output_stride=8.5 (float from ${codec.stride}): expected int" in errors


def test_a_subclass_passing_kwargs_on_keeps_its_base_classes_types(train_config):
    """strongpose.callbacks.ModelCheckpoint adds one argument and hands the rest to Lightning's as **kwargs."""
    cfg = train_config(["callbacks.model_checkpoint.save_top_k=x",
                        "callbacks.model_checkpoint.last_every_n_train_steps=abc"], output_dir="/unused")
    errors = "\n".join(type_errors(cfg))
    assert "callbacks.model_checkpoint.save_top_k='x' (str): expected int (argument 'save_top_k'" in errors
    assert "last_every_n_train_steps='abc' (str): expected int or null" in errors


def test_train_refuses_a_wrong_type_before_building_anything(train_config, tmp_path):
    with pytest.raises(ConfigError, match=r"model\.lr_ref_batch='sixteen' \(str\): expected int"):
        train(train_config(["model.lr_ref_batch=sixteen"], output_dir=tmp_path))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(("overrides", "message"), [
    (["data.input_size=-128"], "data.input_size=-128: must be > 0"),  # was albumentations' min_height error
    (["data.batch_size=0"], "data.batch_size=0: must be > 0"),  # was a torch sampler error
    (["model.lr=-1"], "model.lr=-1: must be > 0"),  # was the scaled LR, a number the user never typed
    (["data.val_batch_size=-2"], "data.val_batch_size=-2: must be > 0"),
    (["model.lr_ref_batch=0"], "model.lr_ref_batch=0: must be > 0"),
    (["data.num_workers=-1"], "data.num_workers=-1: must be >= 0"),  # was a torch DataLoader traceback
    (["model.lr_scaling=Auto"], "model.lr_scaling must be one of ('auto', 'linear', 'sqrt', 'none'), got 'Auto'"),
    # was refused in configure_optimizers, after the data were read
    (["model.scheduler.decay=cosin"], "wrong type in the config:\n  model.scheduler.decay='cosin' (str): expected "
                                      "one of 'cosine', 'step' (argument 'decay' of strongpose.lit_module.warmup_schedule)"),
])
def test_sizes_and_rates_that_cannot_be_right_are_named(train_config, tmp_path, capsys, overrides, message):
    with pytest.raises(InputErrorExit), report_input_errors():  # as the entry points report it: one line
        train(train_config(overrides, output_dir=tmp_path))
    assert capsys.readouterr().err.startswith(f"ConfigError: {message}\n")


def test_the_raised_at_line_is_the_check_s_caller_not_the_helper(train_config, tmp_path, capsys):
    with pytest.raises(InputErrorExit), report_input_errors():
        train(train_config(["data.batch_size=0"], output_dir=tmp_path))
    where = capsys.readouterr().err.splitlines()[1]
    assert "strongpose/data/datamodule.py:" in where and "config_check.py" not in where


def test_only_a_command_line_hydra_refuses_exits_2(monkeypatch, capsys):
    """Hydra reports what it caught and exits 1 from its handler: a composition error (unknown key or option)
    becomes 2, any other failure (a sweep's job that failed, raised in the launcher) stays 1."""
    from hydra.errors import ConfigCompositionException

    def hydra_exit(error):
        def main():
            try:
                raise error
            except Exception:
                sys.exit(1)
        return main

    monkeypatch.setattr(sys, "argv", ["train", "model.lr=3"])
    for error, code in ((ConfigCompositionException("Key 'x' is not in struct"), 2), (RuntimeError("job 3 failed"), 1)):
        with pytest.raises(SystemExit) as stopped:
            run_with_key_hints(hydra_exit(error), "train")
        assert stopped.value.code == code


def test_unknown_keys_get_the_closest_key_and_the_list():
    hint = unknown_key_hint(["backbone=resnet50", "model.lr_typo=1", "modle.lr=3", "data.augment.rotate=5",
                             "+model.new_key=1", "model.lr=3", "hydra.run.dir=x"], CONFIG_DIR)
    lines = hint.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("model has no key 'lr_typo' (did you mean 'lr'?); its keys: backbone, batch_size")
    assert lines[1].startswith("the config has no key 'modle' (did you mean 'model'?)")
    assert lines[2].startswith("data.augment has no key 'rotate' (did you mean 'rotation'?)")
    assert unknown_key_hint(["model.lr=3"], CONFIG_DIR) is None


def _cli(*args: str, cwd) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "strongpose.train", "logger=none", "hydra.run.dir=run", *args],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_the_cli_explains_a_typo_a_wrong_type_and_an_unknown_option(tmp_path):
    # three processes at once: most of their time is importing
    runs = {name: _cli(arg, cwd=tmp_path) for name, arg in
            [("typo", "model.lr_typo=1"), ("type", "data.input_size=big"), ("option", "backbone=resnet51")]}
    out = {name: (proc.communicate(timeout=300)[0], proc.returncode) for name, proc in runs.items()}
    assert all(code == 2 for _, code in out.values())  # input mistakes, whether Hydra or StrongPose refuses them
    typo, wrong_type, option = out["typo"][0], out["type"][0], out["option"][0]
    assert "Key 'lr_typo' is not in struct" in typo  # Hydra's own message, then ours
    assert "model has no key 'lr_typo' (did you mean 'lr'?); its keys: backbone, batch_size, heads" in typo
    assert "ConfigError: wrong type in the config:\n  data.input_size='big' (str): expected int" in wrong_type
    assert "Could not find 'backbone/resnet51'" in option and "Available options in 'backbone'" in option
    assert "resnet50" in option.split("Available options")[-1]


def test_an_input_error_inside_instantiate_is_reported_in_a_line(capsys):
    """Hydra wraps a constructor's ConfigError (a misspelt loss term) in an InstantiationException: reported
    as the ConfigError itself, exit status 2; any other error keeps its traceback."""
    from hydra.utils import instantiate

    with pytest.raises(InputErrorExit) as stopped, report_input_errors():
        instantiate({"_target_": "strongpose.lit_module.check_loss", "loss": {"weights": {"skmh": 8.0}}})
    assert stopped.value.code == 2
    message, where = capsys.readouterr().err.strip().splitlines()
    assert message.startswith("ConfigError: model.loss.weights.skmh: no such loss term")
    assert "strongpose/lit_module.py" in where
    with pytest.raises(Exception, match="Error in call to target"), report_input_errors():
        instantiate({"_target_": "strongpose.lit_module.check_loss", "loss": 3})


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a machine without a GPU")
def test_trainer_gpu_without_a_gpu_is_a_config_error(train_config, tmp_path):
    with pytest.raises(ConfigError, match=r"trainer.accelerator=gpu: No supported gpu backend found! on this machine "
                                          r"\(trainer=cpu runs on the CPU"):
        train(train_config(["trainer=gpu"], output_dir=tmp_path))
