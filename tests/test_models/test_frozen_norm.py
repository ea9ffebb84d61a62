"""CachedFrozenBatchNorm2d: torchvision's FrozenBatchNorm2d, bit for bit, with fewer operations a call."""

import copy
import functools
import gc
import pickle
import weakref

import pytest
import torch
import torch.distributed as dist
from torchvision.ops import FrozenBatchNorm2d

from strongpose.codec import StrongPoseCodec
from strongpose.lit_module import StrongPoseModule
from strongpose.models.backbone import ResNetBackbone
from strongpose.models.frozen_norm import CachedFrozenBatchNorm2d, frozen_buffer_names
from strongpose.op_count import CountOps


def random_pair(channels: int = 6, seed: int = 0):
    """torchvision's layer and ours, with the same random statistics and affine."""
    reference, cached = FrozenBatchNorm2d(channels), CachedFrozenBatchNorm2d(channels)
    g = torch.Generator().manual_seed(seed)
    for name in ("weight", "bias", "running_mean"):
        getattr(reference, name).copy_(torch.randn(channels, generator=g))
    reference.running_var.copy_(torch.rand(channels, generator=g) + 0.1)
    cached.load_state_dict(reference.state_dict())
    return reference, cached


def outputs_and_input_grads(layer, x):
    x = x.clone().requires_grad_()
    y = layer(x)
    (y.float() * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
    return y.detach(), x.grad


@pytest.mark.parametrize("autocast", [False, True])
def test_outputs_and_gradients_are_torchvisions_bit_for_bit(autocast):
    reference, cached = random_pair()
    x = torch.randn(3, 6, 5, 7, dtype=torch.bfloat16 if autocast else torch.float32)  # as a conv gives it
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        expected = outputs_and_input_grads(reference, x)
        for _ in range(2):  # the first call fills the cache, the second reads it
            got = outputs_and_input_grads(cached, x)
            assert got[0].dtype == expected[0].dtype
            assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_a_cached_call_queues_two_operations_where_torchvision_queues_eleven():
    reference, cached = random_pair()
    x = torch.randn(2, 6, 4, 4)
    counts = {}
    for name, layer in (("torchvision", reference), ("cached", cached)):
        layer(x)
        with CountOps() as ops:
            layer(x)
        counts[name] = ops.total
    assert counts == {"torchvision": 11, "cached": 2}


def test_the_cache_follows_every_change_of_the_buffers():
    reference, cached = random_pair()
    x = torch.randn(2, 6, 4, 4)

    def check():
        assert torch.equal(cached(x), reference(x))

    check()
    other, _ = random_pair(seed=1)
    for layer in (reference, cached):  # in place, as a checkpoint or an EMA copy loads
        layer.load_state_dict(other.state_dict())
    check()
    for layer in (reference, cached):
        layer.running_var.mul_(2.0)  # in place on one buffer
    check()
    for layer in (reference, cached):
        layer.bias = torch.full((6,), 0.5)  # a new tensor
    check()
    reference, cached = reference.double(), cached.double()  # new tensors of another dtype
    x = x.double()
    check()
    for layer in (reference, cached):
        layer.eps = 1e-3
    check()
    for layer in (reference, cached):
        layer.running_mean.data = torch.full((6,), -0.25, dtype=torch.float64)  # new storage, no version bump
    check()
    for layer in (reference, cached):  # assign=True with swapping: same objects, versions back to 0
        torch.utils.swap_tensors(layer.weight, torch.linspace(0.5, 2.0, 6, dtype=torch.float64))
    check()


def test_a_copy_starts_without_the_cache_of_its_original():
    reference, cached = random_pair()
    x = torch.randn(2, 6, 4, 4)
    cached(x)  # cached at the buffers' current versions
    other, _ = random_pair(seed=1)
    for layer in (reference, cached):
        layer.load_state_dict(other.state_dict())  # one version later
    clone = copy.deepcopy(cached)  # copies start at version 1 or so: the cache must not come along
    assert torch.equal(clone(x), reference(x)) and torch.equal(cached(x), reference(x))
    # nor into another process (DDP spawn), where a buffer may get the old address and version 0 again
    assert pickle.loads(pickle.dumps(cached))._cached_from is None


def test_a_first_call_under_inference_mode_leaves_the_layer_trainable():
    reference, cached = random_pair()
    x = torch.randn(2, 6, 4, 4)
    with torch.inference_mode():  # trainer.validate, or the Predictor, before any training
        cached(x)
    assert torch.equal(outputs_and_input_grads(cached, x)[1], outputs_and_input_grads(reference, x)[1])


def test_moving_the_layer_frees_its_old_buffers():
    _, cached = random_pair()
    cached(torch.randn(2, 6, 4, 4))
    old = weakref.ref(cached.running_var)
    cached.double()
    gc.collect()
    assert old() is None


def test_buffers_made_in_inference_mode_and_traced_graphs_use_the_plain_formula():
    with torch.inference_mode():
        reference, cached = random_pair()  # inference tensors: no version counter
        x = torch.randn(2, 6, 4, 4)
        assert torch.equal(cached(x), reference(x))
    reference, cached = random_pair()
    x = torch.randn(2, 6, 4, 4)
    cached(x)  # a filled cache, which the trace must not bake in
    traced = torch.jit.trace(cached, x)
    for layer in (reference, cached):
        layer.running_var.mul_(3.0)  # a graph with a cached scale baked in would not see this
    assert torch.equal(traced(x), reference(x))


def test_buffers_that_require_grad_get_their_gradients():
    reference, cached = random_pair()
    x = torch.randn(2, 6, 4, 4)
    cached(x)  # a cache filled before
    for layer in (reference, cached):
        layer.weight.requires_grad_()
        layer(x).sum().backward()
    assert cached.weight.grad is not None and torch.equal(cached.weight.grad, reference.weight.grad)


def test_state_dict_is_torchvisions_and_batchnorm_weights_load():
    reference, cached = random_pair()
    assert list(cached.state_dict()) == list(reference.state_dict())
    batchnorm = torch.nn.BatchNorm2d(6)
    cached.load_state_dict(batchnorm.state_dict())  # ImageNet checkpoints: num_batches_tracked is dropped
    x = torch.randn(2, 6, 4, 4)
    assert torch.allclose(cached(x), batchnorm.eval()(x), atol=1e-6)


def test_the_backbones_frozen_layers_are_cached_and_ddp_leaves_their_buffers_alone(tmp_path):
    backbone = ResNetBackbone("resnet18", norm="frozen")
    module = StrongPoseModule(StrongPoseCodec(), backbone, optimizer=functools.partial(torch.optim.AdamW))
    frozen = [m for m in module.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert frozen and all(isinstance(m, CachedFrozenBatchNorm2d) for m in frozen)
    names = frozen_buffer_names(module)
    assert len(names) == 4 * len(frozen) and set(names) <= dict(module.named_buffers()).keys()
    assert module._ddp_params_and_buffers_to_ignore == names
    assert "net.backbone.smooth.1.running_mean" not in names  # the neck's BatchNorm still trains
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(module)
        synced = {id(b) for b in ddp.modules_buffers}
        assert not synced & {id(b) for m in frozen for b in m.buffers()}
        assert id(module.net.backbone.smooth[1].running_mean) in synced
    finally:
        dist.destroy_process_group()
    plain = StrongPoseModule(StrongPoseCodec(), ResNetBackbone("resnet18"), optimizer=torch.optim.AdamW)
    assert plain._ddp_params_and_buffers_to_ignore == []
