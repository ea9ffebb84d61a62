"""Whether the code runs inside a graph capture, where Python-side checks and caches must step aside."""

from __future__ import annotations

import torch


def capturing() -> bool:
    """Tracing (TorchScript), compiling or exporting: no data-dependent Python checks, no Python-side caches
    (the captured graph would bake in one branch or one cached tensor)."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()
