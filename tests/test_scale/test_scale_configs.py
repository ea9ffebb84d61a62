"""Trainer presets, the SLURM launcher config (down to the sbatch script it writes) and the meaning of
batch size and learning rate across devices, nodes and gradient accumulation."""

from __future__ import annotations

import functools
import os
import pickle
import signal
import time
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import submitit
import torch
from hydra import compose, initialize_config_dir
from hydra._internal.callbacks import Callbacks
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext, RunMode
from hydra.utils import instantiate
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from lightning.pytorch import Trainer
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import OmegaConf

from strongpose.codec import StrongPoseCodec
from strongpose.lit_module import StrongPoseModule, global_batch_size, lr_scaling_rule, scaled_lr
from strongpose.models.backbone import ResNetBackbone
from strongpose.slurm import check_world_size, with_slurm_environment
from strongpose.train import CONFIG_DIR, check_no_relaunch_in_a_local_multirun


def test_ddp_preset_builds_a_cpu_ddp_trainer_when_told_to(train_config, tmp_path):
    cfg = train_config(["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"], output_dir=tmp_path)
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.sync_batchnorm is False  # SyncBatchNorm is CUDA-only
    trainer = instantiate(cfg.trainer, logger=False)  # nothing is launched before fit
    assert isinstance(trainer.strategy, DDPStrategy) and trainer.world_size == 2


def test_gpu_presets_use_bf16_and_ddp_multinode_lets_slurm_start_and_requeue(train_config, tmp_path):
    gpu = train_config(["trainer=gpu"], output_dir=tmp_path).trainer
    assert gpu.accelerator == "gpu" and gpu.precision == "bf16-mixed"
    multi = train_config(["trainer=ddp_multinode", "trainer.num_nodes=4"], output_dir=tmp_path).trainer
    assert multi.num_nodes == 4 and multi.strategy == "ddp" and multi.precision == "bf16-mixed"
    (environment,) = [instantiate(plugin) for plugin in multi.plugins]
    # one requeue mechanism: callbacks.interrupt's, on SIGUSR1 (Lightning's saves inside the signal handler)
    assert isinstance(environment, SLURMEnvironment) and not environment.auto_requeue
    interrupt = instantiate(train_config(["trainer=ddp_multinode"], output_dir=tmp_path).callbacks.interrupt)
    assert interrupt.requeue_signal == signal.SIGUSR1


@dataclass
class DrySubmission:
    script: str  # the sbatch script submitit would submit
    jobs: list[int]  # the sweep's job numbers in the array
    pickled: bytes  # the launcher as submitit stores it for the jobs and their requeues


@pytest.fixture
def dry_run_sbatch(tmp_path, monkeypatch) -> SimpleNamespace:
    """The SLURM launcher's real launch(), stopped where submitit would call sbatch: ``submitted`` lists the
    job arrays (:class:`DrySubmission`), ``events`` the order of submissions and waits for a job's result
    (each job returns its number)."""
    bin_dir = tmp_path / "bin"  # an srun on PATH: submitit's SLURM executor refuses to start without one
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    record = SimpleNamespace(submitted=[], events=[])

    def result(num):
        record.events.append("wait")
        return [JobReturn(status=JobStatus.COMPLETED, _return_value=num)]

    class DryRunExecutor(submitit.AutoExecutor):
        def map_array(self, fn, *iterables):
            script = self._executor._make_submission_file_text("COMMAND", "uid")
            record.submitted.append(DrySubmission(script, list(iterables[2]), pickle.dumps(fn)))
            record.events.append("submit")
            return [SimpleNamespace(results=functools.partial(result, num)) for num in iterables[2]]

    monkeypatch.setattr(submitit, "AutoExecutor", DryRunExecutor)
    return record


def _slurm_launcher(overrides: list[str], tmp_path=None) -> submitit_launcher.SlurmLauncher:
    """``hydra/launcher=slurm`` as ``python -m strongpose.train -m hydra/launcher=slurm <overrides>`` sets it up
    (sweep folder: ``tmp_path/sweep``, or Hydra's default without ``tmp_path``)."""
    sweep = [f"hydra.sweep.dir={tmp_path / 'sweep'}"] if tmp_path is not None else []
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        master = compose("train", overrides=["hydra/launcher=slurm", *sweep, *overrides], return_hydra_config=True)
        context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=Callbacks())
        # Hydra's own path: a launcher must be a plugin it found in the hydra_plugins namespace
        return Plugins.instance().instantiate_launcher(hydra_context=context, task_function=None, config=master)


def test_slurm_launcher_asks_for_one_task_per_gpu_and_the_requeue_signal(tmp_path, dry_run_sbatch):
    task = ["trainer=ddp_multinode", "trainer.num_nodes=3"]  # a sweep gives each run all task overrides
    slurm = _slurm_launcher([*task, "hydra.launcher.gpus_per_node=4", "hydra.launcher.partition=gpu"], tmp_path)
    # StrongPose's (hydra-submitit's, shaped per run); by name: Hydra's plugin scan re-executes plugin modules
    assert f"{type(slurm).__module__}.{type(slurm).__name__}" == "hydra_plugins.strongpose_launcher.slurm.SlurmLauncher"
    launcher = slurm.params  # hydra.launcher, resolved
    assert launcher["nodes"] == 3 and launcher["tasks_per_node"] == launcher["gpus_per_node"] == 4
    assert launcher["max_num_timeout"] == 0  # submitit's own requeue off: callbacks.interrupt's only

    slurm.launch([[*task, "backbone=resnet101"], [*task, "backbone=resnet152"]], initial_job_idx=0)
    (script,) = [array.script for array in dry_run_sbatch.submitted]
    lines = set(script.splitlines())
    assert {"#SBATCH --nodes=3", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4", "#SBATCH --partition=gpu",
            "#SBATCH --signal=USR1@90", "#SBATCH --requeue"} <= lines, script
    assert [len(array.jobs) for array in dry_run_sbatch.submitted] == [2]  # one SLURM (array) job per run
    assert "USR2" not in script  # submitit's signal replaced, not added: SLURM keeps one --signal
    assert any(line.startswith("srun ") and "COMMAND" in line for line in lines)  # srun starts the tasks


def test_a_sweep_over_devices_and_nodes_submits_one_job_array_per_shape(tmp_path, dry_run_sbatch):
    """hydra-submitit resolves hydra.launcher once, before the sweep's values: every run would get the first
    shape. StrongPose's launcher resolves it per run and keeps the sweep's job numbers (the run folders)."""
    launcher = _slurm_launcher(["trainer=ddp"], tmp_path)
    sweep = [["trainer=ddp", f"trainer.devices={devices}", f"trainer.num_nodes={nodes}", f"backbone={backbone}"]
             for devices, nodes in ((1, 1), (4, 1), (4, 2)) for backbone in ("resnet18", "resnet34")]
    returns = launcher.launch(sweep, initial_job_idx=10)
    assert [r.return_value for r in returns] == list(range(10, 16))  # in the sweep's order
    assert dry_run_sbatch.events == ["submit"] * 3 + ["wait"] * 6  # every array queued before waiting for any job
    arrays = []
    for array in dry_run_sbatch.submitted:
        shape = sorted(line for line in array.script.splitlines() if line.startswith(("#SBATCH --nodes",
                                                                                      "#SBATCH --gpus-per-node")))
        assert pickle.loads(array.pickled).params["gpus_per_node"] == int(shape[0].split("=")[1])
        arrays.append((shape, array.jobs))
    assert sorted(arrays) == [
        (["#SBATCH --gpus-per-node=1", "#SBATCH --nodes=1"], [10, 11]),
        (["#SBATCH --gpus-per-node=4", "#SBATCH --nodes=1"], [12, 13]),
        (["#SBATCH --gpus-per-node=4", "#SBATCH --nodes=2"], [14, 15]),
    ]


def test_global_batch_and_lr_scale_with_devices_nodes_and_accumulation():
    assert global_batch_size(8) == 8
    assert global_batch_size(8, world_size=2, accumulate_grad_batches=2) == 32
    assert global_batch_size(16, world_size=2 * 8, accumulate_grad_batches=1) == 256  # 2 nodes x 8 GPUs
    assert scaled_lr(1e-3, 32, ref_batch=16) == pytest.approx(2e-3)
    assert scaled_lr(1e-3, 16, ref_batch=16) == pytest.approx(1e-3)
    assert scaled_lr(1e-3, 64, ref_batch=16, rule="sqrt") == pytest.approx(2e-3)
    assert scaled_lr(1e-3, 64, ref_batch=16, rule="none") == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="lr_scaling must be one of"):
        scaled_lr(1e-3, 64, ref_batch=16, rule="square-root")
    # auto: AdamW's LR grows with the square root of the batch, SGD's linearly (8 GPUs x the reference batch)
    assert lr_scaling_rule("auto", functools.partial(torch.optim.AdamW)) == "sqrt"
    assert lr_scaling_rule("auto", torch.optim.SGD) == "linear"
    assert lr_scaling_rule("linear", torch.optim.AdamW) == "linear"


@pytest.mark.parametrize(("devices", "num_nodes", "accumulate", "expected_batch"), [(1, 1, 1, 4), (2, 1, 2, 16),
                                                                                      (2, 2, 1, 16), (2, 2, 2, 32)])
def test_the_module_reads_world_size_and_accumulation_from_the_trainer(devices, num_nodes, accumulate, expected_batch):
    codec = StrongPoseCodec(stride=8)
    module = StrongPoseModule(codec, ResNetBackbone("resnet18", output_stride=8, neck_channels=16),
                              optimizer=functools.partial(torch.optim.SGD), lr=0.1, lr_ref_batch=16, batch_size=4)
    # world size = devices x nodes, as Lightning counts it; nothing is launched before fit
    module.trainer = Trainer(accelerator="cpu", devices=devices, num_nodes=num_nodes,
                             strategy="ddp" if devices * num_nodes > 1 else "auto",
                             accumulate_grad_batches=accumulate, logger=False, enable_checkpointing=False)
    assert module.trainer.world_size == devices * num_nodes
    optimizer = module.configure_optimizers()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * expected_batch / 16)
    module.hparams["lr_scaling"] = "sqrt"
    assert module.configure_optimizers().param_groups[0]["lr"] == pytest.approx(0.1 * (expected_batch / 16) ** 0.5)


@pytest.mark.parametrize(("overrides", "gpus"), [
    ([], 1),  # the default trainer: a one-GPU job per run, not 8 copies of a one-device run
    (["trainer=gpu"], 1),
    (["trainer=ddp"], 8),  # devices=-1, all of a node: the launcher cannot know, asks for 8
    (["trainer=ddp", "trainer.devices=4"], 4),
    (["trainer=ddp_multinode", "trainer.devices=2", "trainer.num_nodes=3"], 2),
    (["trainer=ddp", "hydra.launcher.gpus_per_node=2"], 2),  # said explicitly
    (["trainer=ddp", "trainer.devices='0,1'"], 2),  # device ids, as Lightning reads them
    (["trainer=ddp", "trainer.devices='1,'"], 1),
    (["trainer=ddp", "trainer.devices=[0,1,2]"], 3),
    (["trainer=ddp", "trainer.devices=auto"], 8),
])
def test_the_slurm_job_asks_for_one_task_per_trainer_device(train_config, tmp_path, overrides, gpus):
    cfg = train_config(["hydra/launcher=slurm", *overrides], output_dir=tmp_path, return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["gpus_per_node"] == launcher["tasks_per_node"] == gpus
    assert launcher["nodes"] == cfg.trainer.num_nodes


SLURM_JOB = {"SLURM_JOB_NAME": "train", "SLURM_NODELIST": "localhost", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
             "SLURM_NODEID": "0"}


def test_a_slurm_job_whose_tasks_are_not_the_trainers_ranks_stops_at_its_start(monkeypatch):
    """What the issue's own command did with an 8-GPU launcher and the default (one-device) trainer: 8 tasks,
    each a world of one (Lightning checks the tasks per node only for a DDP trainer)."""
    for name, value in {**SLURM_JOB, "SLURM_NTASKS": "8", "SLURM_NTASKS_PER_NODE": "8"}.items():
        monkeypatch.setenv(name, value)
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    with pytest.raises(ValueError, match=r"runs 8 task.* trainer has 1 process.*trainer=ddp"):
        check_world_size(trainer)
    for name in ("SLURM_NTASKS", "SLURM_NTASKS_PER_NODE"):
        monkeypatch.setenv(name, "1")
    check_world_size(Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False))
    # under DDP Lightning's world size is SLURM_NTASKS itself: one task for a 2-process trainer is caught too
    ddp = Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False)
    with pytest.raises(ValueError, match=r"runs 1 task.* trainer has 2 process"):
        check_world_size(ddp)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "1")  # torchrun inside the job starts the ranks, not SLURM
    check_world_size(ddp)
    assert with_slurm_environment([]) == []  # Lightning keeps torchrun's environment
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")  # an interactive allocation: not a job SLURM started
    monkeypatch.setenv("SLURM_NTASKS", "8")
    check_world_size(trainer)


def test_under_slurm_lightning_gets_a_slurm_environment_that_does_not_requeue(monkeypatch):
    assert with_slurm_environment([]) == []  # not a SLURM job: Lightning picks its environment
    for name, value in {**SLURM_JOB, "SLURM_NTASKS": "1"}.items():
        monkeypatch.setenv(name, value)
    (environment,) = with_slurm_environment([])
    assert isinstance(environment, SLURMEnvironment) and not environment.auto_requeue
    given = SLURMEnvironment(auto_requeue=True)
    assert with_slurm_environment([given]) == [given]  # a cluster environment in trainer.plugins is kept


@pytest.mark.parametrize("name", ["interactive", "bash"])
def test_an_srun_of_several_tasks_in_an_interactive_allocation_makes_them_the_ranks(monkeypatch, name):
    """In an allocation named ``bash`` / ``interactive`` (salloc, srun --pty bash) Lightning ignores SLURM, so
    ``srun --ntasks-per-node=2 python -m strongpose.train trainer=ddp trainer.devices=2`` would start 2 DDP
    processes per task; StrongPose hands Lightning the SLURM environment there, and checks the task count."""
    for key, value in {**SLURM_JOB, "SLURM_JOB_NAME": name, "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2",
                       "SLURM_STEP_NUM_TASKS": "2", "SLURM_TASK_PID": str(os.getpid()),
                       "SLURM_PROCID": "1", "SLURM_LOCALID": "1", "MASTER_ADDR": "localhost",
                       "MASTER_PORT": "12910"}.items():
        monkeypatch.setenv(key, value)
    assert not SLURMEnvironment.detect()  # Lightning's own detection
    (environment,) = with_slurm_environment([])
    assert isinstance(environment, SLURMEnvironment) and not environment.auto_requeue
    ddp = Trainer(accelerator="cpu", devices=2, strategy="ddp", plugins=[environment], logger=False,
                  enable_checkpointing=False)
    assert (ddp.world_size, ddp.global_rank, ddp.local_rank) == (2, 1, 1)  # the tasks are the ranks
    check_world_size(ddp)
    with pytest.raises(ValueError, match=r"runs 2 task.* trainer has 1 process"):
        check_world_size(Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False))
    # rank 0 of a step on a part of the allocation: the step's first node, not the allocation's
    monkeypatch.delenv("MASTER_ADDR")
    monkeypatch.setenv("SLURM_NODELIST", "node[1-4]")
    monkeypatch.setenv("SLURM_STEP_NODELIST", "node[3-4]")
    with_slurm_environment([])
    assert os.environ["MASTER_ADDR"] == "node3"
    # a python typed in the shell, even the shell of task 0 of a several-task step (srun --ntasks-per-node=2
    # --pty bash): not a process srun started, Lightning starts the ranks
    monkeypatch.setenv("SLURM_TASK_PID", str(os.getpid() + 1))
    assert with_slurm_environment([]) == []
    monkeypatch.setenv("SLURM_TASK_PID", str(os.getpid()))
    # the shell itself (a one-task step on some clusters) or a plain process in it: Lightning starts the ranks
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")
    assert with_slurm_environment([]) == []
    monkeypatch.delenv("SLURM_STEP_NUM_TASKS")
    assert with_slurm_environment([]) == []
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "1")  # torchrun started by the tasks keeps its own environment
    assert with_slurm_environment([]) == []


def test_a_requeued_slurm_job_runs_in_the_folder_of_its_first_start(tmp_path, monkeypatch, dry_run_sbatch):
    """submitit requeues the pickled job; the job rebuilds its config from the pickled one (Hydra copies the
    resolver cache over), so the timestamped sweep folder (Hydra's default ``multirun/${now:...}``) is the
    one of the submission, however late the job starts again, and resume=auto finds its checkpoints there."""
    monkeypatch.chdir(tmp_path)
    slurm = _slurm_launcher(["trainer=ddp", "trainer.devices=2"])
    assert "${now:" in OmegaConf.to_container(slurm.config.hydra.sweep)["dir"]
    slurm.launch([["trainer=ddp", "trainer.devices=2", "backbone=resnet101"]], initial_job_idx=0)
    folder = str(slurm.config.hydra.sweep.dir)
    time.sleep(1.1)  # the folder's name has seconds
    job = pickle.loads(dry_run_sbatch.submitted[0].pickled)  # what submitit stores for the job and its requeues
    fresh = OmegaConf.create(OmegaConf.to_container(job.config))  # the same config without the resolver cache
    OmegaConf.copy_cache(from_config=job.config, to_config=fresh)  # what Hydra's load_sweep_config does
    assert str(fresh.hydra.sweep.dir) == folder and (tmp_path / folder).is_dir()
    assert str(OmegaConf.create(OmegaConf.to_container(job.config)).hydra.sweep.dir) != folder  # without the cache


@pytest.mark.parametrize(("trainer_args", "slurm", "refused"), [
    ({"devices": 2, "strategy": "ddp"}, False, True),  # Lightning would run the command line, i.e. the sweep, again
    ({"devices": 1, "strategy": "ddp"}, False, False),  # nothing to start: one process per node
    ({"devices": 1, "num_nodes": 2, "strategy": "ddp"}, False, False),
    ({"devices": 2, "strategy": "ddp_spawn"}, False, False),  # children by multiprocessing, not by the command line
    ({"devices": 2, "strategy": "ddp"}, True, False),  # SLURM starts every rank
    ({"devices": 1}, False, False),
])
def test_a_local_multirun_refuses_only_a_run_that_lightning_would_relaunch(monkeypatch, trainer_args, slurm, refused):
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: SimpleNamespace(mode=RunMode.MULTIRUN)))
    if slurm:
        for name, value in {**SLURM_JOB, "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2"}.items():
            monkeypatch.setenv(name, value)
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, **trainer_args)
    if refused:
        with pytest.raises(ValueError, match="cannot start a 2-process DDP run"):
            check_no_relaunch_in_a_local_multirun(trainer)
    else:
        check_no_relaunch_in_a_local_multirun(trainer)
