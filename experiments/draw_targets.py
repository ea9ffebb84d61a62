"""Picture of what the network learns: the StrongPose targets of one embedded-sample image.

Loads the image as validation does (resize the longer side to ``--input``, pad), encodes its people with
the default codec (stride 8, disk radius 32) and draws them with :func:`strongpose.viz.draw_targets`: body
map, SKHM disks in the skeleton's colours, short-range arrows, and the mid-range arrows of one edge. Writes
a PNG cropped to the image (no padding); the last line is ``wrote FILE (W x H, N KB)``. ``docs/targets.png``
is made with the defaults:

    python experiments/draw_targets.py --out docs/targets.png
    python experiments/draw_targets.py --out /tmp/t.png --image 3 --mid-edge right_hip,right_knee
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from strongpose.codec import StrongPoseCodec  # noqa: E402
from strongpose.data import COCOKeypointDataset, sample_paths  # noqa: E402
from strongpose.viz import draw_targets  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="PNG file to write")
    p.add_argument("--image", type=int, default=7, help="index among the sample images that hold people")
    p.add_argument("--input", type=int, default=448, help="network input size (the picture's longer side)")
    p.add_argument("--mid-edge", default="left_shoulder,left_elbow",
                   help="directed edge whose mid-range offsets are drawn, 'source,target' ('' = none)")
    p.add_argument("--short-step", type=int, default=2, help="short-range arrow on every N-th cell (0 = none)")
    args = p.parse_args(argv)

    codec = StrongPoseCodec()
    images, annotations = sample_paths()
    data = COCOKeypointDataset(images, annotations, codec, input_size=args.input, train=False, skip_empty=True)
    if not 0 <= args.image < len(data):
        p.error(f"--image must be in [0, {len(data) - 1}]: the sample has {len(data)} images with people")
    sample = data.transformed(args.image)
    import torch  # noqa: PLC0415 - after the argument check: a wrong option fails fast

    picture = draw_targets(torch.from_numpy(sample.image).permute(2, 0, 1), data.encode(sample), codec,
                           short_step=args.short_step,
                           mid_edge=tuple(args.mid_edge.split(",")) if args.mid_edge else None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # crop the padding away (validation pads right / bottom): the resized image ends where the original's
    # far pixel edge (W - 0.5, H - 0.5 in pixel-centre coordinates) lands, whatever colour its last rows hold
    h, w = data.coco.imgs[data.image_ids[args.image]]["height"], data.coco.imgs[data.image_ids[args.image]]["width"]
    edge = data.transform.to_input((h, w)) @ np.array([w - 0.5, h - 0.5, 1.0])
    rgb = picture.permute(1, 2, 0).numpy()[: round(edge[1] + 0.5), : round(edge[0] + 0.5)]
    if not cv2.imwrite(str(args.out), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise SystemExit(f"could not write {args.out} (unknown extension or folder not writable)")
    print(f"wrote {args.out} ({rgb.shape[1]} x {rgb.shape[0]}, {args.out.stat().st_size // 1024} KB)")
    return args.out


if __name__ == "__main__":
    main()
