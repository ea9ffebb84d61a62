"""Training entry point: ``python -m strongpose.train [group=option ...] [key=value ...]`` (Hydra).

Configs ship inside the package (``strongpose/conf``) so that this works from any folder and from an
installed wheel; the top-level ``conf/`` only points there (a symlink would not survive a wheel, two
copies would drift apart).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import traceback
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from lightning.fabric.plugins.io import CheckpointIO
from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher  # exported; how Lightning re-runs argv
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException
from omegaconf import DictConfig, OmegaConf

from strongpose.callbacks import Compile
from strongpose.checkpoint import init_from_checkpoint
from strongpose.checkpoint_io import AtomicCheckpointIO
from strongpose.config_check import (CONFIG_DIR, ConfigError, check_types, in_multirun, report_input_errors,
                                     run_with_key_hints)
from strongpose.data.sample import sample_paths
from strongpose.final_test import check_test_options, final_test_metrics, monitor_validation_twin, run_final_test
from strongpose.monitored import check_monitored_metric, warn_if_no_validation
from strongpose.resume_check import check_job_resumes_itself
from strongpose.slurm import check_world_size, with_slurm_environment
from strongpose.sweep_direction import check_sweep_direction, optimising_sweeper
from strongpose.tracking import RecordWandbRun, finish_wandb, recorded_wandb_run, say, wandb_logger

log = logging.getLogger(__name__)


class _NoAdverts(logging.Filter):
    """Lightning's "💡 Tip: ... try installing litlogger / litmodels" lines at every start: adverts for a hosted
    service, not news about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdverts())
# Lightning 2.6's own use of a torch API that newer torch deprecates, once per process and rank: nothing to act on
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def instantiate_loggers(cfg: DictConfig | None, resumed_checkpoint: str | None = None) -> list[Logger]:
    """The configured loggers; :func:`~strongpose.tracking.wandb_logger` gets the W&B run recorded in
    ``resumed_checkpoint``, the checkpoint the run resumes in its own folder (read only then); a TensorBoard logger
    goes on writing into that run's latest ``version_N`` (:func:`tensorboard_resume`)."""
    loggers = []
    for c in (cfg or {}).values():
        if c is None:
            continue
        if _makes(c, wandb_logger):
            loggers.append(instantiate(c, resumed_run=recorded_wandb_run(resumed_checkpoint)))
        elif _makes(c, TensorBoardLogger):
            loggers.append(instantiate(c, **tensorboard_resume(c, resumed_checkpoint)))
        else:
            loggers.append(instantiate(c))
    return loggers


def tensorboard_resume(cfg: DictConfig, resumed_checkpoint: str | None) -> dict[str, Any]:
    """A resumed run's TensorBoard events go on in its latest ``version_N`` (one run in TensorBoard however often
    it was requeued), from the checkpoint's step: ``purge_step`` hides what the interrupted attempt logged after
    it (trained again now). Nothing for a new run, or with ``version`` set. (CSVLogger is left to number its
    versions: it deletes the ``metrics.csv`` of a version it reuses.)"""
    if not resumed_checkpoint or cfg.get("version") is not None:
        return {}
    name = cfg.get("name", "lightning_logs")  # Lightning's default; null or "": the versions are in save_dir itself
    folder = Path(str(cfg.get("save_dir", "."))) / (str(name) if name else "")
    versions = [int(p.name[len("version_"):]) for p in folder.glob("version_*") if p.name[8:].isdigit()]
    if not versions:
        return {}
    try:
        step = int(torch.load(resumed_checkpoint, map_location="cpu", weights_only=True, mmap=True)["global_step"])
    except Exception:  # noqa: BLE001 - an unreadable checkpoint: fit names it with the reason
        return {}
    return {"version": max(versions), "purge_step": step}


def _makes(cfg: DictConfig, factory: Any) -> bool:
    """Whether ``cfg``'s ``_target_`` names ``factory`` (under any of its import paths)."""
    try:
        return get_object(cfg.get("_target_")) is factory
    except Exception:  # noqa: BLE001 - not importable: instantiate says why
        return False


def instantiate_callbacks(cfg: DictConfig | None, has_logger: bool) -> list[Callback]:
    callbacks = [instantiate(c) for c in (cfg or {}).values() if c is not None]
    # Lightning refuses a LearningRateMonitor without a logger (logger=none); the LR has nowhere to go then
    return [c for c in callbacks if has_logger or not isinstance(c, LearningRateMonitor)]


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """``cfg`` as plain containers with interpolations resolved (``${hydra:...}`` ones only inside a
    Hydra app: a config composed by hand, as in tests or notebooks, keeps those unresolved)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - OmegaConf raises various errors for the missing hydra resolver
        plain = OmegaConf.to_container(cfg, resolve=False)
        paths = plain.get("paths") or {}
        if isinstance(paths.get("output_dir"), str) and "${hydra:" in paths["output_dir"]:
            paths["output_dir"] = None
        return OmegaConf.to_container(OmegaConf.create(plain), resolve=True)


def start_from_weights(model: L.LightningModule, path: str) -> None:
    """``init_from``: the weights of another run's checkpoint, then a new run (optimiser, schedule, steps)."""
    loaded, kept, why = init_from_checkpoint(model, path)
    total = len(loaded) + len(kept)
    more = f"; {len(kept)} keep their initial values ({why}): " if kept else ""
    say(f"init_from={path}: {len(loaded)} of {total} tensors loaded{more}{', '.join(kept[:6])}"
        f"{', ...' if len(kept) > 6 else ''}")


def checkpoint_to_resume(ckpt_path: str | None, resume: str | None, root_dir: str | Path,
                         checkpoint_dir: str | Path | None = None) -> str | None:
    """What ``trainer.fit`` resumes from: ``ckpt_path`` when given; else, with ``resume="auto"``, the newest
    checkpoint already in this run's folder (``checkpoints/*.ckpt``: ``interrupted.ckpt`` of a requeued SLURM
    job among them; or an ``hpc_ckpt_N.ckpt`` of Lightning's own requeue, when turned on), so that a job
    requeued into the same folder continues rather than starting over; None (start afresh) when there is
    none or ``resume`` is null. Every DDP rank decides alike: nothing is written before they all start.
    ``root_dir``: the trainer's ``default_root_dir``; ``checkpoint_dir``: the checkpoint callback's folder
    (default ``<root_dir>/checkpoints``)."""
    if ckpt_path is not None:
        return str(ckpt_path)
    if resume is None or resume is False:  # YAML null or false
        return None
    if resume != "auto":
        raise ConfigError(f"resume must be 'auto' or null, got {resume!r}")
    newest = newest_checkpoint(root_dir, checkpoint_dir)
    if newest is not None:
        say(f"Resuming from {newest} (resume=auto: the newest checkpoint in the run folder; resume=null starts afresh)")
    return newest


def newest_checkpoint(root_dir: str | Path, checkpoint_dir: str | Path | None = None) -> str | None:
    """The newest ``*.ckpt`` in ``root_dir`` or ``checkpoint_dir`` (default ``<root_dir>/checkpoints``), ``last.ckpt``
    first among equals; None when there is none."""
    root = Path(root_dir)
    folders = {root, Path(checkpoint_dir or root / "checkpoints")}
    found = [path for folder in folders for path in folder.glob("*.ckpt") if path.is_file()]
    return str(max(found, key=lambda path: (path.stat().st_mtime, path.name == "last.ckpt"))) if found else None


def with_atomic_checkpoints(plugins: Any) -> list:
    """``trainer.plugins`` plus :class:`AtomicCheckpointIO`, unless they bring their own checkpoint I/O."""
    plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
        plugins.append(AtomicCheckpointIO())
    return plugins


def check_no_relaunch_in_a_local_multirun(trainer: L.Trainer) -> None:
    """Lightning starts a DDP run's other processes by running the command line again (plus
    ``hydra.run.dir``): inside a local multirun (``-m``) each of them would run the whole sweep again. Refused
    before anything starts; under SLURM (or torchrun) the ranks are started from outside and nothing re-runs."""
    if not in_multirun():
        return
    launcher = getattr(trainer.strategy, "launcher", None)
    if (isinstance(launcher, _SubprocessScriptLauncher) and launcher.num_processes > 1
            and not launcher.cluster_environment.creates_processes_externally):
        raise ConfigError(
            f"a local multirun (-m, or hydra.mode=MULTIRUN as in hparams_search) cannot start a "
            f"{launcher.num_processes}-process DDP run: Lightning starts the other processes by running the command "
            f"line again, and each would run the whole sweep. Run each configuration on its own (without -m), "
            f"submit the sweep with hydra/launcher=slurm (SLURM starts every rank), or use one device per run "
            f"(trainer.devices=1)")


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Train (or resume, with ``ckpt_path``) as ``cfg`` says; returns the final metrics and the objects."""
    check_types(cfg)  # a wrong type fails here, naming the key, not deep in the run
    if cfg.get("init_from") and cfg.get("ckpt_path") is not None:
        raise ConfigError("init_from and ckpt_path both set: ckpt_path resumes a run (weights, optimiser, step), "
                          "init_from starts a new one from a checkpoint's weights; give one")
    if HydraConfig.initialized():  # an optimising sweeper (Optuna) told to go against optimized_metric
        check_sweep_direction(cfg.get("optimized_metric"), HydraConfig.get().get("sweeper"))
    backbone = cfg.get("backbone") or {}
    if backbone.get("norm") == "frozen" and not backbone.get("pretrained"):
        log.warning("backbone.norm=frozen without backbone.pretrained=true: the frozen statistics are the "
                    "identity, so the backbone trains without normalisation (norm=batch trains them)")
    if (in_multirun() and cfg.get("ckpt_path") is None and cfg.get("resume") == "auto"
            and (folder := run_folder(cfg)) is not None):
        # a sweep's job refuses another configuration's checkpoint before its folder's files are touched
        found = newest_checkpoint(folder, OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath", default=None))
        if found is not None:
            try:
                check_job_resumes_itself(resolved_config(cfg), found)
            except ConfigError:  # the folder's metrics.json is the other job's: kept aside, the folder reads failed
                with contextlib.suppress(OSError):
                    (folder / METRICS_FILE).replace(folder / f"earlier_{METRICS_FILE}")
                raise
    previous = clear_run_files(cfg)  # a requeued or repeated run in the same folder: the last attempt's say nothing now
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    # the codec first: the data encode targets with it, the model sizes its heads and decodes with it
    codec = instantiate(cfg.codec)
    # (a missing data file is named first); not recursive: data.augment.pixel's _target_ nodes are built (and
    # refused by name) by the transform, not by Hydra
    datamodule = instantiate(cfg.data, codec=codec, _recursive_=False)
    check_validation_data(cfg, datamodule)
    check_test_options(cfg, getattr(datamodule, "val_paths", None))  # final_test's options, before training
    model = instantiate(cfg.model, codec=codec)
    monitor_validation_twin(cfg)  # optimized_metric=test/AP: the checkpoints are chosen by val/AP
    model.run_config = resolved_config(cfg)  # saved in every checkpoint
    logging_to = [c for c in (cfg.get("logger") or {}).values() if c is not None]
    callbacks = instantiate_callbacks(cfg.get("callbacks"), has_logger=bool(logging_to))
    example_for_the_summary(cfg, model, datamodule, callbacks)
    for stopper in (c for c in callbacks if isinstance(c, EarlyStopping)):
        if stopper.monitor in ("step", "epoch"):  # they only grow: Lightning fails after the first epoch
            raise ConfigError(f"early stopping watches {stopper.monitor}, which only grows; watch a metric "
                              f"(callbacks.early_stopping.monitor, or optimized_metric)")
    for monitored in dict.fromkeys([cfg.get("optimized_metric"),
                                    *(c.monitor for c in callbacks if isinstance(c, (ModelCheckpoint, EarlyStopping)))]):
        if monitored == cfg.get("optimized_metric") and monitored in final_test_metrics(cfg):
            continue  # final_test's, after training (a checkpoint cannot monitor it: refused below)
        check_monitored_metric(monitored, model, callbacks,  # not after the first validation
                               (getattr(datamodule, "val_paths", None) or (None, None))[1])
    # before the loggers: a run resumed in its own folder goes on logging to its W&B run (its id is in the
    # checkpoint); one started from another run's checkpoint (a sweep's jobs from one ckpt_path) is a run of its own
    checkpointing = next((c for c in callbacks if isinstance(c, ModelCheckpoint)), None)
    folders = (cfg.trainer.get("default_root_dir") or os.getcwd(),  # (Lightning's default)
               getattr(checkpointing, "dirpath", None))
    ckpt_path = checkpoint_to_resume(cfg.get("ckpt_path"), cfg.get("resume"), *folders)
    own = ckpt_path is not None and any(folder and Path(folder).resolve() in Path(ckpt_path).resolve().parents
                                        for folder in folders)
    loggers = instantiate_loggers(cfg.get("logger"), resumed_checkpoint=ckpt_path if own else None)
    try:
        return _fit(cfg, codec, datamodule, model, loggers, callbacks, ckpt_path, previous)
    except BaseException:
        finish_wandb(loggers, exit_code=1)
        raise


def example_for_the_summary(cfg: DictConfig, model: L.LightningModule, datamodule: Any,
                            callbacks: list[Callback]) -> None:
    """Lightning's model summary counts FLOPs only with an example input (else "Total FLOPs: 0"): one blank image
    at the training size, run once without gradients (~0.1 s for ResNet-18 at 256 px on the CPU). Not when the
    network is compiled (callbacks.compile): that forward of one image would compile it for batch 1 first."""
    size = getattr(datamodule, "input_size", None)
    compiled = any(isinstance(c, Compile) and c.enabled for c in callbacks)
    if cfg.trainer.get("enable_model_summary", True) and isinstance(size, int) and not compiled:
        model.example_input_array = torch.zeros(1, 3, size, size, dtype=torch.uint8)


def check_validation_data(cfg: DictConfig, datamodule: Any) -> None:
    """Refuse training data of one's own validated on the embedded sample (data.val_* left null): validation, the
    best checkpoint and a sweep's metric would be the sample's, unsaid. A run that does not validate may, and so
    may a data module that validates on something else (judged by its ``train_paths`` / ``val_paths``)."""
    trainer = cfg.get("trainer") or {}
    sample = tuple(p.resolve() for p in sample_paths())
    paths = [getattr(datamodule, name, None) for name in ("train_paths", "val_paths")]
    if trainer.get("limit_val_batches") == 0 or any(p is None for p in paths):
        return
    train_paths, val_paths = (tuple(Path(x).resolve() for x in p) for p in paths)
    if train_paths == sample or val_paths != sample:
        return
    raise ConfigError("data.train_images / data.train_annotations are given but data.val_images / "
                      "data.val_annotations are not: validation would run on the embedded 13-image COCO sample. Give "
                      "both splits (the same paths again to validate on the training images), or neither "
                      "(trainer.limit_val_batches=0 trains without validating)")


def _fit(cfg: DictConfig, codec: Any, datamodule: L.LightningDataModule, model: L.LightningModule,
         loggers: list[Logger], callbacks: list[Callback], ckpt_path: str | None,
         previous: dict[str, float | None] | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    """:func:`train` from its loggers on (a W&B run may have started: whatever fails here, it is finished).
    ``previous``: the metrics of the folder's ``metrics.json`` before this start, kept when a resume finds the
    run at its end and nothing is trained or validated."""
    if any(isinstance(logger, WandbLogger) for logger in loggers):
        callbacks = [*callbacks, RecordWandbRun()]
    plugins = with_slurm_environment(with_atomic_checkpoints(instantiate(cfg.trainer.get("plugins"))))
    try:
        trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks, plugins=plugins)
    except InstantiationException as err:  # trainer=gpu on a machine without one: Lightning's message, one line
        if isinstance(err.__cause__, MisconfigurationException) and "accelerator" in str(cfg.trainer) \
                and "backend" in str(err.__cause__):
            raise ConfigError(f"trainer.accelerator={cfg.trainer.get('accelerator')}: {err.__cause__} on this machine "
                              f"(trainer=cpu runs on the CPU; trainer.accelerator=auto takes what there is)") from None
        raise
    if trainer.fast_dev_run:  # Lightning says checkpointing is suppressed, but its on_train_end still writes
        for callback in trainer.checkpoint_callbacks:  # last.ckpt (2.6): every job of a dev sweep left one
            callback.save_last = False
    check_world_size(trainer)  # before anything is written: SLURM's tasks must be the trainer's ranks
    warn_if_no_validation(trainer, cfg.get("optimized_metric"), needed=optimising_sweeper() is not None)
    check_no_relaunch_in_a_local_multirun(trainer)
    for logger in loggers:
        logger.log_hyperparams(model.run_config)
    if cfg.get("init_from") and ckpt_path is not None:  # resume=auto found this run's own (a requeued job)
        say(f"init_from={cfg.init_from} not loaded: this run resumes its own checkpoint {ckpt_path} (resume=auto; "
            f"a new run from init_from needs a new run folder or resume=null)")
    elif cfg.get("init_from"):
        start_from_weights(model, cfg.init_from)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException as stopped:
        # Lightning's stop on SIGTERM is a SystemExit without a code, i.e. exit status 0, which a job script or a
        # scheduler takes for a finished training; 143 (128 + 15) is what a process ended by SIGTERM reports
        raise SystemExit(128 + signal.SIGTERM) from stopped

    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    if not metrics and previous and ckpt_path is not None:
        metrics = {name: math.nan if value is None else float(value) for name, value in previous.items()}
        say(f"Nothing to train: {ckpt_path} is at the run's end (step {trainer.global_step}); the metrics are those "
            f"it finished with")
    checkpoint = trainer.checkpoint_callback
    where = (checkpoint.last_model_path or checkpoint.best_model_path) if checkpoint is not None else ""
    best = best_checkpoint(checkpoint)
    # final_test=true: the best checkpoint with the test-time options, as strongpose.evaluate; test/* beside val/*
    if cfg.get("final_test"):
        write_run_summary(cfg, metrics, where, best, trainer)  # the training's, should the test fail
    tested = run_final_test(cfg, trainer, getattr(datamodule, "val_paths", None), best, where)
    if tested:
        metrics.update(tested)
        for logger in loggers:
            logger.log_metrics(tested, step=trainer.global_step)
            logger.save()  # Lightning finalised the loggers when fit ended: written out again (CSV)
    finish_wandb(loggers, exit_code=0)
    # a folder that exists (fast_dev_run swaps in a dummy logger: its version folder is never written)
    logs = next((folder for lg in loggers for folder in (lg.log_dir, lg.save_dir) if folder and Path(folder).is_dir()),
                cfg.paths.output_dir)
    summary = write_run_summary(cfg, metrics, where, best, trainer)
    say(f"Done: checkpoint {where if where and Path(where).is_file() else 'none written'}"
        + (f"; best {best['monitor']}={best['score']:.4f}: {best['path']}" if best else "")
        + f"; logs in {logs}" + (f"; final metrics in {summary}" if summary else ""))
    objects = {"cfg": cfg, "codec": codec, "datamodule": datamodule, "model": model, "trainer": trainer,
               "loggers": loggers, "callbacks": callbacks, "best_checkpoint": best}
    return metrics, objects


def best_checkpoint(callback: Any) -> dict[str, Any] | None:
    """The best checkpoint of a ``ModelCheckpoint`` that monitors a metric: path, monitor and score."""
    score = getattr(callback, "best_model_score", None)
    if callback is None or not callback.monitor or score is None or not callback.best_model_path:
        return None
    return {"path": callback.best_model_path, "monitor": callback.monitor, "score": float(score)}


@rank_zero_only
def record_failure(cfg: DictConfig, err: BaseException) -> None:
    """``<output_dir>/failed.txt``: the error and its traceback, in the run's own folder (its train.log has
    none: Hydra prints the error on the console, a sweep only its first failing job's, at the end); in a
    multirun one line says which job failed, when it does."""
    path = run_file(cfg, FAILED_FILE, "".join(traceback.format_exception(err)))
    if path is None:
        return
    if in_multirun():
        job = HydraConfig.get().job
        cause = err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ is not None else err
        log.error("job %s (%s) failed: %s: %s (traceback in %s)", job.num, job.override_dirname,
                  type(cause).__name__, cause, path)


@rank_zero_only
def write_run_summary(cfg: DictConfig, metrics: dict[str, float], last: str, best: dict | None,
                      trainer: L.Trainer) -> Path | None:
    """``<output_dir>/metrics.json``: the final metrics, the best and last checkpoints, the step reached: what
    a run leaves for a researcher (and a sweep's comparison) beside the logger's files."""
    finite = {name: value if math.isfinite(value) else None for name, value in metrics.items()}  # JSON: no NaN
    if best is not None and not math.isfinite(best["score"]):
        best = {**best, "score": None}
    return run_file(cfg, METRICS_FILE, json.dumps({
        "metrics": finite, "best_checkpoint": best, "last_checkpoint": last or None,
        "global_step": int(trainer.global_step), "epoch": int(trainer.current_epoch),
        "optimized_metric": cfg.get("optimized_metric")}, indent=1, allow_nan=False))


# what train() leaves in its folder besides checkpoints and logs
METRICS_FILE, FAILED_FILE = "metrics.json", "failed.txt"


def run_folder(cfg: DictConfig) -> Path | None:
    """``paths.output_dir``, or None when the run has none (a config composed by hand)."""
    folder = cfg.get("paths", {}).get("output_dir")
    return Path(folder) if folder else None


@rank_zero_only
def clear_run_files(cfg: DictConfig) -> dict[str, float | None] | None:
    """Remove the folder's ``metrics.json`` and ``failed.txt``; returns the metrics the first held (None: none)."""
    if (folder := run_folder(cfg)) is None:
        return None
    previous = None
    with contextlib.suppress(OSError, ValueError, AttributeError):
        found = json.loads((folder / METRICS_FILE).read_text()).get("metrics")
        previous = {str(k): v for k, v in found.items() if v is None or isinstance(v, (int, float))}
    for name in (METRICS_FILE, FAILED_FILE):
        (folder / name).unlink(missing_ok=True)
    return previous


def run_file(cfg: DictConfig, name: str, text: str) -> Path | None:
    """Write ``text`` to ``<paths.output_dir>/<name>``; None (nothing written) without an output folder."""
    if (folder := run_folder(cfg)) is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Returns ``optimized_metric`` so that Hydra sweepers can minimise it: its best value when the checkpoint
    callback monitors it (the epoch a sweep would pick), else its last; None when the run logged none (a ``val/*``
    metric with ``trainer.limit_val_batches=0``, of which the run warns at its start)."""
    try:
        with report_input_errors():
            metrics, objects = train(cfg)
    except Exception as err:  # (an input error of a single run has exited with 2 and its one line already)
        record_failure(cfg, err)
        raise
    name, best = cfg.get("optimized_metric"), objects["best_checkpoint"]
    return best["score"] if best and best["monitor"] == name else metrics.get(name)


def cli() -> None:
    """``python -m strongpose.train``: Hydra's ``main``, with the valid keys listed for an unknown one."""
    run_with_key_hints(main, "train")


if __name__ == "__main__":
    cli()
