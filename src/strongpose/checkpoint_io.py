"""Lightning checkpoint I/O for training runs: atomic writes, reads through :func:`read_checkpoint`."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol

from strongpose.checkpoint import read_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O that never leaves a half-written checkpoint, and reads with
    :func:`read_checkpoint` (``weights_only=True``, a message naming a truncated or foreign file).

    Lightning's own ``_atomic_save`` (2.6) writes through an fsspec transaction whose temporary file is
    made by ``tempfile.mkstemp()`` in the *system* temp folder, then ``shutil.move``d: when that folder is
    on another filesystem than the run (tmpfs, node-local /tmp on a cluster) the move is a copy into
    ``last.ckpt`` itself, so a crash during it leaves a truncated ``last.ckpt``; nothing is fsynced
    either. Here a local checkpoint goes to a temporary file in the same folder, is fsynced, then
    ``os.replace``d over the target (atomic on POSIX and Windows); other URLs use Lightning's path.
    A process killed while writing leaves a hidden ``.<name>.<random>.tmp`` beside the target, never a
    broken target; the next write into that folder removes it, whatever its target (each kill of a requeued job
    left one: up to a whole checkpoint, hidden from ``ls``; a top-k name never comes again). Only rank 0 writes
    a run's checkpoints, one at a time, so no other write's temporary is in progress then.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(".*.????????.tmp"):  # killed writes' (one pattern: no cache grows per name)
            with contextlib.suppress(OSError):
                stale.unlink()
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "xb") as file:  # "x": mode 0o666 minus the umask, like a plain open
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _fsync_folder(path.parent)  # the rename itself survives a power cut

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        if weights_only is False or not _is_local_file_protocol(path):  # an explicit opt-out, or a URL
            return super().load_checkpoint(path, map_location or "cpu", weights_only=weights_only)
        return read_checkpoint(path, map_location or "cpu")


def _fsync_folder(folder: Path) -> None:
    if os.name != "posix":  # Windows cannot open a folder; its os.replace is durable enough
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
