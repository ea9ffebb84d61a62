"""ChannelsLast and Compile: off by default, switchable from the config, and they change the layout or the
execution of the network, never its numbers or its checkpoint keys."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from strongpose.callbacks import EMA, ChannelsLast, Compile
from strongpose.codec import StrongPoseCodec
from strongpose.lit_module import StrongPoseModule
from strongpose.models.backbone import ResNetBackbone
from strongpose.train import train

NHWC = torch.channels_last


def _module() -> StrongPoseModule:
    torch.manual_seed(0)
    module = StrongPoseModule(StrongPoseCodec(stride=8), ResNetBackbone("resnet18", output_stride=8, neck_channels=16),
                              optimizer=torch.optim.SGD, heads={"width": 16})
    return module.eval()


def test_both_are_in_the_default_config_and_switched_off(train_config, tmp_path):
    callbacks = train_config([], output_dir=tmp_path).callbacks
    assert callbacks.channels_last.enabled is False and callbacks.compile.enabled is False
    on = train_config(["callbacks.channels_last.enabled=true", "callbacks.compile.enabled=true",
                       "callbacks.compile.mode=max-autotune"], output_dir=tmp_path).callbacks
    assert on.channels_last.enabled and on.compile.enabled and on.compile.mode == "max-autotune"


def test_channels_last_converts_weights_and_images_and_keeps_outputs(batch):
    module, reference = _module(), _module()
    convs = [m.weight for m in module.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    ChannelsLast(enabled=False).setup(None, module, "fit")
    assert convs and not any(w.is_contiguous(memory_format=NHWC) for w in convs)
    ChannelsLast().setup(None, module, "fit")
    assert all(w.is_contiguous(memory_format=NHWC) for w in convs)
    assert module.state_dict().keys() == reference.state_dict().keys()

    images = batch["image"].clone()
    ChannelsLast().on_train_batch_start(None, module, batch, 0)
    assert batch["image"].is_contiguous(memory_format=NHWC) and torch.equal(batch["image"], images)
    with torch.no_grad():
        got, expected = module(batch["image"]), reference(images)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-4)


def test_a_training_run_with_channels_last(train_config, tmp_path):
    _, objects = train(train_config(["trainer.fast_dev_run=true", "callbacks.channels_last.enabled=true"],
                                    output_dir=tmp_path))
    assert objects["trainer"].global_step == 1
    stem = next(m for m in objects["model"].modules() if isinstance(m, nn.Conv2d))
    assert stem.weight.is_contiguous(memory_format=NHWC)
    # the EMA copy has the live weights' layout (converted before the copy): fused updates, no transposes
    (ema,) = [c for c in objects["trainer"].callbacks if isinstance(c, EMA)]
    live = dict(objects["model"].named_parameters())
    for name, averaged in ema._average_model.module.named_parameters():  # noqa: SLF001
        assert averaged.stride() == live[name].stride(), name


def test_compile_is_in_place_and_gives_the_eager_numbers(batch):
    # aot_eager: the graphs torch.compile captures (forward and backward) run without generated kernels,
    # which take minutes to build on a CPU; BatchNorm with fixed statistics: batch statistics of 8 values
    # per channel in the last stage (2 x 2 maps x 2 images) amplify any rounding difference
    module, reference = _module(), _module()
    Compile(enabled=False).setup(None, module, "fit")
    assert module.net._compiled_call_impl is None  # noqa: SLF001
    Compile(backend="aot_eager").setup(None, module, "fit")
    assert module.net._compiled_call_impl is not None  # noqa: SLF001
    assert module.state_dict().keys() == reference.state_dict().keys()  # no "_orig_mod." prefixes

    for model in (module, reference):
        model.losses(model(batch["image"]), batch["targets"])["total"].backward()
    grads = {name: p.grad for name, p in module.named_parameters()}
    for name, p in reference.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-3, atol=1e-5)


@pytest.mark.slow
def test_a_training_run_with_compile(train_config, tmp_path):
    _, objects = train(train_config(["trainer.fast_dev_run=true", "callbacks.compile.enabled=true",
                                     "+callbacks.compile.backend=aot_eager"], output_dir=tmp_path))
    assert objects["trainer"].global_step == 1
    assert objects["model"].net._compiled_call_impl is not None  # noqa: SLF001
    assert not any("_orig_mod" in key for key in objects["model"].state_dict())
