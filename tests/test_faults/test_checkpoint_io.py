"""Checkpoints are written atomically and read back with weights_only=True and clear messages."""

import os

import pytest
import torch
from lightning.fabric.plugins.io import TorchCheckpointIO

from strongpose.checkpoint import CheckpointError
from strongpose.checkpoint_io import AtomicCheckpointIO
from strongpose.train import with_atomic_checkpoints


def _checkpoint(value: float) -> dict:
    return {"state_dict": {"w": torch.full((64, 64), value)}, "global_step": int(value)}


def test_save_then_load_round_trips_and_leaves_no_temporary_file(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"  # the folder is created
    io.save_checkpoint(_checkpoint(1.0), path)
    io.save_checkpoint(_checkpoint(2.0), path)  # replaces
    loaded = io.load_checkpoint(path)
    assert loaded["global_step"] == 2 and torch.equal(loaded["state_dict"]["w"], torch.full((64, 64), 2.0))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_the_next_write_removes_what_a_killed_write_left(tmp_path):
    (tmp_path / ".last.ckpt.0123abcd.tmp").write_bytes(b"x" * 1000)  # a job killed while writing last.ckpt
    # another target's too: a top-k name (epoch..-step..) is never written again
    (tmp_path / ".epoch003-step000042.ckpt.0123abcd.tmp").write_bytes(b"x")
    (tmp_path / "notes.tmp").write_bytes(b"x")  # not a checkpoint's temporary: kept
    AtomicCheckpointIO().save_checkpoint(_checkpoint(1.0), tmp_path / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "notes.tmp"]


def test_the_temporary_file_is_renamed_within_the_target_folder(tmp_path, monkeypatch):
    # a rename within one folder is atomic; Lightning's own temporary file lives in the system temp folder,
    # and a move from another filesystem is a copy into the target
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renames.append((src, dst)), real_replace(src, dst)))
    AtomicCheckpointIO().save_checkpoint(_checkpoint(1.0), tmp_path / "last.ckpt")
    [(src, dst)] = renames
    assert os.path.dirname(src) == os.path.dirname(dst) == str(tmp_path)


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError])
def test_a_failure_while_writing_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch, failure):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint(_checkpoint(1.0), path)
    before = path.read_bytes()
    real_save = torch.save

    def half_then_fail(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)  # half of the bytes on disk, as after a crash mid-write
        raise failure("disk full / Ctrl-C mid-write")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(failure):
        io.save_checkpoint(_checkpoint(2.0), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # the half-written temporary file is gone
    monkeypatch.setattr(torch, "save", real_save)
    assert io.load_checkpoint(path)["global_step"] == 1


def test_a_truncated_checkpoint_is_named_as_such(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save(_checkpoint(1.0), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"last\.ckpt \(\d+ bytes\) cannot be read: truncated"):
        AtomicCheckpointIO().load_checkpoint(path)


class _Arbitrary:  # not a tensor or a plain container: weights_only=True refuses it
    pass


def test_loading_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Arbitrary()}, path)
    with pytest.raises(CheckpointError, match="weights_only=True refuses") as refused:
        AtomicCheckpointIO().load_checkpoint(path)
    assert "weights_only` set to `False`" not in str(refused.value)  # torch's advice: not for unknown files


def test_the_trainer_gets_atomic_io_unless_it_has_its_own():
    assert [type(p) for p in with_atomic_checkpoints(None)] == [AtomicCheckpointIO]
    own = TorchCheckpointIO()
    assert with_atomic_checkpoints([own]) == [own]


@pytest.mark.parametrize(("name", "content"), [("notes.ckpt", b"ema: true\n"), ("results.json", b'[{"a": 1}]'),
                                                ("photo.jpg", b"\xff\xd8\xff\xe0 not much of a jpeg")])
def test_a_file_of_another_kind_is_no_checkpoint(tmp_path, name, content):
    """A text file made torch.load raise a bare KeyError; a JPEG or JSON got the weights_only message, with
    torch's advice to load it with weights_only=False."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"{name} \(\d+ bytes\) is not a PyTorch checkpoint \(starts with"):
        AtomicCheckpointIO().load_checkpoint(path)
