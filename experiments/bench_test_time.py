"""What the test-time options cost and change: AP and per-image network / decoding time of a checkpoint with
each option (flip test, multi-scale test, thresholds), on the first ``--images`` embedded-sample images.

AP comes from the same code as ``python -m strongpose.evaluate`` (Predictor, then COCOeval) and equals its
numbers; timings are steady-state: after a warm-up pass, every option runs ``--repeats`` passes, the options
alternating, and the fastest pass of each is kept (least disturbed by other jobs on a shared machine).
One line per option, then ``options=N repeats=R``:

    option=flip AP=... AP50=... AR=... people=N network_ms=X decode_ms=Y

    python experiments/bench_test_time.py --ckpt overfit.ckpt --images 10 [--threads 1] [--options plain,flip]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

import strongpose  # noqa: E402
from strongpose.data import COCOKeypointDataset, sample_paths  # noqa: E402
from strongpose.evaluation.coco_eval import coco_keypoint_stats  # noqa: E402
from strongpose.inference import Predictor  # noqa: E402

# name -> Predictor options (test.flip, test.scales, test.keypoint_threshold, test.person_threshold)
OPTIONS = {
    "plain": {},
    "flip": {"flip": True},
    "scales_1_1.5": {"scales": (1.0, 1.5)},
    "scales_0.75_1_1.25": {"scales": (0.75, 1.0, 1.25)},
    "flip_scales_1_1.5": {"flip": True, "scales": (1.0, 1.5)},
    "scales_1.5": {"scales": (1.5,)},
    "keypoint_threshold_0.3": {"keypoint_threshold": 0.3},
    "person_threshold_0.1": {"person_threshold": 0.1},
    "person_threshold_0.3": {"person_threshold": 0.3},
}


def main(argv: list[str] | None = None) -> dict[str, dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--images", type=int, default=10, help="the first N sample images (by id)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--options", default=",".join(OPTIONS), help="names from: " + ", ".join(OPTIONS))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = strongpose.load(args.ckpt, device=args.device)
    images_dir, annotations = sample_paths()
    data = COCOKeypointDataset(images_dir, annotations, base.codec, input_size=base.input_size, max_images=args.images)
    read = data.load_image
    images = [read(i) for i in range(len(data))]  # decoded once: file reading is not what is timed
    names = args.options.split(",")
    predictors = {name: Predictor(base.module, base.input_size, base.device, **OPTIONS[name]) for name in names}
    best = {name: {} for name in names}
    for repeat in range(args.repeats + 1):  # pass 0 warms up
        for name, predictor in predictors.items():
            start = time.perf_counter()
            poses = predictor.predict_batch(images, batch_size=len(images))
            timing = {**predictor.last_timing, "wall_ms": 1e3 * (time.perf_counter() - start)}
            if repeat == 0:
                results = [r for i, q in enumerate(poses) for r in q.to_coco(data.image_ids[i], data.category_id)]
                best[name] = {**coco_keypoint_stats(data.coco, results, data.image_ids, base.codec.skeleton.sigmas),
                              "people": len(results)}
            elif "wall_ms" not in best[name] or timing["wall_ms"] < best[name]["wall_ms"]:
                best[name].update(timing)
    n = len(images)
    for name, row in best.items():
        print(f"option={name} AP={row['AP']:.3f} AP50={row['AP50']:.3f} AR={row['AR']:.3f} people={row['people']} "
              f"network_ms={row['network_ms'] / n:.1f} decode_ms={row['decode_ms'] / n:.1f}")
    print(f"options={len(best)} repeats={args.repeats}")
    return best


if __name__ == "__main__":
    main()
