"""Data pipeline throughput of one worker: read + decode JPEG, annotations and masks, augment, encode targets.

Runs the training dataset in this process, single-threaded (torch and OpenCV), as one DataLoader worker
does (the masks merged by role before they are decoded, as the dataset's items are made), and splits the time
per stage (load: JPEG, annotations; augment: image warp, colour jitter, merging, decoding and warping the
masks). The last line is
``images_per_s=X ms_per_image=Y load_ms=... augment_ms=... encode_ms=... regions_ms=...`` (regions_ms: the
part of encode_ms that a worker still does with ``data.encode_on=device``: the mask-derived maps).

``--loader-workers W`` first measures what the training loop receives: the data module's own DataLoader
with W workers (its collate, shared-memory batches, ``--pin-memory``) delivering ``--batches`` batches (rounded up
to whole waves of W) of ``--batch`` (after one warm-up batch per worker and the batches the workers made
ahead), printed as ``loader workers=W batch=B images_per_s=X
per_worker=Y mb_per_image=Z`` (Z: the collated batch's bytes per image: image and targets).
``--encode-on worker device`` measures the loader once per choice of ``data.encode_on``, alternating; with
``device`` the line adds ``finish_ms_per_image``: encoding the rest of each batch in this process, on the CPU.

    python experiments/bench_data.py --input 512 --images 200
    python experiments/bench_data.py --ann ../shared/data/coco-mini/annotations/person_keypoints_train2017.json \\
        --img-dir ../shared/data/coco-mini/train2017
    python experiments/bench_data.py --loader-workers 1 --batch 32 --batches 10
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from strongpose.codec import StrongPoseCodec  # noqa: E402
from strongpose.data import COCOKeypointDataset, sample_paths  # noqa: E402
from strongpose.data.coco import to_chw  # noqa: E402
from strongpose.data.datamodule import COCOKeypointDataModule  # noqa: E402

from bench_train import whole_waves  # noqa: E402 - experiments/ is on sys.path


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ann", default=None, help="COCO keypoint JSON (default: the embedded sample)")
    p.add_argument("--img-dir", default=None)
    p.add_argument("--input", type=int, default=512)
    p.add_argument("--stride", type=int, default=8)
    p.add_argument("--images", type=int, default=200, help="samples to time (the dataset is cycled)")
    p.add_argument("--loader-workers", type=int, default=0, help="also time the DataLoader with this many workers")
    p.add_argument("--batch", type=int, default=32, help="loader batch size")
    p.add_argument("--batches", type=int, default=10,
                   help="loader batches to time, rounded up to a multiple of --loader-workers (bench_train.whole_waves)")
    p.add_argument("--pin-memory", action="store_true", help="loader pin_memory (as on a GPU)")
    p.add_argument("--encode-on", nargs="+", default=["worker"], choices=["worker", "device"],
                   help="data.encode_on of the loader measurement (several: alternated)")
    p.add_argument("--rounds", type=int, default=1, help="loader measurements per --encode-on choice")
    args = p.parse_args(argv)
    images, annotations = (args.img_dir, args.ann) if args.ann else sample_paths()
    if args.loader_workers > 0:
        for _ in range(args.rounds):
            for encode_on in args.encode_on:
                measure_loader(images, annotations, args, encode_on)
    torch.set_num_threads(1)
    cv2.setNumThreads(0)
    data = COCOKeypointDataset(images, annotations, StrongPoseCodec(stride=args.stride), input_size=args.input,
                               train=True)
    rng = np.random.default_rng(0)
    data[0]  # warm-up
    load = augment = encode = regions = 0.0
    t_start = time.perf_counter()
    for i in range(args.images):
        index = i % len(data)
        t0 = time.perf_counter()
        image, people = data.load(index, decode_masks=False)  # as the dataset's items: masks merged, then decoded
        t1 = time.perf_counter()
        sample = data.transform(image, people, rng, merge_masks=True)
        chw = to_chw(sample.image)
        t2 = time.perf_counter()
        targets = data.encode(sample)
        t3 = time.perf_counter()
        data.encode_regions(sample)
        t4 = time.perf_counter()
        load, augment, encode = load + t1 - t0, augment + t2 - t1, encode + t3 - t2
        regions += t4 - t3
        assert chw.shape[-1] == args.input and targets["skhm"].shape[0] == data.codec.num_keypoints
    total = time.perf_counter() - t_start - regions  # the regions were timed on top of the pipeline
    n = args.images
    result = {"images_per_s": n / total, "ms_per_image": 1e3 * total / n, "load_ms": 1e3 * load / n,
              "augment_ms": 1e3 * augment / n, "encode_ms": 1e3 * encode / n, "regions_ms": 1e3 * regions / n}
    print(" ".join(f"{k}={v:.2f}" for k, v in result.items()))
    return result


def measure_loader(images: str | Path, annotations: str | Path, args: argparse.Namespace,
                   encode_on: str = "worker") -> dict[str, float]:
    """Images/s that the data module's DataLoader delivers to this process with ``args.loader_workers`` workers."""
    codec = StrongPoseCodec(stride=args.stride)
    data = COCOKeypointDataModule(codec, train_images=images, train_annotations=annotations,
                                  input_size=args.input, batch_size=args.batch, num_workers=args.loader_workers,
                                  pin_memory=args.pin_memory, persistent_workers=True, encode_on=encode_on)
    batches = iter(data.endless_train_dataloader())
    for _ in range(args.loader_workers):  # warm-up: every worker started and delivered once
        batch = next(batches)
    for _ in range(2 * args.loader_workers):  # and the batches made ahead meanwhile (prefetch_factor 2 each):
        next(batches)  # without this, 14 workers hand over 28 ready batches and the rate is their stock's
    sent = [batch["image"], *batch.get("targets", {}).values(), *batch.get("regions", {}).values()]
    size = sum(t.nbytes for t in sent + [batch.get("people", torch.zeros(0))]) / len(batch["image"])
    t0 = time.perf_counter()
    count = sum(len(next(batches)["image"]) for _ in range(whole_waves(args.batches, args.loader_workers)))
    rate = count / (time.perf_counter() - t0)
    result = {"images_per_s": rate, "per_worker": rate / args.loader_workers, "mb_per_image": size / 1e6}
    if encode_on == "device":
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # one thread, as a worker has
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            data.finish_targets(batch)
            times.append(time.perf_counter() - t0)
        result["finish_ms_per_image"] = 1e3 * sorted(times)[1] / len(batch["image"])
        torch.set_num_threads(threads)
    print(f"loader workers={args.loader_workers} batch={args.batch} encode_on={encode_on} "
          + " ".join(f"{k}={v:.2f}" for k, v in result.items()), flush=True)
    del batches
    return result


if __name__ == "__main__":
    main()
