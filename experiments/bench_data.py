"""Data pipeline throughput of one worker: read + decode JPEG, annotations and masks, augment, encode targets.

Runs the training dataset in this process, single-threaded (torch and OpenCV), as one DataLoader worker
does, and splits the time per stage. The last line is
``images_per_s=X ms_per_image=Y load_ms=... augment_ms=... encode_ms=...``.

    python experiments/bench_data.py --input 512 --images 200
    python experiments/bench_data.py --ann ../shared/data/coco-mini/annotations/person_keypoints_train2017.json \\
        --img-dir ../shared/data/coco-mini/train2017
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from strongpose.codec import StrongPoseCodec  # noqa: E402
from strongpose.data import COCOKeypointDataset, sample_paths  # noqa: E402
from strongpose.data.coco import normalise  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ann", default=None, help="COCO keypoint JSON (default: the embedded sample)")
    p.add_argument("--img-dir", default=None)
    p.add_argument("--input", type=int, default=512)
    p.add_argument("--stride", type=int, default=8)
    p.add_argument("--images", type=int, default=200, help="samples to time (the dataset is cycled)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cv2.setNumThreads(0)
    images, annotations = (args.img_dir, args.ann) if args.ann else sample_paths()
    data = COCOKeypointDataset(images, annotations, StrongPoseCodec(stride=args.stride), input_size=args.input,
                               train=True)
    rng = np.random.default_rng(0)
    data[0]  # warm-up
    load = augment = encode = 0.0
    t_start = time.perf_counter()
    for i in range(args.images):
        index = i % len(data)
        t0 = time.perf_counter()
        image, people = data.load(index)
        t1 = time.perf_counter()
        sample = data.transform(image, people, rng)
        chw = normalise(sample.image)
        t2 = time.perf_counter()
        targets = data.encode(sample)
        t3 = time.perf_counter()
        load, augment, encode = load + t1 - t0, augment + t2 - t1, encode + t3 - t2
        assert chw.shape[-1] == args.input and targets["skhm"].shape[0] == data.codec.num_keypoints
    total = time.perf_counter() - t_start
    n = args.images
    result = {"images_per_s": n / total, "ms_per_image": 1e3 * total / n, "load_ms": 1e3 * load / n,
              "augment_ms": 1e3 * augment / n, "encode_ms": 1e3 * encode / n}
    print(" ".join(f"{k}={v:.2f}" for k, v in result.items()))
    return result


if __name__ == "__main__":
    main()
