import functools
import math
import re
from types import SimpleNamespace

import pytest
import torch

from strongpose.checkpoint import CheckpointError
from strongpose.config_check import ConfigError
from strongpose.codec import StrongPoseCodec
from strongpose.lit_module import StrongPoseModule, global_batch_size, scaled_lr, warmup_schedule
from strongpose.models import ResNetBackbone
from strongpose.structures import Poses


def _module(codec, optimizer=None, **kwargs):
    torch.manual_seed(0)
    backbone = ResNetBackbone("resnet18", output_stride=codec.stride, neck_channels=32)
    return StrongPoseModule(codec, backbone, optimizer or functools.partial(torch.optim.AdamW), heads={"width": 32},
                            **kwargs)


def test_one_optimisation_step_lowers_the_loss_on_a_fixed_batch(codec, batch):
    module = _module(codec)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    losses = []
    for _ in range(2):
        loss = module.losses(module(batch["image"]), batch["targets"])["total"]
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[1] < losses[0]


def test_forward_is_raw_outputs_and_predict_decodes_people(codec, batch):
    module = _module(codec).eval()
    with torch.no_grad():
        outputs = module(batch["image"])
        poses = module.predict_step(batch, 0)
    assert set(outputs) == set(codec.channels)
    assert (outputs["skhm"] < 0).any()  # logits, not probabilities
    assert len(poses) == len(batch["image"]) and all(isinstance(p, Poses) for p in poses)
    assert all(p.keypoints.shape[1:] == (codec.num_keypoints, 3) for p in poses)



def test_validation_step_returns_loss_and_raw_outputs_for_callbacks(codec, batch):
    # COCOEvalCallback decodes these in on_validation_batch_end instead of running the network again
    module = _module(codec).eval()
    with torch.no_grad():
        returned = module.validation_step(batch, 0)
        outputs = module(batch["image"])
    assert set(returned) == {"loss", "outputs"} and returned["loss"].ndim == 0
    assert all(torch.equal(returned["outputs"][k], outputs[k]) for k in outputs)

def test_empty_batch_costs_nothing_and_moves_nothing(codec, batch):
    # the data module sends a size-0 batch when all its samples were bad; DDP ranks must still step
    module = _module(codec)
    stats = module.net.backbone.stem[1].running_mean.clone()
    losses = module.losses(module(batch["image"][:0]), {k: v[:0] for k, v in batch["targets"].items()})
    losses["total"].backward()
    assert all(float(v) == 0 for v in losses.values())
    assert all(p.grad is not None and not p.grad.any() for p in module.parameters())
    assert torch.equal(module.net.backbone.stem[1].running_mean, stats)


def test_loss_weights_default_to_the_authors_and_can_be_partial(codec):
    module = _module(codec, loss={"weights": {"mid": 1.0}, "heatmap": "focal"})
    assert module.loss_weights == {"skhm": 4.0, "bhm": 2.0, "short": 1.0, "mid": 1.0, "long": 0.1}
    assert module.loss_options == {"heatmap": "focal"}


@pytest.mark.parametrize(("loss", "message"), [
    ({"weights": {"skmh": 8.0}}, "model.loss.weights.skmh: no such loss term; terms: skhm, bhm"),
    ({"weights": {"skhm": "abc"}}, "model.loss.weights.skhm='abc': expected a number >= 0"),
    ({"weights": {"mid": -1.0}}, "model.loss.weights.mid=-1.0: expected a number >= 0"),
    ({"heatmap": "mse"}, "model.loss.heatmap='mse': expected one of bce, focal"),
    ({"focal_gama": 1.0}, "model.loss has no option ['focal_gama']"),
    ({"focal_gamma": -1}, "model.loss.focal_gamma=-1: expected a number in [0, inf)"),
    ({"focal_gamma": math.inf}, "model.loss.focal_gamma=inf: expected a number in [0, inf)"),
    ({"focal_alpha": 1.5}, "model.loss.focal_alpha=1.5: expected a number in [0, 1] or null"),
])
def test_a_wrong_loss_term_or_option_is_refused_by_name(codec, loss, message):
    """A misspelt term was ignored (training went on with the default), a weight that is no number failed at
    the first step with an indexing error."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        _module(codec, loss=loss)


class WithL2(StrongPoseModule):
    """A module of one's own with a loss term more: its weight is a model.loss.weights key like the others."""

    loss_terms = {**StrongPoseModule.loss_terms, "skhm_l2": 0.5}

    def losses(self, outputs, targets, global_batch=False, counts=None):
        terms = super().losses(outputs, targets, global_batch, counts)
        terms["skhm_l2"] = (outputs["skhm"].sigmoid() - targets["skhm"]).square().mean()
        terms["total"] = terms["total"] + self.loss_weights["skhm_l2"] * terms["skhm_l2"]
        return terms


def test_a_subclass_adds_a_loss_term_with_a_configurable_weight(codec, batch):
    backbone = ResNetBackbone("resnet18", output_stride=codec.stride, neck_channels=32)
    module = WithL2(codec, backbone, functools.partial(torch.optim.AdamW), heads={"width": 32},
                    loss={"weights": {"skhm_l2": 2.0}})
    assert module.loss_weights["skhm_l2"] == 2.0 and module.loss_weights["skhm"] == 4.0
    terms = module.losses(module(batch["image"]), batch["targets"])
    base = StrongPoseModule.losses(module, module(batch["image"]), batch["targets"])
    assert torch.allclose(terms["total"], base["total"] + 2.0 * terms["skhm_l2"])
    with pytest.raises(ConfigError, match="model.loss.weights.skhm_l3: no such loss term; terms: skhm, bhm, short, "
                                          "mid, long, skhm_l2"):
        WithL2(codec, backbone, functools.partial(torch.optim.AdamW), loss={"weights": {"skhm_l3": 1.0}})


def test_lr_scaling_formula():
    assert global_batch_size(8, world_size=4, accumulate_grad_batches=2) == 64
    assert scaled_lr(1e-3, 64, 16) == pytest.approx(4e-3)
    assert scaled_lr(1e-3, 16, 16) == pytest.approx(1e-3)


def test_configure_optimizers_scales_by_devices_nodes_and_accumulation(codec):
    module = _module(codec, lr=1e-3, lr_ref_batch=16, batch_size=8, lr_scaling="linear",
                     scheduler=functools.partial(warmup_schedule, warmup_fraction=0.1))
    # 2 nodes x 4 devices, accumulating 2 batches of 8: 128 images per step
    module._trainer = SimpleNamespace(world_size=8, accumulate_grad_batches=2, estimated_stepping_batches=100,
                                      is_global_zero=True)
    config = module.configure_optimizers()
    base = config["optimizer"].param_groups[0]["initial_lr"]
    assert base == pytest.approx(1e-3 * 128 / 16)
    assert config["lr_scheduler"]["interval"] == "step"
    assert config["optimizer"].param_groups[0]["lr"] == pytest.approx(base / 10)  # first of 10 warm-up steps


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed", "32-true"])
def test_the_fused_optimiser_is_unfused_only_under_float16_scaling(codec, precision):
    module = _module(codec, optimizer=functools.partial(torch.optim.AdamW, fused=True))
    module._trainer = SimpleNamespace(world_size=1, accumulate_grad_batches=1, estimated_stepping_batches=10,
                                      is_global_zero=True, precision=precision)
    optimizer = module.configure_optimizers()
    assert optimizer.param_groups[0]["fused"] is (precision != "16-mixed")


def _lrs(total, **kwargs):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = warmup_schedule(optimizer, total, **kwargs)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_warmup_then_cosine():
    lrs = _lrs(100, decay="cosine", warmup_fraction=0.1, min_lr_ratio=0.01)
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(0.01, abs=2e-3)


def test_warmup_then_steps():
    lrs = _lrs(100, decay="step", warmup_fraction=0.0, milestones=(0.5, 0.8), gamma=0.1)
    assert lrs[49] == 1.0 and lrs[50] == pytest.approx(0.1) and lrs[80] == pytest.approx(0.01)


def test_schedule_needs_a_finite_length():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="finite"):
        warmup_schedule(optimizer, math.inf)


def test_checkpoint_of_another_codec_is_refused(codec):
    module = _module(codec)
    other = StrongPoseCodec(stride=codec.stride, disk_radius=codec.disk_radius, skeleton="crowdpose")
    checkpoint = {"hyper_parameters": {"codec": _module(other).hparams["codec"]}}
    with pytest.raises(CheckpointError, match="codec skeleton: checkpoint 'crowdpose', model 'coco'"):
        module.on_load_checkpoint(checkpoint)
    module.on_load_checkpoint({"hyper_parameters": dict(module.hparams)})
    # a skeleton edited under the same name: its keypoint order is compared too
    saved = {**module.hparams["codec"], "keypoints": list(reversed(module.hparams["codec"]["keypoints"]))}
    with pytest.raises(CheckpointError, match="codec keypoints: checkpoint \\['right_ankle'"):
        module.on_load_checkpoint({"hyper_parameters": {"codec": saved}})
    # or another edge: the mid-range head's channels are the edges
    moved = ["nose->left_hip" if e == "nose->left_eye" else e for e in module.hparams["codec"]["edges"]]
    with pytest.raises(CheckpointError, match=re.escape("codec edges: only the checkpoint has ['nose->left_hip'], "
                                                        "only the model ['nose->left_eye']")):
        module.on_load_checkpoint({"hyper_parameters": {"codec": {**module.hparams["codec"], "edges": moved}}})
    # a checkpoint from before the spec named the keypoints and edges still loads
    older = {key: value for key, value in module.hparams["codec"].items() if key not in ("keypoints", "edges")}
    module.on_load_checkpoint({"hyper_parameters": {"codec": older}})


def test_checkpoint_of_another_backbone_names_the_difference(codec):
    module = _module(codec)
    saved = dict(module.hparams)
    saved["backbone"] = {**saved["backbone"], "arch": "resnet50", "out_channels": 256}
    with pytest.raises(CheckpointError, match=r"backbone arch: checkpoint 'resnet50', model 'resnet18'.*out_channels"):
        module.on_load_checkpoint({"hyper_parameters": saved})


def _trained_optimizer_state(codec, batch, fused: bool, precision: str) -> dict:
    module = _module(codec, optimizer=functools.partial(torch.optim.AdamW, fused=True))
    module._trainer = SimpleNamespace(world_size=1, accumulate_grad_batches=1, estimated_stepping_batches=10,
                                      is_global_zero=True, precision=precision)
    optimizer = module.configure_optimizers()
    assert optimizer.param_groups[0]["fused"] is fused
    module.losses(module(batch["image"]), batch["targets"])["total"].backward()
    optimizer.step()
    return optimizer.state_dict()


@pytest.mark.parametrize(("saved", "now"), [("bf16-mixed", "16-mixed"), ("16-mixed", "bf16-mixed")])
def test_a_resume_steps_as_its_own_run_says_not_as_the_checkpoint(codec, batch, saved, now):
    state = _trained_optimizer_state(codec, batch, fused=saved != "16-mixed", precision=saved)
    checkpoint = {"optimizer_states": [state], "hyper_parameters": {}}
    module = _module(codec, optimizer=functools.partial(torch.optim.AdamW, fused=True))
    module._trainer = SimpleNamespace(world_size=1, accumulate_grad_batches=1, estimated_stepping_batches=10,
                                      is_global_zero=True, precision=now)
    module.on_load_checkpoint(checkpoint)  # as Lightning calls it, before it loads the optimiser state
    optimizer = module.configure_optimizers()
    optimizer.load_state_dict(checkpoint["optimizer_states"][0])
    assert optimizer.param_groups[0]["fused"] is (now != "16-mixed")
    assert int(optimizer.state[optimizer.param_groups[0]["params"][0]]["step"]) == 1  # the state itself came back
    module.losses(module(batch["image"]), batch["targets"])["total"].backward()
    optimizer.step()  # and steps in the new kind
