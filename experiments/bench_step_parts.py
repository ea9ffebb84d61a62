"""Where a training step's time goes beyond the bare backbone: milliseconds per step of its parts, in one run.

bench_train.py compares the full step with the bare trunk; this splits the difference, per configuration:

  bare_ms       the torchvision trunk alone: forward + backward + the training config's AdamW (fused) on a
                batch already on the device (as bench_train's bare step)
  net_ms        StrongPose's network + losses + backward + torch's default AdamW (foreach on CUDA) on a
                fixed batch already on the device (no data loading)
  fused_ms      net_ms with the config's AdamW(fused=True): fused_ms / bare_ms is the network's own ratio
  issue_ms      host time to queue one fused step (no synchronisation; a CUDA device only runs ahead of the
                host when issue_ms < net_ms; issue_ms ~ net_ms means the step is launch-bound)
  loader_ms     the data module's loader alone in this process (workers, pinned memory, host-to-device
                copy): next batch + copy (+ the device part of the targets with ``--encode-on device``)
  full_ms       loader + network + losses + backward + fused AdamW: bench_train's full step
  wait_ms       of full_ms, the host time spent getting the batch (blocked on the loader, copying, and with
                ``--encode-on device`` queuing the device part of the targets)
  fit_ms        the same training through Lightning's Trainer.fit: the module's own training_step (non-finite
                guard, BatchNorm snapshot, logging) and the training config's per-step callbacks (progress
                bar, EMA, images/s meter), after a warm-up; once per configuration, after the other parts

The loader and full blocks start after the batches the workers made ahead are taken and as many untimed
steps are run (bench_train.into_steady_state): they time the rate batches are produced at while the step
runs. ``--collate packed default`` compares the data module's batches (3 shared-memory storages) with
torch's default_collate (13), ``--sharing file_descriptor file_system`` torch.multiprocessing's two ways for
workers to hand storages over (experiments/probe_loader_gil.py: with file_descriptor the receiving thread
takes the GIL per storage), ``--encode-on worker device`` the data module's two places for the keypoint
targets. ``--compile [MODE]`` compiles both networks as bench_train's does (the parts after warm-up steps that
pay the compilation; ``fit_ms`` with the same compiled network, as ``callbacks.compile.enabled=true``).

Blocks of ``--steps`` steps, ``--rounds`` rounds alternating the parts, medians reported; one line per
configuration, the last being the last configuration's:

    device=... backbone=resnet50 input=512 batch=8 precision=bf16 workers=14 sharing=file_descriptor
    collate=packed encode_on=worker bare_ms=.. net_ms=.. fused_ms=.. issue_ms=.. loader_ms=.. full_ms=.. wait_ms=.. fit_ms=..

    python experiments/bench_step_parts.py --backbone resnet50 --input 512 --batch 8 16 --precision bf16 \\
        --workers 14 --steps 20 --rounds 3
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from lightning.fabric.utilities.apply_func import move_data_to_device  # noqa: E402

from strongpose.codec import StrongPoseCodec  # noqa: E402


import bench_train as bt  # noqa: E402 - its model builders and timers (experiments/ is on sys.path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", nargs="+", default=["resnet50"], choices=bt.BACKBONES)
    p.add_argument("--input", type=int, default=512)
    p.add_argument("--batch", type=int, nargs="+", default=[8])
    p.add_argument("--precision", nargs="+", default=["bf16"], choices=["32", "bf16"])
    p.add_argument("--stride", type=int, default=8)
    p.add_argument("--steps", type=int, default=20,
                   help="steps per timed block, rounded up to a multiple of --workers (bench_train.whole_waves)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--channels-last", action="store_true")
    bt.add_override_argument(p)
    bt.add_compile_argument(p)  # fit_ms then runs the compiled network too, as callbacks.compile.enabled=true does
    p.add_argument("--sharing", nargs="+", default=[torch.multiprocessing.get_sharing_strategy()],
                   choices=sorted(torch.multiprocessing.get_all_sharing_strategies()),
                   help="how workers hand tensors over (torch.multiprocessing); each is measured in turn")
    p.add_argument("--collate", nargs="+", default=["packed"], choices=["packed", "default"],
                   help="the data module's packed collate (3 storages a batch) or torch's default_collate (13)")
    p.add_argument("--encode-on", nargs="+", default=["worker"], choices=["worker", "device"],
                   help="data.encode_on: keypoint targets encoded in the workers, or on the device after the copy")
    return p.parse_args(argv)


def ms_per_step(step, steps: int, device: torch.device) -> float:
    return 1000.0 * steps / bt.timed_block(step, steps, steps, device)[0]


def issue_ms(step, steps: int, device: torch.device) -> float:
    """Median host time of one call of ``step`` with no synchronisation inside the timed call."""
    times = []
    for _ in range(steps):
        bt.sync(device)  # an empty queue: the call's own launches only
        t0 = time.perf_counter()
        step()
        times.append(1000.0 * (time.perf_counter() - t0))
    bt.sync(device)
    return statistics.median(times)


class _StepClock(L.Callback):
    """Wall time of the training steps after the first ``warmup`` (synchronised at both ends)."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device, self.t0, self.seconds, self.steps = warmup, device, 0.0, float("nan"), 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            bt.sync(self.device)
            self.t0 = time.perf_counter()

    def on_train_end(self, trainer, module) -> None:
        bt.sync(self.device)
        self.seconds, self.steps = time.perf_counter() - self.t0, trainer.global_step - self.warmup


def fit_ms(module, codec: StrongPoseCodec, batch_size: int, precision: str, args: argparse.Namespace,
           device: torch.device, encode_on: str = "worker", collate=None) -> float:
    """ms per step of ``Trainer.fit`` on the endless loader with the training config's per-step callbacks."""
    with bt.initialize_config_dir(str(bt.CONFIG_DIR), version_base="1.3"):
        cfg = bt.compose("train")
    callbacks = [bt.instantiate(cfg.callbacks[name]) for name in ("progress_bar", "ema", "images_per_sec")]
    # past the batches the workers make ahead while the trainer starts (as the other parts drain them)
    warmup, steps = 5 + 2 * args.workers, bt.whole_waves(args.steps * args.rounds, args.workers)
    clock = _StepClock(warmup, device)
    trainer = L.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                        precision="bf16-mixed" if precision == "bf16" else "32-true", max_steps=warmup + steps,
                        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, callbacks=[*callbacks, clock])
    loader, data = bt.endless_loader(codec, batch_size, args, device, encode_on, collate)
    data.train_dataloader = lambda: loader  # the data module's hooks (finish_targets) with the endless loader
    trainer.fit(module, datamodule=data)
    return 1000.0 * clock.seconds / clock.steps


def measure(backbone: str, precision: str, batch_size: int, sharing: str, collate: str,
            args: argparse.Namespace, encode_on: str = "worker") -> dict[str, float]:
    torch.multiprocessing.set_sharing_strategy(sharing)  # before this configuration's workers start
    stack = torch.utils.data.default_collate if collate == "default" else None  # None: the data module's own
    device = torch.device(args.device)
    codec = StrongPoseCodec(stride=args.stride)
    batches, finish = bt.endless_batches(codec, batch_size, args, device, encode_on, stack)
    module, bare, fused_optimizer, bare_optimizer = bt.build_models(backbone, args, codec, device)  # fused
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4, fused=False)  # torch's default: foreach on CUDA
    fixed = finish(move_data_to_device(next(batches), device))

    waited = [0.0]  # host seconds spent in load() (blocked on the loader, or copying)

    def load() -> dict:
        t0 = time.perf_counter()
        batch = finish(move_data_to_device(next(batches), device))
        waited[0] += time.perf_counter() - t0
        return batch

    full = bt.full_step_fn(module, fused_optimizer, load, device, precision)
    net = bt.full_step_fn(module, optimizer, lambda: fixed, device, precision)
    fused = bt.full_step_fn(module, fused_optimizer, lambda: fixed, device, precision)
    trunk_input = bt.PixelNormalize().to(device)(fixed["image"])

    def bare_step() -> None:
        with bt.autocast(device, precision):
            out = bare(trunk_input)
        bare_optimizer.zero_grad(set_to_none=True)
        out.float().mean().backward()
        bare_optimizer.step()

    parts = {"bare": bare_step, "net": net, "fused": fused, "loader": load, "full": full}
    for step in parts.values():  # warm-up: workers start, kernels are chosen, memory is allocated
        step()
        step()
    times: dict[str, list[float]] = {name: [] for name in parts}
    issue, wait = [], []
    steps = bt.whole_waves(args.steps, args.workers)
    for _ in range(args.rounds):
        for name, step in parts.items():
            if name in ("loader", "full"):  # steady state: not the stock made while other parts ran
                bt.into_steady_state(step, batches, args.workers)
            waited[0] = 0.0
            times[name].append(ms_per_step(step, steps, device))
            if name == "full":
                wait.append(1000.0 * waited[0] / steps)
        issue.append(issue_ms(fused, steps, device))
    result = {f"{name}_ms": statistics.median(values) for name, values in times.items()}
    del batches  # its workers; fit starts its own
    result["fit_ms"] = fit_ms(module, codec, batch_size, precision, args, device, encode_on, stack)
    result["issue_ms"] = statistics.median(issue)
    result["wait_ms"] = statistics.median(wait)
    print(f"device={bt.device_name(device)} backbone={backbone} input={args.input} batch={batch_size} "
          f"precision={precision} workers={args.workers} sharing={sharing} collate={collate} encode_on={encode_on} "
          + (f"compile={args.compile} " if args.compile else "") + "".join(f"{item} " for item in args.override)
          + " ".join(f"{key}={result[key]:.1f}" for key in
                     ("bare_ms", "net_ms", "fused_ms", "issue_ms", "loader_ms", "full_ms", "wait_ms", "fit_ms")), flush=True)
    del module, bare, optimizer, bare_optimizer, fused_optimizer, parts, full, net, fused, fixed
    bt.release(device)
    return result


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    result: dict[str, float] = {}
    default = torch.multiprocessing.get_sharing_strategy()
    torch.backends.cudnn.benchmark = True  # as trainer=gpu runs
    try:
        for backbone, precision, batch, sharing, collate, encode_on in itertools.product(
                args.backbone, args.precision, args.batch, args.sharing, args.collate, args.encode_on):
            result = measure(backbone, precision, batch, sharing, collate, args, encode_on)
    finally:  # this process's other users (a test session) get torch's own back
        torch.multiprocessing.set_sharing_strategy(default)
    return result


if __name__ == "__main__":
    main()
