"""Operations a training step issues: StrongPose's full step against the bare torchvision trunk's, per part.

On a fast GPU a small batch's step is limited by the host, which queues one kernel per operation: the H200
ran ResNet-50 bf16 at batch 16 with the host needing 30 ms to queue a 36 ms step (experiments/RESULTS.md,
"Sixteenth session"). There the full step's speed relative to the trunk's is at most bare_ops / full_ops.
Operations are counted through PyTorch's dispatcher (``TorchDispatchMode``), so on the CPU too: the model's
operations are the same on a GPU (a view launches no kernel, a fused optimiser step one per group of
tensors; the count is a proxy for launches, not a launch count). Data loading is left out: with workers it
runs in other processes, and ``data.encode_on=device``'s operations differ between CPU and GPU.

    python experiments/count_step_ops.py --backbone resnet50

prints one line per backbone, the last being the last backbone's:

    backbone=resnet50 bare_ops=717 full_ops=879 ceiling=0.816 forward=360 losses=38 backward=477 optimizer=4 ...

followed by the views among them (``bare_views``, ``full_views``: aliases, no kernel) and the ceiling without
them (``ceiling_no_views``).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from strongpose.codec import StrongPoseCodec  # noqa: E402
from strongpose.op_count import CountOps  # noqa: E402

import bench_train as bt  # noqa: E402 - its model builders (experiments/ is on sys.path)

PARTS = ("forward", "losses", "backward", "optimizer")


def count(backbone: str, args: argparse.Namespace) -> dict[str, int]:
    """Operations per part of the second step (the first one creates the optimisers' state)."""
    device = torch.device("cpu")
    args.workers, args.encode_on, args.channels_last = 0, "worker", False
    codec = StrongPoseCodec(stride=args.stride)
    batches, finish = bt.endless_batches(codec, args.batch, args, device)
    module, bare, opt_full, opt_bare = bt.build_models(backbone, args, codec, device)
    batch = finish(next(batches))
    trunk_input = bt.PixelNormalize()(batch["image"])
    counts: dict[str, int] = {}
    for _ in range(2):  # the counts of the last
        parts, views = dict.fromkeys(PARTS, 0), 0
        with CountOps() as ops:
            outputs = module(batch["image"])
        parts["forward"], views = ops.total, views + ops.views
        with CountOps() as ops:
            losses = module.losses({k: v.float() for k, v in outputs.items()}, batch["targets"])
        parts["losses"], views = ops.total, views + ops.views
        with CountOps() as ops:
            opt_full.zero_grad(set_to_none=True)
            losses["total"].backward()
        parts["backward"], views = ops.total, views + ops.views
        with CountOps() as ops:
            opt_full.step()
        parts["optimizer"], views = ops.total, views + ops.views
        with CountOps() as ops:  # bench_train's bare step
            out = bare(trunk_input)
            opt_bare.zero_grad(set_to_none=True)
            out.float().mean().backward()
            opt_bare.step()
        counts = {"bare_ops": ops.total, "full_ops": sum(parts.values()), **parts,
                  "bare_views": ops.views, "full_views": views}
    counts["ceiling"] = counts["bare_ops"] / counts["full_ops"]
    # the same without views (aliases: no kernel, and a cheaper host step than an operation that launches one)
    counts["ceiling_no_views"] = ((counts["bare_ops"] - counts["bare_views"])
                                  / (counts["full_ops"] - counts["full_views"]))
    print(f"backbone={backbone}" + "".join(f" {item}" for item in args.override)
          + f" bare_ops={counts['bare_ops']} full_ops={counts['full_ops']} "
          f"ceiling={counts['ceiling']:.3f} " + " ".join(f"{name}={counts[name]}" for name in PARTS)
          + f" bare_views={counts['bare_views']} full_views={counts['full_views']} "
          f"ceiling_no_views={counts['ceiling_no_views']:.3f}", flush=True)
    return counts


def main(argv: list[str] | None = None) -> dict[str, int]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", nargs="+", default=["resnet50"], choices=bt.BACKBONES)
    p.add_argument("--input", type=int, default=128, help="square input size (the counts do not depend on it)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--stride", type=int, default=8)
    bt.add_override_argument(p)
    args = p.parse_args(argv)
    result: dict[str, int] = {}
    for backbone in args.backbone:
        result = count(backbone, args)
    return result


if __name__ == "__main__":
    main()
