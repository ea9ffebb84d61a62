"""Host time per ``Trainer.fit`` step outside the model: Lightning's loop, callbacks, logging.

On a fast GPU a small batch's step is limited by the host (experiments/RESULTS.md, "Sixteenth session"), and
every millisecond of Python that the loop adds to a step adds to the step's time there: the H200 ran ResNet-50
bf16 at batch 16 in 44-47 ms per step in bench_train's bare loop and 50-52 ms through ``Trainer.fit``. This
runs a real ``Trainer.fit`` of the GPU preset (``trainer=gpu``: its callbacks and logging interval; fp32 on a
CPU) with a tiny network and input, so that the host's part is large, and splits each step's wall time into:

- ``forward``, ``losses``, ``backward``, ``optimizer`` (the fused AdamW kernel), ``averaging`` (the EMA and
  BatchNorm-snapshot kernels, ``torch._foreach_*``), ``data`` (the loader's ``__next__``, in this process:
  ``data.num_workers=0``): the model's and the data's work, which a GPU or the workers take over;
- ``loop_ms``: the rest, Python on the host whatever the device; of it ``log_ms``, the ``LightningModule.log``
  calls (each goes through Lightning's result collection), and ``zero_grad_ms``.

Medians over the steps after the first 12 (warm-up)::

    python experiments/loop_overhead.py                       # the GPU preset's logging interval (50)
    python experiments/loop_overhead.py trainer.log_every_n_steps=1

The last line:

    forward=... losses=... backward=... optimizer=... averaging=... data=... wall=... loop_ms=X log_ms=Y zero_grad_ms=Z
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ["WANDB_MODE"] = "disabled"

import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.utils.data.dataloader as dataloader  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from strongpose.lit_module import StrongPoseModule  # noqa: E402
from strongpose.train import CONFIG_DIR, train  # noqa: E402

SMALL = ("trainer=gpu", "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.benchmark=false",
         "logger=none", "backbone=resnet18", "data.input_size=64", "data.batch_size=2", "data.num_workers=0",
         "trainer.check_val_every_n_epoch=1000", "trainer.enable_model_summary=false", "trainer.max_epochs=15",
         "+callbacks.step_timer._target_=loop_overhead.StepTimer")
WORK = ("forward", "losses", "backward", "optimizer", "averaging", "data")
HOST = ("log", "zero_grad")
SKIP = 12  # warm-up steps

_spent: dict[str, float] = defaultdict(float)  # seconds per part in the step under way


def _timed(owner, name: str, part: str) -> Callable[[], None]:
    """Wrap ``owner.name`` so that its time adds to ``part``; returns what undoes it."""
    function = getattr(owner, name)

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            _spent[part] += time.perf_counter() - start

    setattr(owner, name, wrapper)
    return lambda: setattr(owner, name, function)


@contextlib.contextmanager
def instrumented():
    """The parts' functions timed inside the block (process-wide), put back after it."""
    parts = [(StrongPoseModule, "forward", "forward"), (StrongPoseModule, "losses", "losses"),
             (torch.autograd, "backward", "backward"), (torch, "_fused_adamw_", "optimizer"),
             (torch, "_foreach_lerp_", "averaging"),  # the EMA update
             (torch, "_foreach_copy_", "averaging"),  # the BatchNorm snapshot
             (dataloader._BaseDataLoaderIter, "__next__", "data"),
             (L.LightningModule, "log", "log"), (torch.optim.Optimizer, "zero_grad", "zero_grad")]
    undo = []
    try:
        for owner, name, part in parts:
            undo.append(_timed(owner, name, part))
        yield
    finally:
        for restore in reversed(undo):
            restore()


class StepTimer(L.Callback):
    """Each step's wall time (from one ``on_train_batch_start`` to the next) and its parts."""

    def __init__(self) -> None:
        self.steps: list[tuple[float, dict[str, float]]] = []
        self._start: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._start is not None:
            self.steps.append((now - self._start, dict(_spent)))
        _spent.clear()
        self._start = time.perf_counter()


def parse_args(argv: list[str]) -> list[str]:
    """The Hydra overrides in ``argv``; ``--help`` answered here (given to Hydra's compose it was a parse error)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=f"Prints the medians in ms over the steps after the first {SKIP}; the last "
                                       "line: forward=... wall=... loop_ms=X log_ms=Y zero_grad_ms=Z steps=N")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="Hydra overrides of the training config, after the script's own (the GPU preset with a tiny "
                        "ResNet-18 on the CPU), e.g. backbone=resnet50 trainer.log_every_n_steps=1")
    return p.parse_args(argv).overrides


def main(overrides: list[str] | None = None) -> dict[str, float]:
    overrides = parse_args(sys.argv[1:] if overrides is None else list(overrides))
    torch.set_num_threads(1)
    sys.modules["loop_overhead"] = sys.modules[__name__]  # StepTimer, named in the config: this module's
    with (tempfile.TemporaryDirectory() as out, initialize_config_dir(str(CONFIG_DIR), version_base="1.3"),
          instrumented()):
        cfg = compose("train", overrides=[*SMALL, f"paths.output_dir={out}", *overrides])
        _, objects = train(cfg)
    (timer,) = [c for c in objects["callbacks"] if type(c).__name__ == "StepTimer"]
    steps = timer.steps[SKIP:]
    if not steps:
        raise SystemExit(f"only {len(timer.steps)} steps: more than {SKIP} are needed (trainer.max_epochs)")

    def median_ms(values) -> float:
        return statistics.median(values) * 1000

    result = {name: median_ms(spent.get(name, 0.0) for _, spent in steps) for name in (*WORK, *HOST)}
    result["wall"] = median_ms(w for w, _ in steps)
    result["loop_ms"] = median_ms(w - sum(spent.get(name, 0.0) for name in WORK) for w, spent in steps)
    print(" ".join(f"{name}={result[name]:.2f}" for name in (*WORK, "wall", "loop_ms"))
          + f" log_ms={result['log']:.2f} zero_grad_ms={result['zero_grad']:.2f} steps={len(steps)}", flush=True)
    return result


if __name__ == "__main__":
    main()
