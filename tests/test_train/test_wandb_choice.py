"""W&B goes online only with a key, and says in one line which it chose (no run is started here)."""

import pytest

from strongpose.train import wandb_key_configured, wandb_logger


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
