"""Every config composes; the cheap ones instantiate."""

from pathlib import Path

import pytest
from hydra.utils import instantiate
from lightning.pytorch import Trainer
from omegaconf import OmegaConf

from strongpose.codec import StrongPoseCodec
from strongpose.lit_module import StrongPoseModule
from strongpose.train import CONFIG_DIR, instantiate_callbacks, instantiate_loggers

# option groups whose choice is made on the command line as group=option
GROUPS = sorted(str(p.parent.relative_to(CONFIG_DIR)) for p in CONFIG_DIR.rglob("*.yaml") if p.parent != CONFIG_DIR)
OPTIONS = sorted({(group, p.stem) for group in GROUPS for p in (CONFIG_DIR / group).glob("*.yaml")})
# groups of the evaluate / predict entry points, not of train (tests/test_inference composes them)
NOT_TRAIN = {"test"}
TRAIN_OPTIONS = [(g, o) for g, o in OPTIONS if g not in NOT_TRAIN]
# these build large networks or need a GPU or the COCO_ROOT environment variable: compose only
COMPOSE_ONLY = {("backbone", "resnet101"), ("backbone", "resnet152"), ("backbone", "resnext101_64x4d"),
                ("backbone", "wide_resnet50_2"), ("trainer", "gpu"), ("trainer", "ddp"),
                ("trainer", "ddp_multinode"),
                ("experiment", "coco_resnet50"), ("experiment", "crowdpose_resnet50")}


def test_every_yaml_file_is_an_option_or_an_entry_points_primary_config():
    files = {p for p in CONFIG_DIR.rglob("*.yaml")}
    primary = {p for p in CONFIG_DIR.glob("*.yaml")}
    assert files == primary | {CONFIG_DIR / g / f"{o}.yaml" for g, o in OPTIONS}
    # each top-level config belongs to a `python -m strongpose.<name>` entry point
    package = CONFIG_DIR.parent
    assert "train.yaml" in {p.name for p in primary}
    assert all((package / f"{p.stem}.py").is_file() for p in primary), sorted(p.name for p in primary)
    assert {"backbone", "model", "model/optimizer", "model/scheduler", "codec", "data", "trainer", "logger",
            "callbacks", "experiment", "hparams_search", "debug"} <= set(GROUPS)
    assert {o for g, o in OPTIONS if g == "backbone"} == {*(f"resnet{d}" for d in (18, 34, 50, 101, 152)),
                                                          "resnext50_32x4d", "resnext101_64x4d", "wide_resnet50_2"}


@pytest.mark.parametrize(("group", "option"), TRAIN_OPTIONS, ids=[f"{g}={o}" for g, o in TRAIN_OPTIONS])
def test_option_composes_and_cheap_parts_instantiate(group, option, tmp_path, train_config):
    cfg = train_config([f"{group}={option}"], output_dir=tmp_path, return_hydra_config=group == "hparams_search")
    if group == "hparams_search":
        assert cfg.hydra.mode.name == "MULTIRUN" and cfg.hydra.sweeper.params
        return
    if (group, option) in COMPOSE_ONLY:
        return
    codec = instantiate(cfg.codec)
    assert isinstance(codec, StrongPoseCodec)
    if group in ("backbone", "model", "model/optimizer", "model/scheduler", "experiment"):
        model = instantiate(cfg.model, codec=codec)
        assert isinstance(model, StrongPoseModule)
        assert model.net.backbone.arch == cfg.backbone.arch
    if group in ("data", "experiment"):
        instantiate(cfg.data, codec=codec)
    if group in ("logger", "callbacks", "trainer", "experiment"):
        loggers = instantiate_loggers(cfg.logger)
        callbacks = instantiate_callbacks(cfg.callbacks, has_logger=bool(loggers))
        assert isinstance(instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks), Trainer)


def test_default_config_is_the_sample_cpu_run(train_config):
    cfg = train_config(tiny=False, output_dir="/unused")
    assert cfg.backbone.arch == "resnet18" and not cfg.backbone.pretrained
    assert cfg.data.train_images is None and cfg.data.input_size <= 256
    assert cfg.backbone.output_stride == cfg.codec.stride
    assert cfg.callbacks.model_checkpoint.save_last
    assert cfg.logger.wandb.offline is None  # decided from the presence of a key
    assert OmegaConf.select(cfg, "callbacks.ema._target_") == "strongpose.callbacks.EMA"


def test_top_level_conf_points_to_the_package():
    readme = Path(__file__).parents[2] / "conf" / "README.md"
    assert "src/strongpose/conf" in readme.read_text()


def test_the_trainer_takes_a_profiler_from_the_command_line(train_config, tmp_path):
    from lightning.pytorch.profilers import SimpleProfiler

    cfg = train_config(["trainer.profiler=simple"], output_dir=tmp_path)  # no `+`: the key is there
    assert isinstance(instantiate(cfg.trainer).profiler, SimpleProfiler)


@pytest.mark.parametrize("option", ["default", "fdr", "limit", "overfit", "profiler"])
def test_debug_presets_run_on_one_cpu_process_apart_from_real_runs(train_config, option):
    cfg = train_config([f"debug={option}"], tiny=False, return_hydra_config=True)
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.devices == 1 and cfg.data.num_workers == 0
    assert not cfg.logger and cfg.resume is None
    assert cfg.hydra.run.dir.startswith("outputs/debug/") and cfg.hydra.verbose == "strongpose"
    assert cfg.trainer.detect_anomaly == (option != "profiler")
    assert {"fdr": cfg.trainer.fast_dev_run, "limit": cfg.trainer.limit_train_batches == 4,
            "overfit": cfg.trainer.overfit_batches == 3, "profiler": cfg.trainer.profiler == "simple",
            "default": cfg.trainer.max_epochs == 1}[option]
    # what follows on the command line still wins
    assert train_config([f"debug={option}", "trainer=gpu", "trainer.detect_anomaly=false"],
                        tiny=False).trainer.accelerator == "gpu"


def test_several_loggers_at_once(train_config, tmp_path):
    cfg = train_config(["logger=[csv,tensorboard]"], output_dir=tmp_path)
    loggers = instantiate_loggers(cfg.logger)
    assert [type(logger).__name__ for logger in loggers] == ["CSVLogger", "TensorBoardLogger"]
    assert {Path(logger.log_dir).parent.name for logger in loggers} == {"csv", "tensorboard"}
