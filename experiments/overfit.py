"""Overfit StrongPose on a few embedded sample images and measure COCO keypoint AP on them.

Trains on the validation view (resize-and-pad, no augmentation) of the first ``--images`` sample images
that hold people, so that the network can memorise exactly what it is evaluated on; then decodes its
outputs (Hough voting + Pose Plot) and evaluates with COCOeval. A working model must exceed AP 0.5.
Prints each loss term at the start and the end, the wall time, and, last:
``AP=... AP50=... loss_start=... loss_end=... steps=N wall_s=T``. ``main`` returns an :class:`OverfitRun`
(statistics, trained module, input size): experiments/overfit_checkpoint.py saves its module.

    python experiments/overfit.py                      # CPU, ResNet-18, 256 px
    python experiments/overfit.py --device cuda --input 512 --backbone resnet50
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import time
from typing import NamedTuple

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
from lightning.fabric.utilities.apply_func import move_data_to_device  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from strongpose.codec import StrongPoseCodec  # noqa: E402
from strongpose.data import COCOKeypointDataset, SkipBadCollate, sample_paths  # noqa: E402
from strongpose.data.coco import empty_sample  # noqa: E402
from strongpose.evaluation import evaluate_loader  # noqa: E402
from strongpose.lit_module import StrongPoseModule  # noqa: E402
from strongpose.models.backbone import ResNetBackbone  # noqa: E402


class OverfitRun(NamedTuple):  # not a dataclass: scripts are loaded from their path, outside sys.modules
    """What :func:`main` leaves: the statistics of its last line, the trained module, its input size."""

    stats: dict[str, float]
    module: StrongPoseModule
    input_size: int


def parser(add_help: bool = True) -> argparse.ArgumentParser:
    """This script's options (experiments/overfit_checkpoint.py takes them too, and lists them in its --help)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=add_help)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--input", type=int, default=256)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--neck-channels", type=int, default=128, help="the backbone's neck width")
    p.add_argument("--stride", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="32", choices=["32", "bf16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bhm-weights", default="0,1",
                   help="also report AP with person scores weighted by the body map (codec decode_bhm_weight)")
    return p


def main(argv: list[str] | None = None) -> OverfitRun:
    args = parser().parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)

    codec = StrongPoseCodec(stride=args.stride)
    images, annotations = sample_paths()
    data = COCOKeypointDataset(images, annotations, codec, input_size=args.input, train=False, skip_empty=True,
                               max_images=args.images)
    # the whole set is one batch: every step sees every image
    loader = DataLoader(data, batch_size=len(data), shuffle=False, collate_fn=SkipBadCollate(functools.partial(empty_sample, codec, args.input)))
    batch = move_data_to_device(next(iter(loader)), device)
    module = StrongPoseModule(codec, ResNetBackbone(args.backbone, args.stride, neck_channels=args.neck_channels),
                              optimizer=functools.partial(torch.optim.AdamW), batch_size=len(data)).to(device)
    optimizer = torch.optim.AdamW(module.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    module.train()
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16"
                else torch.autocast(device.type, enabled=False))
    first = last = None
    t0 = time.perf_counter()
    for step in itertools.count():
        with autocast:
            outputs = module(batch["image"])
        losses = module.losses({k: v.float() for k, v in outputs.items()}, batch["targets"])
        if first is None:
            first = {k: float(v.detach()) for k, v in losses.items()}
        if step == args.steps:
            last = {k: float(v.detach()) for k, v in losses.items()}
            break
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0:
            print(f"step {step:4d} loss {float(losses['total'].detach()):.4f}", flush=True)
    wall = time.perf_counter() - t0
    print(f"{len(data)} images, {args.steps} steps, {args.backbone} (neck {args.neck_channels}) at {args.input} px on {device}: {wall:.1f} s")
    for name in first:
        print(f"  loss_{name:6s} start {first[name]:.4f}  end {last[name]:.4f}")
    evaluate_loader(module, [batch], data.coco, device)  # warm-up: lazy CUDA / cuBLAS initialisation
    for weight in [float(w) for w in args.bhm_weights.split(",") if w]:
        codec.decode_bhm_weight = weight
        print(f"decode_bhm_weight={weight:g}: AP={evaluate_loader(module, [batch], data.coco, device)['AP']:.3f}")
    codec.decode_bhm_weight = 0.0
    stats = evaluate_loader(module, [batch], data.coco, device, verbose=True)
    print(f"AP={stats['AP']:.3f} AP50={stats['AP50']:.3f} AR={stats['AR']:.3f} loss_start={first['total']:.4f} "
          f"loss_end={last['total']:.4f} steps={args.steps} wall_s={wall:.1f} net_ms={stats['net_ms']:.1f} "
          f"decode_ms={stats['decode_ms']:.1f}")
    return OverfitRun(stats, module, args.input)


if __name__ == "__main__":
    main()
