"""ONNX export of a tiny checkpoint: onnxruntime agrees with PyTorch, batch and size are dynamic, and
missing files or dependencies fail with a message saying what to do."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from strongpose import export
from strongpose.checkpoint import CONFIG_KEY, CheckpointError, module_from_checkpoint
from strongpose.config_check import ConfigError
from strongpose.export import INPUT_CONTRACT, ExportError, run
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
    meta = session.get_modelmeta().custom_metadata_map
    assert INPUT_CONTRACT.items() <= meta.items()  # says the input is 0..255 pixels
    assert set(meta) - set(INPUT_CONTRACT) == {"strongpose.codec", "strongpose.input_size"}  # and how to decode
    # pixels of another batch size and a non-square size off the stride grid
    images = torch.randint(0, 256, (3, 3, 72, 40), generator=torch.Generator().manual_seed(0)).float()
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


def test_the_traced_size_is_said_and_can_be_set(tiny_checkpoint, tmp_path, monkeypatch, caplog, capsys):
    saved = torch.load(tiny_checkpoint, weights_only=True)
    del saved[CONFIG_KEY]["data"]["input_size"]
    sizeless = tmp_path / "sizeless.ckpt"
    torch.save(saved, sizeless)
    traced = []

    def fake_export(net, names, output, example, **kwargs):  # the size it is given is what matters here
        traced.append(example.shape[-1])
        output.write_bytes(b"onnx")
        return "dynamo"

    monkeypatch.setattr(export, "export_onnx", fake_export)
    args = {"ckpt_path": str(sizeless), "output": str(tmp_path / "m.onnx"), "check": False}
    report = run(args)
    assert traced == [512] and report["input_size"] == 512
    assert "has no data.input_size: tracing and checking at 512 px; set input_size=N" in caplog.text
    assert "traced at 512 px: the default: the checkpoint has no data.input_size" in capsys.readouterr().out
    caplog.clear()
    assert run({**args, "input_size": 96})["input_size_source"] == "input_size=96" and traced[-1] == 96
    assert run({**args, "ckpt_path": str(tiny_checkpoint)})["input_size_source"] == "the checkpoint's data.input_size"
    assert traced[-1] == 64 and "tracing" not in caplog.text  # no warning when the size is known


def test_missing_onnxruntime_says_what_to_install(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(ExportError, match=r"onnxruntime is missing.*pip install 'strongpose\[export\]'"):
        run({"ckpt_path": str(tiny_checkpoint), "output": str(tmp_path / "m.onnx")})
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("option, message", [
    ({"input_size": "abc"}, r"input_size='abc' \(str\): expected int or null"),
    ({"opset": "abc"}, r"opset='abc' \(str\): expected int"),
    ({"dynamic": "no"}, r"dynamic='no' \(str\): expected bool"),
    ({"opset": 0}, r"opset=0: must be > 0"),
])
def test_options_of_the_wrong_type_are_refused_before_the_model_is_built(option, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        run({"ckpt_path": str(tmp_path / "never-read.ckpt"), "output": str(tmp_path / "m.onnx"), **option})


def test_a_wrong_exporter_name_is_an_input_error(tiny_checkpoint, tmp_path):
    with pytest.raises(ConfigError, match=r"exporter must be one of \('auto', 'dynamo', 'torchscript'\), got 'dinamo'"):
        run({"ckpt_path": str(tiny_checkpoint), "output": str(tmp_path / "m.onnx"), "exporter": "dinamo"})
    assert not (tmp_path / "m.onnx").exists()


def test_an_output_that_cannot_be_written_is_refused_before_exporting(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "export_onnx", lambda *a, **k: pytest.fail("exported"))
    with pytest.raises(ConfigError, match=r"output=.* is a folder; name the file to write"):
        run({"ckpt_path": str(tiny_checkpoint), "output": str(tmp_path)})
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="its folder cannot be made"):
        run({"ckpt_path": str(tiny_checkpoint), "output": str(tmp_path / "file" / "m.onnx")})


def test_a_wrong_checkpoint_path_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere.ckpt does not exist"):
        run({"ckpt_path": str(tmp_path / "nowhere.ckpt"), "output": str(tmp_path / "m.onnx")})


def test_cli_reports_a_wrong_checkpoint_in_one_line_and_writes_nothing(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-m", "strongpose.export", "ckpt_path=missing.ckpt", "output=m.onnx"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2  # a mistake in the input, as in train / evaluate / predict
    assert done.stderr.startswith("CheckpointError: checkpoint missing.ckpt does not exist\n(raised at ")
    assert len(done.stderr.strip().splitlines()) == 2
    assert list(tmp_path.iterdir()) == []  # no outputs/ folder, no log, no model


def test_cli_lists_the_keys_for_a_typo(cli, tmp_path):
    done = cli("strongpose.export", ["ckpt_path=missing.ckpt", "opsett=17"], tmp_path, timeout=120, check=False)
    assert done.returncode == 2 and "is not in struct" in done.stderr
    assert "the config has no key 'opsett' (did you mean 'opset'?); its keys: check, ckpt_path" in done.stderr
    assert list(tmp_path.iterdir()) == []
