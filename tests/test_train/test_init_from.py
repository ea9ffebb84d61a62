"""init_from=CKPT: a new run (optimiser, schedule, step 0) that starts from another run's weights, every tensor
that fits; for fine-tuning on another skeleton, or going on with another global batch."""

import pytest
import torch
from hydra.utils import instantiate

from strongpose.checkpoint import CheckpointError, _another_kind_of_backbone
from strongpose.config_check import ConfigError
from strongpose.skeleton import COCO_PERSON
from strongpose.train import start_from_weights, train

QUICK = ["trainer.limit_val_batches=0", "callbacks.coco_eval=null", "callbacks.model_checkpoint.monitor=null"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, train_config):
    folder = tmp_path_factory.mktemp("trained")
    train(train_config([*QUICK, "trainer.max_epochs=1"], output_dir=folder))
    return folder / "checkpoints" / "last.ckpt"


def _model(train_config, overrides):
    cfg = train_config(overrides, output_dir="/unused")
    return instantiate(cfg.model, codec=instantiate(cfg.codec))


def test_the_same_model_gets_every_weight(trained, train_config, capsys):
    model = _model(train_config, [])
    start_from_weights(model, str(trained))
    saved = torch.load(trained, weights_only=True)["state_dict"]  # the EMA weights
    assert all(torch.equal(value, saved[name]) for name, value in model.state_dict().items())
    assert f"init_from={trained}: {len(saved)} of {len(saved)} tensors loaded" in capsys.readouterr().out


def test_another_skeleton_keeps_only_the_heads_last_layers_new(trained, train_config, capsys):
    """COCO's 17 keypoints -> CrowdPose's 14: backbone, neck and the heads' hidden layers come from the run."""
    model = _model(train_config, ["codec.skeleton=crowdpose"])
    fresh = {name: value.clone() for name, value in model.state_dict().items()}
    start_from_weights(model, str(trained))
    saved = torch.load(trained, weights_only=True)["state_dict"]
    state = model.state_dict()
    kept = [name for name in state if name not in saved or saved[name].shape != state[name].shape]
    assert kept and all(".backbone." not in name for name in kept)  # only per-keypoint / per-edge outputs differ
    assert all(torch.equal(state[name], fresh[name]) for name in kept)
    assert all(torch.equal(state[name], saved[name]) for name in state if name not in kept)
    assert f"{len(state) - len(kept)} of {len(state)} tensors loaded; {len(kept)} keep their initial values" in \
        capsys.readouterr().out


def test_a_checkpoint_of_separate_head_stacks_gives_every_weight(trained, train_config, tmp_path, capsys):
    """Checkpoints from before the heads were fused (``net.heads.heads.<name>.<i>.*``) still start a run."""
    checkpoint = torch.load(trained, weights_only=True)
    fused = checkpoint["state_dict"]
    heads = list(dict.fromkeys(key.split(".")[3] for key in fused if key.startswith("net.heads.heads.")))
    separate = {key: value for key, value in fused.items() if not key.startswith("net.heads.")}
    layers = sorted({int(key.split(".")[3]) for key in fused if key.startswith("net.heads.convs.")})
    for key, value in fused.items():
        parts = key.split(".")
        if key.startswith("net.heads.convs."):
            chunks = [value] * len(heads) if value.dim() == 0 else value.chunk(len(heads))
            for head, chunk in zip(heads, chunks):
                separate[f"net.heads.heads.{head}.{parts[3]}.{parts[4]}"] = chunk.clone()
        elif key.startswith("net.heads.heads."):
            separate[f"net.heads.heads.{parts[3]}.{layers[-1] + 2}.{parts[4]}"] = value
    checkpoint["state_dict"] = separate
    old = tmp_path / "separate_heads.ckpt"
    torch.save(checkpoint, old)
    model = _model(train_config, [])
    start_from_weights(model, str(old))
    assert all(torch.equal(value, fused[name]) for name, value in model.state_dict().items())
    assert f"{len(fused)} of {len(fused)} tensors loaded" in capsys.readouterr().out
    model.load_state_dict(separate)  # and as a whole, by the heads' load hook
    with pytest.raises(CheckpointError, match="before StrongPose fused its heads.*init_from=CKPT"):
        train(train_config([*QUICK, "trainer.max_epochs=2", f"ckpt_path={old}"], output_dir=tmp_path / "resumed"))


def test_without_long_range_offsets_the_other_heads_keep_their_layers(trained, train_config, capsys):
    """A checkpoint with five heads, a model with four: each keeps its own channels of the heads' shared stack."""
    model = _model(train_config, ["codec.long_range=false"])
    start_from_weights(model, str(trained))
    saved = torch.load(trained, weights_only=True)["state_dict"]
    state = model.state_dict()
    assert all(torch.equal(state[name], saved[name]) for name in state if not name.startswith("net.heads.convs."))
    first = "net.heads.convs.0.weight"  # skhm, bhm, short, mid of the five heads' channels (long was the fifth)
    assert torch.equal(state[first], saved[first][: state[first].shape[0]])
    assert f"{len(state)} of {len(state)} tensors loaded" in capsys.readouterr().out


def test_with_long_range_offsets_added_the_other_heads_keep_their_layers(trained, train_config, tmp_path, capsys):
    """A checkpoint with four heads, a model with five: the four load their channels of the heads' shared stack,
    the new head keeps its initial ones (and its output layer)."""
    four = _model(train_config, ["codec.long_range=false"])
    start_from_weights(four, str(trained))
    capsys.readouterr()
    checkpoint = torch.load(trained, weights_only=True)
    checkpoint["state_dict"] = four.state_dict()
    checkpoint["hyper_parameters"]["codec"]["long_range"] = False
    path = tmp_path / "four_heads.ckpt"
    torch.save(checkpoint, path)
    model = _model(train_config, [])
    fresh = {name: value.clone() for name, value in model.state_dict().items()}
    start_from_weights(model, str(path))
    state, saved = model.state_dict(), four.state_dict()
    assert all(torch.equal(state[name], saved[name]) for name in saved if not name.startswith("net.heads.convs."))
    assert all(torch.equal(state[name], fresh[name]) for name in state if name.startswith("net.heads.heads.long."))
    for name, value in state.items():
        if name.startswith("net.heads.convs.") and value.dim():  # skhm, bhm, short, mid, then long
            *old, new = value.chunk(5)
            assert torch.equal(torch.cat(old), saved[name]) and torch.equal(new, fresh[name].chunk(5)[4]), name
    out = capsys.readouterr().out
    assert f"{len(state) - 2} of {len(state)} tensors loaded" in out and "heads the checkpoint lacks (long)" in out
    # the heads' load hook does the same for a whole state dict, when missing keys are allowed
    again = _model(train_config, [])  # (other initial values than model's)
    again.load_state_dict(saved, strict=False)
    for name, value in again.state_dict().items():
        if name.startswith("net.heads.convs.") and value.dim():
            value, expected = value.chunk(5)[:4], state[name].chunk(5)[:4]
            assert all(torch.equal(a, b) for a, b in zip(value, expected)), name
        elif not name.startswith("net.heads.heads.long."):
            assert torch.equal(value, state[name]), name


def test_a_run_from_weights_starts_at_step_0(trained, train_config, tmp_path):
    _, run = train(train_config([*QUICK, "trainer.max_steps=1", "data.batch_size=1", f"init_from={trained}"],
                                output_dir=tmp_path))
    assert run["trainer"].global_step == 1  # a new run (another global batch than the checkpoint's: allowed)


def test_init_from_refuses_what_cannot_be_meant(trained, train_config, tmp_path):
    with pytest.raises(ConfigError, match="init_from and ckpt_path both set"):
        train(train_config([f"init_from={trained}", f"ckpt_path={trained}"], output_dir=tmp_path))
    with pytest.raises(CheckpointError, match="none of its .* tensors fits this model"):
        start_from_weights(torch.nn.Linear(2, 2), str(trained))


def test_another_kind_of_backbone_starts_afresh_and_a_resnet34_takes_the_resnet18_blocks(trained, train_config):
    """A ResNet-18's 3x3 block convolutions have the shapes of a ResNet-50's bottleneck middles, not their meaning."""
    saved = torch.load(trained, weights_only=True)["state_dict"]
    for arch, backbone_loaded in (("resnet50", False), ("resnet34", True)):
        model = _model(train_config, [f"backbone={arch}"])
        start_from_weights(model, str(trained))
        name = "net.backbone.stages.layer1.0.conv1.weight"
        same = name in saved and torch.equal(model.state_dict()[name], saved[name])
        assert same == backbone_loaded, arch
        assert torch.equal(model.state_dict()["net.heads.heads.bhm.weight"], saved["net.heads.heads.bhm.weight"])


def test_resnext_and_wide_resnet_blocks_are_kinds_of_their_own():
    """ResNeXt's grouped and Wide ResNet's doubled convolutions: a ResNet-50's tensors are no start for them, and
    ResNeXt-101 32x8d and 64x4d share every shape but their 3x3 convolutions'."""
    def spec(arch):
        return {"class": "strongpose.models.backbone.ResNetBackbone", "arch": arch}

    assert not _another_kind_of_backbone(spec("resnet50"), spec("resnet152"))
    for a, b in (("resnet50", "resnext50_32x4d"), ("resnet50", "wide_resnet50_2"),
                 ("resnext101_32x8d", "resnext101_64x4d")):
        assert _another_kind_of_backbone(spec(a), spec(b)), (a, b)
    assert not _another_kind_of_backbone(spec("resnext50_32x4d"), spec("resnext50_32x4d"))
    assert not _another_kind_of_backbone(spec("wide_resnet50_2"), spec("wide_resnet101_2"))  # the same blocks
    assert _another_kind_of_backbone(spec("wide_resnet101_2"), spec("resnet101"))


def test_a_skeleton_of_as_many_keypoints_gets_new_output_layers(trained, train_config, capsys):
    """17 keypoints in another order: the same shapes, other meanings (its heads' channels)."""
    names = list(COCO_PERSON.keypoints)
    names[1], names[2] = names[2], names[1]
    order = [COCO_PERSON.keypoints.index(n) for n in names]
    swapped = {"_target_": "strongpose.skeleton.Skeleton", "name": "swapped_eyes", "keypoints": names,
               "flip_pairs": [list(p) for p in COCO_PERSON.flip_pairs], "tree_edges": [list(e) for e in COCO_PERSON.tree_edges],
               "sigmas": [COCO_PERSON.sigmas[i] for i in order]}
    cfg = train_config([], output_dir="/unused")
    cfg.codec.skeleton = swapped
    model = instantiate(cfg.model, codec=instantiate(cfg.codec))
    start_from_weights(model, str(trained))
    saved = torch.load(trained, weights_only=True)["state_dict"]
    state = model.state_dict()
    assert not torch.equal(state["net.heads.heads.skhm.weight"], saved["net.heads.heads.skhm.weight"])
    assert torch.equal(state["net.heads.convs.0.weight"], saved["net.heads.convs.0.weight"])
    assert torch.equal(state["net.heads.heads.bhm.weight"], saved["net.heads.heads.bhm.weight"])
    assert "another skeleton: the heads' output layers" in capsys.readouterr().out


def test_a_skeleton_with_an_edge_moved_gets_new_output_layers(trained, train_config, capsys):
    """The same keypoints and number of edges, two joining other keypoints: the mid-range channels mean others."""
    edges = [list(e) for e in COCO_PERSON.tree_edges]
    for side in ("left", "right"):  # (the edges must stay left/right symmetric)
        edges[edges.index([f"{side}_shoulder", f"{side}_hip"])] = ["nose", f"{side}_hip"]
    moved = {"_target_": "strongpose.skeleton.Skeleton", "name": COCO_PERSON.name, "keypoints": list(COCO_PERSON.keypoints),
             "flip_pairs": [list(p) for p in COCO_PERSON.flip_pairs], "tree_edges": edges,
             "redundant_edges": [list(e) for e in COCO_PERSON.redundant_edges], "sigmas": list(COCO_PERSON.sigmas)}
    cfg = train_config([], output_dir="/unused")
    cfg.codec.skeleton = moved
    model = instantiate(cfg.model, codec=instantiate(cfg.codec))
    start_from_weights(model, str(trained))
    saved = torch.load(trained, weights_only=True)["state_dict"]
    mid = "net.heads.heads.mid.weight"
    assert model.state_dict()[mid].shape == saved[mid].shape and not torch.equal(model.state_dict()[mid], saved[mid])
    assert "another skeleton: the heads' output layers" in capsys.readouterr().out


def test_a_requeued_run_resumes_its_own_checkpoint_not_init_from(trained, train_config, tmp_path, capsys):
    train(train_config([*QUICK, "trainer.max_epochs=-1", "trainer.max_steps=1", f"init_from={trained}"], output_dir=tmp_path))
    gone = tmp_path / "gone.ckpt"  # the file it started from need not be there any more
    _, run = train(train_config([*QUICK, "trainer.max_epochs=-1", "trainer.max_steps=2", f"init_from={gone}"],
                                output_dir=tmp_path))
    assert run["trainer"].global_step == 2
    assert f"init_from={gone} not loaded: this run resumes its own checkpoint" in capsys.readouterr().out
