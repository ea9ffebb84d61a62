"""The fused heads compute what separate per-head stacks compute, and load checkpoints written with those."""

import math

import pytest
import torch
from torch import nn

from strongpose.models.heads import HEATMAP_HEADS, Heads, fuse_separate_heads
from strongpose.op_count import CountOps

CHANNELS = {"skhm": 17, "bhm": 1, "short": 34, "mid": 80, "long": 34}


def separate_heads(in_channels, channels, num_convs, width, kernel_size=3):
    """StrongPose's heads before fusing, written out: one Sequential per head, (conv, BN, ReLU) x num_convs, 1x1."""
    heads = nn.ModuleDict()
    for name, out in channels.items():
        layers, w = [], in_channels
        for _ in range(num_convs):
            layers += [nn.Conv2d(w, width, kernel_size, padding=kernel_size // 2, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            w = width
        heads[name] = nn.Sequential(*layers, nn.Conv2d(w, out, 1))
    return heads


def _randomise(module):
    """Every parameter and BatchNorm statistic non-trivial, so that a misplaced channel shows."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5 if name.endswith("running_var") else torch.randn_like(tensor))
            else:
                tensor.fill_(7)


@pytest.mark.parametrize("num_convs", [0, 1, 2])
def test_fused_heads_equal_separate_stacks_loaded_from_their_state_dict(num_convs):
    """A checkpoint of separate stacks (``heads.<name>.<i>.*``) loads into the fused heads, which then give the
    same outputs, input gradient, parameter gradients and BatchNorm statistics, in training and evaluation."""
    separate = nn.Module()
    separate.heads = separate_heads(16, CHANNELS, num_convs, width=8)
    _randomise(separate)
    fused = Heads(16, CHANNELS, num_convs=num_convs, width=8)
    fused.load_state_dict(separate.state_dict())  # strict: every tensor has its place
    x = torch.randn(2, 16, 6, 5)
    for train in (True, False):
        separate.train(train), fused.train(train)
        xs, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
        want = {name: head(xs) for name, head in separate.heads.items()}
        got = fused(xf)
        assert list(got) == list(CHANNELS)
        for name in CHANNELS:
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5)
        sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in want.values()).backward()
        sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in got.values()).backward()
        torch.testing.assert_close(xf.grad, xs.grad, rtol=1e-5, atol=1e-5)
    again = fuse_separate_heads(separate.state_dict())  # gradients and statistics, by the same mapping
    for key, value in fused.state_dict().items():
        torch.testing.assert_close(value, again[key], rtol=1e-5, atol=1e-5)
    grads = fuse_separate_heads({k: p.grad for k, p in separate.named_parameters()})
    for key, p in fused.named_parameters():
        torch.testing.assert_close(p.grad, grads[key], rtol=1e-4, atol=1e-4)  # sums of large random terms


def test_no_head_reads_another_heads_channels():
    heads = Heads(8, CHANNELS, num_convs=2, width=4).train()
    x = torch.randn(2, 8, 5, 5, requires_grad=True)
    heads(x)["bhm"].sum().backward()
    grads = {name: p.grad for name, p in heads.named_parameters() if p.grad is not None}
    assert not any(name.startswith("heads.") and name != "heads.bhm.weight" and name != "heads.bhm.bias"
                   for name in grads)
    bhm = list(CHANNELS).index("bhm")
    for layer in (heads.convs[0], heads.convs[3]):
        touched = layer.weight.grad.flatten(1).abs().sum(1).nonzero().flatten()
        assert set(touched.tolist()) <= set(range(bhm * 4, bhm * 4 + 4))


def test_initial_outputs_heatmaps_at_the_prior_offsets_near_zero():
    heads = Heads(8, CHANNELS, heatmap_prior=0.01)
    for name, layer in heads.heads.items():
        if name in HEATMAP_HEADS:
            assert torch.allclose(layer.bias, torch.full_like(layer.bias, math.log(0.01 / 0.99)))
        else:
            assert layer.weight.abs().max() < 0.01 and not layer.bias.any()


def test_the_stack_is_one_operation_per_layer_whatever_the_number_of_heads():
    """What fusing is for: the operations a forward pass queues do not grow with the heads but for the last
    layer (one conv each)."""
    x = torch.randn(1, 8, 4, 4)
    counts = {}
    for n in (2, 5):
        heads = Heads(8, dict(list(CHANNELS.items())[:n]), num_convs=2, width=4).train()
        with CountOps() as ops:
            heads(x)
        counts[n] = ops.ops["aten.convolution.default"], ops.ops["aten.native_batch_norm.default"]
    assert counts == {2: (2 + 2, 2), 5: (2 + 5, 2)}


def test_a_state_of_uneven_separate_stacks_is_refused():
    separate = nn.Module()
    separate.heads = separate_heads(4, {"skhm": 2, "bhm": 1}, 1, width=2)
    state = separate.state_dict()
    state["heads.bhm.6.weight"] = state.pop("heads.bhm.3.weight")
    with pytest.raises(ValueError, match="unequal depth"):
        fuse_separate_heads(state)


def _separate_and_outputs(channels, num_convs=2, width=4, seed=0):
    separate = nn.Module()
    separate.heads = separate_heads(8, channels, num_convs, width)
    _randomise(separate)
    separate.eval()
    x = torch.randn(2, 8, 5, 4, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return separate, x, {name: head(x) for name, head in separate.heads.items()}


def test_separate_stacks_load_in_the_codecs_order_whatever_the_order_of_their_keys():
    """A tool that sorts a state dict's keys must not wire a head's output layer to another head's channels."""
    separate, x, want = _separate_and_outputs(CHANNELS)
    fused = Heads(8, CHANNELS, num_convs=2, width=4)
    fused.load_state_dict(dict(sorted(separate.state_dict().items())))
    with torch.no_grad():
        got = fused.eval()(x)
    for name in CHANNELS:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5)


def test_a_checkpoint_with_more_heads_gives_each_head_its_own_channels():
    """codec.long_range on when the checkpoint was written, off now: the other heads keep their layers, in the
    old layout (separate stacks) and in the fused one."""
    separate, x, want = _separate_and_outputs(CHANNELS)
    without_long = {name: c for name, c in CHANNELS.items() if name != "long"}
    five = Heads(8, CHANNELS, num_convs=2, width=4)
    five.load_state_dict(separate.state_dict())
    for state in (separate.state_dict(), five.state_dict()):
        four = Heads(8, without_long, num_convs=2, width=4)
        missing, unexpected = four.load_state_dict(state, strict=False)
        assert not missing and unexpected == ["heads.long.weight", "heads.long.bias"]
        with torch.no_grad():
            got = four.eval()(x)
        for name in without_long:
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5)


def test_channels_last_gives_the_same_outputs_in_channels_last():
    heads = Heads(8, CHANNELS, num_convs=2, width=4).train()
    x = torch.randn(2, 8, 5, 4)
    want = heads(x)
    got = heads.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    for name in CHANNELS:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5)
        assert got[name].is_contiguous(memory_format=torch.channels_last)
