"""Training throughput: the full StrongPose step next to the bare backbone, in one run.

Full step = next batch from the data pipeline (decode JPEG, augment, encode targets in the workers) +
host-to-device copy + forward (backbone, neck, heads) + losses + backward + AdamW step.
Bare step = the torchvision ResNet trunk alone (to C5, no neck, no heads, no data loading) forward +
backward of a dummy loss + AdamW step, on a batch of the same shape already on the device.
The two alternate in blocks and each block's images/s is kept; the medians are reported. The last
line is ``... full_ips=X bare_ips=Y ratio=Z ...``.

    python experiments/bench_train.py --backbone resnet18 --input 256 --batch 8
    python experiments/bench_train.py --backbone resnet50 --input 512 --batch 32 --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import os
import statistics
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
from lightning.fabric.utilities.apply_func import move_data_to_device  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
import torchvision  # noqa: E402

from strongpose.codec import StrongPoseCodec  # noqa: E402
from strongpose.data.datamodule import COCOKeypointDataModule  # noqa: E402
from strongpose.lit_module import StrongPoseModule  # noqa: E402
from strongpose.train import CONFIG_DIR  # noqa: E402


class EndlessSampler(torch.utils.data.Sampler):
    """Shuffled (index, epoch) pairs over a small dataset, forever (the dataset's augmentation seed)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return 2**31 - 1

    def __iter__(self):
        for epoch in itertools.count():
            for i in torch.randperm(self.size, generator=torch.Generator().manual_seed(epoch)).tolist():
                yield i, epoch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def timed_block(step, steps: int, images: int, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * images / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="resnet18", choices=["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
    p.add_argument("--input", type=int, default=256, help="square input size")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--stride", type=int, default=8)
    p.add_argument("--steps", type=int, default=3, help="steps per timed block")
    p.add_argument("--rounds", type=int, default=3, help="timed blocks of each kind")
    p.add_argument("--workers", type=int, default=2, help="data-loading worker processes")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="32", choices=["32", "bf16"])
    p.add_argument("--channels-last", action="store_true")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)

    codec = StrongPoseCodec(stride=args.stride)
    data = COCOKeypointDataModule(codec, input_size=args.input, batch_size=args.batch, num_workers=args.workers,
                                  pin_memory=device.type == "cuda", persistent_workers=args.workers > 0)
    data.setup("fit")
    # the embedded sample holds 11 training images: draw (index, epoch) pairs endlessly, so that batches
    # of any size are full and the workers never wait for an epoch boundary
    loader = data._loader(data.train_dataset, args.batch, EndlessSampler(len(data.train_dataset)))
    batches = iter(loader)

    # backbone (neck width) and heads as the training config builds them
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"backbone={args.backbone}", f"codec.stride={args.stride}"])
    module = StrongPoseModule(codec, instantiate(cfg.backbone), optimizer=functools.partial(torch.optim.AdamW),
                              heads=OmegaConf.to_container(cfg.model.heads), batch_size=args.batch).to(device)
    bare = torchvision.models.get_model(args.backbone)
    bare = torch.nn.Sequential(*list(bare.children())[:-2]).to(device)  # trunk to C5: no pooling, no classifier
    if args.channels_last:
        module, bare = module.to(memory_format=torch.channels_last), bare.to(memory_format=torch.channels_last)
    opt_full = torch.optim.AdamW(module.parameters(), lr=1e-4)
    opt_bare = torch.optim.AdamW(bare.parameters(), lr=1e-4)
    module.train()
    bare.train()

    def full_step() -> None:
        batch = move_data_to_device(next(batches), device)
        with autocast(device, args.precision):
            outputs = module(batch["image"])
        losses = module.losses({k: v.float() for k, v in outputs.items()}, batch["targets"])
        opt_full.zero_grad(set_to_none=True)
        losses["total"].backward()
        opt_full.step()

    fixed = next(batches)["image"].to(device)
    if args.channels_last:
        fixed = fixed.contiguous(memory_format=torch.channels_last)

    def bare_step() -> None:
        with autocast(device, args.precision):
            out = bare(fixed)
        opt_bare.zero_grad(set_to_none=True)
        out.float().mean().backward()
        opt_bare.step()

    for step in (full_step, bare_step):  # warm-up: workers start, kernels are chosen, memory is allocated
        step()
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    full, bare_ips = [], []
    for _ in range(args.rounds):
        full.append(timed_block(full_step, args.steps, args.batch, device))
        bare_ips.append(timed_block(bare_step, args.steps, args.batch, device))
    result = {"full_ips": statistics.median(full), "bare_ips": statistics.median(bare_ips)}
    result["ratio"] = result["full_ips"] / result["bare_ips"]
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    print(f"device={name.replace(' ', '_')} backbone={args.backbone} input={args.input} batch={args.batch} "
          f"precision={args.precision} workers={args.workers} full_ips={result['full_ips']:.2f} "
          f"bare_ips={result['bare_ips']:.2f} ratio={result['ratio']:.3f} peak_mem_gb={peak:.2f}")
    return result


if __name__ == "__main__":
    main()
