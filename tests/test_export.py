"""ONNX export of a tiny checkpoint: onnxruntime agrees with PyTorch, batch and size are dynamic, and
missing files or dependencies fail with a message saying what to do."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from strongpose.checkpoint import CONFIG_KEY, CheckpointError, module_from_checkpoint
from strongpose.export import ExportError, run
from strongpose.train import resolved_config


@pytest.fixture
def tiny_checkpoint(train_config, tmp_path):
    """A Lightning-style checkpoint of an untrained ResNet-18 StrongPose at 64 px, with its run config."""
    cfg = train_config(output_dir=tmp_path)
    module = instantiate(cfg.model, codec=instantiate(cfg.codec))
    for bn in (m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # not the identity
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                CONFIG_KEY: resolved_config(cfg)}, path)
    return path


def test_export_matches_pytorch_for_any_batch_and_size(tiny_checkpoint, tmp_path):
    """The real dynamo export (9 s on the idle 2-core VM), checked here independently of run()'s own check."""
    import onnxruntime as ort

    output = tmp_path / "out" / "model.onnx"
    report = run({"ckpt_path": str(tiny_checkpoint), "output": str(output)})
    assert report["exporter"] == "dynamo" and report["input_size"] == 64  # the checkpoint's size
    assert set(report["diffs"]) == {"skhm", "bhm", "short", "mid", "long"}
    assert max(report["diffs"].values()) < 1e-3
    assert output.is_file() and not list(output.parent.glob("*.data"))  # one self-contained file

    module, _ = module_from_checkpoint(tiny_checkpoint)
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(module.codec.channels)
    images = torch.randn(3, 3, 72, 40)  # another batch size, a non-square size off the stride grid
    got = dict(zip(list(module.codec.channels), session.run(None, {"images": images.numpy()})))
    with torch.no_grad():
        expected = module(images)
    for name, value in expected.items():
        assert got[name].shape == tuple(value.shape) == (3, module.codec.channels[name], 9, 5)
        np.testing.assert_allclose(got[name], value.numpy(), atol=1e-3 * max(1.0, float(value.abs().max())))


def test_falls_back_to_the_torchscript_exporter_and_says_so(tiny_checkpoint, tmp_path, monkeypatch, caplog):
    export = torch.onnx.export

    def dynamo_fails(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError("torch.export cannot trace this")
        return export(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_fails)
    report = run({"ckpt_path": str(tiny_checkpoint), "output": str(tmp_path / "m.onnx"), "dynamic": False})
    assert report["exporter"] == "torchscript" and max(report["diffs"].values()) < 1e-3
    assert "falling back to the TorchScript exporter" in caplog.text and "cannot trace this" in caplog.text
    with pytest.raises(ExportError, match="dynamo .* exporter failed: torch.export cannot trace this"):
        run({"ckpt_path": str(tiny_checkpoint), "output": str(tmp_path / "m.onnx"), "exporter": "dynamo"})


def test_missing_onnxruntime_says_what_to_install(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(ExportError, match=r"onnxruntime is missing.*pip install 'strongpose\[export\]'"):
        run({"ckpt_path": str(tiny_checkpoint), "output": str(tmp_path / "m.onnx")})
    assert not (tmp_path / "m.onnx").exists()


def test_a_wrong_checkpoint_path_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere.ckpt does not exist"):
        run({"ckpt_path": str(tmp_path / "nowhere.ckpt"), "output": str(tmp_path / "m.onnx")})


def test_cli_reports_a_wrong_checkpoint_in_one_line_and_writes_nothing(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-m", "strongpose.export", "ckpt_path=missing.ckpt", "output=m.onnx"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip() == "strongpose.export: checkpoint missing.ckpt does not exist"
    assert list(tmp_path.iterdir()) == []  # no outputs/ folder, no log, no model
