"""W&B goes online only with a key, and says in one line which it chose (no run is started here); a resumed run
logs on to the W&B run that wrote its checkpoint."""

import itertools
import os
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.loggers import WandbLogger

from strongpose.tracking import WANDB_RUN, RecordWandbRun, recorded_wandb_run, wandb_key_configured, wandb_logger
from strongpose.train import train


@pytest.fixture
def no_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    return tmp_path


def test_without_a_key_it_is_offline_and_says_so(no_key, capsys):
    assert not wandb_key_configured()
    logger = wandb_logger(save_dir=str(no_key))
    assert logger._offline
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "offline" in out[0] and "wandb sync" in out[0]


def test_a_netrc_entry_or_an_env_key_means_online(no_key, monkeypatch, capsys):
    netrc = no_key / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password not-a-real-key\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert wandb_key_configured()
    monkeypatch.setenv("NETRC", str(no_key / "no-netrc"))
    monkeypatch.setenv("WANDB_API_KEY", "not-a-real-key")
    logger = wandb_logger(save_dir=str(no_key))
    assert not logger._offline
    assert capsys.readouterr().out.strip().splitlines() == ["W&B: logging online to project 'strongpose'"]


def test_wandb_mode_offline_wins_over_a_key(no_key, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "not-a-real-key")
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_logger(save_dir=str(no_key))._offline


def test_wandb_mode_disabled_starts_no_run_and_writes_nothing(no_key, monkeypatch, capsys):
    # offline=True would make Lightning set WANDB_MODE=dryrun: an offline run writing files under wandb/
    monkeypatch.setenv("WANDB_API_KEY", "not-a-real-key")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(no_key)
    for offline in (None, True, False):
        logger = wandb_logger(save_dir=str(no_key / "run"), offline=offline)
        run = logger.experiment
        try:
            assert run.disabled and not logger._offline
        finally:
            run.finish()
    assert "W&B: disabled (WANDB_MODE=disabled)" in capsys.readouterr().out
    assert os.environ["WANDB_MODE"] == "disabled"
    assert not (no_key / "run" / "wandb").exists() and not (no_key / "wandb").exists()


def test_starting_a_run_prints_no_anonymous_setting_warning(no_key, monkeypatch):
    """Lightning gave wandb.init anonymous=None, and W&B warned at every start that the setting has no effect."""
    import wandb

    warned = []
    # recorded here: W&B prints each warning once a process, so another test's start could have used it up
    monkeypatch.setattr(wandb, "termwarn", lambda message, *args, **kwargs: warned.append(message))
    monkeypatch.setenv("WANDB_MODE", "disabled")  # a disabled run checks wandb.init's settings too; no files
    monkeypatch.chdir(no_key)
    run = wandb_logger(save_dir=str(no_key / "run")).experiment
    run.finish()
    assert run.disabled and not [message for message in warned if "anonymous" in message]


def test_a_requeued_slurm_job_logs_on_to_the_same_wandb_run(no_key, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "not-a-real-key")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    assert wandb_logger(save_dir=str(no_key)).version is None  # not a SLURM job: W&B draws a new id
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    first = wandb_logger(save_dir=str(no_key / "run")).version
    assert first.startswith("slurm-4242-") and wandb_logger(save_dir=str(no_key / "run")).version == first
    assert wandb_logger(save_dir=str(no_key / "other")).version != first  # another run of the same job
    assert wandb_logger(save_dir=str(no_key / "run"), id="mine").version == "mine"
    assert wandb_logger(save_dir=str(no_key / "run"), run_resume=None).version is None  # resume=null starts over
    monkeypatch.setenv("WANDB_RUN_ID", "theirs")
    assert wandb_logger(save_dir=str(no_key / "run")).version is None  # wandb takes the user's WANDB_RUN_ID


def test_a_resumed_run_logs_on_to_the_wandb_run_of_its_checkpoint(no_key, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", "not-a-real-key")
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    resumed = {"id": "abc123", "project": "strongpose"}
    logger = wandb_logger(save_dir=str(no_key), resumed_run=resumed)
    assert logger.version == "abc123"  # also over a SLURM job's own id
    assert "logging on to run abc123" in capsys.readouterr().out
    assert wandb_logger(save_dir=str(no_key), resumed_run=resumed, id="mine").version == "mine"
    monkeypatch.delenv("SLURM_JOB_ID")
    # a checkpoint of another project's run: this project gets a new run
    assert wandb_logger(save_dir=str(no_key), project="other", resumed_run=resumed).version is None
    monkeypatch.setenv("WANDB_RUN_ID", "theirs")
    assert wandb_logger(save_dir=str(no_key), resumed_run=resumed).version is None  # wandb takes WANDB_RUN_ID
    monkeypatch.delenv("WANDB_RUN_ID")
    assert wandb_logger(save_dir=str(no_key), resumed_run=resumed, offline=True).version is None


def _trainer_logging_to(run) -> SimpleNamespace:
    return SimpleNamespace(loggers=[WandbLogger(experiment=run)], is_global_zero=True)


def test_checkpoints_record_the_online_wandb_run_that_wrote_them(tmp_path):
    online = SimpleNamespace(id="abc123", project="pose", offline=False, disabled=False)
    checkpoint = {"state_dict": {"w": torch.ones(3)}}
    RecordWandbRun().on_save_checkpoint(_trainer_logging_to(online), None, checkpoint)
    torch.save(checkpoint, tmp_path / "last.ckpt")
    assert recorded_wandb_run(str(tmp_path / "last.ckpt")) == {"id": "abc123", "project": "pose"}
    for run in (SimpleNamespace(**{**vars(online), "offline": True}),  # W&B resumes no offline run
                SimpleNamespace(**{**vars(online), "disabled": True})):
        checkpoint = {}
        RecordWandbRun().on_save_checkpoint(_trainer_logging_to(run), None, checkpoint)
        assert checkpoint == {}
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    (tmp_path / "broken.ckpt").write_text("not a checkpoint")
    for path in ("plain.ckpt", "broken.ckpt", "missing.ckpt"):
        assert recorded_wandb_run(str(tmp_path / path)) is None, path
    assert recorded_wandb_run(None) is None


class _FakeOnlineRun(SimpleNamespace):
    """What WandbLogger uses of a W&B run, online, without a server."""

    def __init__(self, run_id: str, project: str) -> None:
        super().__init__(id=run_id, project=project, offline=False, disabled=False, logged=[],
                         config=SimpleNamespace(update=lambda *args, **kwargs: None))

    def log(self, metrics: dict, **kwargs) -> None:
        self.logged.append(metrics)


class _ServerlessWandbLogger(WandbLogger):
    drawn = itertools.count()

    @property
    def experiment(self):  # a new run gets an id drawn as W&B would, a resumed one keeps its own
        if self._experiment is None:
            self._experiment = _FakeOnlineRun(self._id or f"drawn-{next(self.drawn)}", self._project)
        return self._experiment


def test_a_resumed_run_goes_on_logging_to_its_wandb_run(train_config, tmp_path, monkeypatch):
    """train() records the online run in every checkpoint, and a run that resumes one (resume=auto) reads it
    before it makes its W&B logger: one W&B run for the training, however often it stopped."""
    monkeypatch.setattr("strongpose.tracking.WandbLogger", _ServerlessWandbLogger)
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the tests' disabled would win over offline=false
    run = ["trainer.max_epochs=1", "callbacks.ema=null", "data.max_train_images=2", "data.max_val_images=2",
           "logger=wandb", "logger.wandb.offline=false", "callbacks.coco_eval.log_images=0"]
    _, first = train(train_config(run, output_dir=tmp_path))
    (drawn,) = [logger.version for logger in first["loggers"]]
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last[WANDB_RUN] == {"id": drawn, "project": "strongpose"}
    _, resumed = train(train_config([*run, "trainer.max_epochs=2"], output_dir=tmp_path))
    assert resumed["trainer"].current_epoch == 2
    (logger,) = resumed["loggers"]
    assert logger.version == drawn and logger.experiment.logged  # it logged there
    _, afresh = train(train_config([*run, "resume=null"], output_dir=tmp_path))  # starts over: a new W&B run
    assert afresh["trainer"].current_epoch == 1 and afresh["loggers"][0].version != drawn
    # another run folder from this run's checkpoint (e.g. each job of a sweep): a W&B run of its own
    _, branch = train(train_config([*run, "trainer.max_epochs=2", f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}"],
                                   output_dir=tmp_path / "branch"))
    assert branch["trainer"].current_epoch == 2 and branch["loggers"][0].version not in (drawn, afresh["loggers"][0].version)


def test_tags_and_entity_reach_wandb_init(train_config, tmp_path, monkeypatch):
    from strongpose.train import instantiate_loggers

    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = train_config(["logger=wandb", "logger.wandb.tags=[ablation,resnet50]", "logger.wandb.entity=my-team"],
                       output_dir=tmp_path)
    (logger,) = instantiate_loggers(cfg.logger)
    assert logger._wandb_init["tags"] == ["ablation", "resnet50"] and logger._wandb_init["entity"] == "my-team"
