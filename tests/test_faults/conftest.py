"""Fixtures of the fault tests."""

import os

import pytest

SLURM_JOB_ID = "4242"


@pytest.fixture
def fake_scontrol(tmp_path, monkeypatch):
    """A SLURM job (``SLURM_JOB_ID`` = 4242) whose ``scontrol`` (first on PATH) appends its arguments, one call
    per line, to the file returned."""
    calls = tmp_path / "scontrol_calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", SLURM_JOB_ID)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    return calls
