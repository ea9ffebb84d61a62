"""Frozen BatchNorm whose per-channel scale and shift are computed once, not in every forward pass."""

from __future__ import annotations

import torch
from torchvision.ops import FrozenBatchNorm2d

from strongpose.models.capture import capturing


class CachedFrozenBatchNorm2d(FrozenBatchNorm2d):
    """torchvision's :class:`~torchvision.ops.FrozenBatchNorm2d` (same buffers, state-dict keys and outputs)
    that keeps ``scale = weight * rsqrt(running_var + eps)`` and ``shift = bias - running_mean * scale`` from one
    forward pass to the next, computed as torchvision does: the output, ``x * scale + shift``, is bit-identical.

    torchvision recomputes both from the four buffers at every call: 11 operations (7 kernels) a layer in the
    forward pass where this takes 2 (``addcmul`` would take 1, but 2 in the backward pass, where this takes 1).
    ResNet-50 has 53 such layers, so a step queues 477 fewer operations; on a fast GPU at small batches the
    host, which queues them, is the limit (experiments/RESULTS.md, "Sixteenth session").

    The cache is rebuilt whenever a buffer was replaced (``.to()``, assignment, ``.data =``,
    ``torch.utils.swap_tensors``) or changed in place (``load_state_dict``, ``copy_``: each in-place change bumps a
    tensor's version counter), or ``eps`` changed; copies (``copy.deepcopy``, pickling) start without one. Writes
    through ``.data`` in place (``buffer.data.copy_(...)``) bump no version counter: they are not seen (Lightning's
    ``WeightAveraging``, under the EMA callback, swaps weights so; for these buffers it writes the values they
    already hold, the average of a constant). Not ``torch.jit.script``-able (tracing works). Buffers
    without a version counter (made under ``torch.inference_mode``) or that require grad, and traced, compiled or
    exported graphs use torchvision's formula.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__(num_features, eps)
        self._clear_cache()

    def _clear_cache(self) -> None:
        # what the cache was computed from: (buffers, their storages, data pointers, versions, eps); the storages
        # are kept alive so that no new buffer can be given the same address
        self._cached_from: tuple | None = None
        self._scale_shift: tuple[torch.Tensor, torch.Tensor] | None = None

    def _buffers_now(self) -> tuple | None:
        buffers = (self.weight, self.bias, self.running_mean, self.running_var)
        if any(b.requires_grad for b in buffers):  # someone trains them after all: a graph through the formula
            return None
        try:
            versions = tuple(b._version for b in buffers)
        except RuntimeError:  # an inference tensor: no version counter to tell a change by
            return None
        return buffers, tuple(b.data_ptr() for b in buffers), versions, self.eps

    def _cache_is_current(self, now: tuple) -> bool:
        cached = self._cached_from
        return (cached is not None and all(a is b for a, b in zip(cached[0], now[0]))
                and cached[2:] == now[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        now = None if capturing() else self._buffers_now()
        if now is None:
            return super().forward(x)
        if not self._cache_is_current(now):
            # constants: no graph through them (the buffers never require grad); and ordinary tensors even when
            # the first call comes under torch.inference_mode (validate, predict), which training could not save
            with torch.inference_mode(False), torch.no_grad():
                # torchvision's order of operations, so that the outputs are bit-identical
                scale = self.weight.reshape(1, -1, 1, 1) * (self.running_var.reshape(1, -1, 1, 1) + self.eps).rsqrt()
                shift = self.bias.reshape(1, -1, 1, 1) - self.running_mean.reshape(1, -1, 1, 1) * scale
            self._scale_shift = scale, shift
            buffers, pointers, versions, eps = now  # still current: reading the buffers bumps no version
            self._cached_from = (buffers, tuple(b.untyped_storage() for b in buffers), pointers, versions, eps)
        scale, shift = self._scale_shift
        return x * scale + shift

    def _apply(self, fn, recurse=True):
        self._clear_cache()  # new buffers (.to(), .half()): the old ones and the cache need not outlive them
        return super()._apply(fn, recurse)

    def __getstate__(self):
        state = super().__getstate__()  # copy.deepcopy and pickle: copies whose versions start anew
        state["_cached_from"] = state["_scale_shift"] = None
        return state


def frozen_buffer_names(module: torch.nn.Module) -> list[str]:
    """Names (as ``module.named_buffers()`` gives them) of the buffers of the frozen BatchNorm layers in
    ``module``. They never change in training, and every process starts with the same values (ImageNet weights,
    a checkpoint, or torchvision's constant initialisation), so DDP need not send them to the other processes
    before each forward pass, as it does with buffers (``_ddp_params_and_buffers_to_ignore``); on a process
    that receives them, that copy would also bump their versions and rebuild the layers' cache every step."""
    return [f"{name}.{buffer}" if name else buffer
            for name, layer in module.named_modules() if isinstance(layer, FrozenBatchNorm2d)
            for buffer, _ in layer.named_buffers(recurse=False)]
