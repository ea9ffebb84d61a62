"""Inference speed: images/s of ``Predictor.predict_batch`` (validation preprocessing, network, decoding,
mapping back) for ResNet-18 and ResNet-50 at 512 px, batch 1 and 8, and the share of the time spent decoding.

Which model produces the maps matters for decoding, and only for decoding:
  * decoding time depends on the maps, not on the backbone that produced them, and a random-init network's
    maps are not what a trained one gives: its SKHM probabilities hover around the heads' 0.01 prior
    (0.005-0.024 measured), so about half of all cells cross the 0.01 vote threshold while no peak reaches
    the peak threshold: no linking, no grouping, 0 people found; its decoding time is that of the dense
    stages alone;
  * so decoding is timed on the maps of a model that finds people imperfectly: ``--ckpt CKPT`` (any
    StrongPose checkpoint), otherwise a ResNet-18 overfit for a short while on 8 embedded-sample images at
    256 px (``experiments/overfit_checkpoint.py``: 100 steps, AP 0.59 on those images; built once and cached
    at ``--cache``). Run on whole images at 512 px, such a model sees people twice the size it learned and
    finds almost nothing (measured: 30 people decoded, none scoring above 0.1). So, when the checkpoint was
    trained at S <= input / 2, it gets k x k mosaics (k = input // S) of sample images, each tile being an
    image's validation view at S (:class:`ValTransform`, as the Predictor and training preprocess), which
    the Predictor fits to the input size: 64 x 64 maps as at 512 px, with people at the scale it knows
    (mosaics of 4: 175 people decoded in 13 pictures, 67 above 0.1, 2026-11-26). A mosaic holds the people of 4
    images: this errs on the slow side;
  * the network (and preprocessing) is timed with the packaged config's network of each ``--backbones``
    entry (random init: weights do not change CPU time), through a Predictor on the whole images.
Both predictors see as many pictures with the same batch size, alternating, ``--repeats`` passes after
a warm-up; the fastest pass of each is kept (least disturbed by other jobs). Images are the embedded
sample's 13 (all of them, people or not; ``--images N``: the first N), decoded from JPEG beforehand (file
reading is not inference); every resize and pad is the Predictor's own.
One line per configuration, the last being the summary:

    backbone=resnet18 batch=8 img_per_s=X network_ms=N decode_ms=D preprocess_ms=P decode_share=Y
    max_decode_share=Y target=0.20 met=True

    python experiments/bench_infer.py                       # builds the overfit model once (a few minutes)
    python experiments/bench_infer.py --ckpt outputs/<run>/checkpoints/last.ckpt --batches 1,8
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

import strongpose  # noqa: E402
from strongpose.data import COCOKeypointDataset, sample_paths  # noqa: E402
from strongpose.inference import Predictor  # noqa: E402
from strongpose.train import CONFIG_DIR  # noqa: E402

TARGET_SHARE = 0.20
DEFAULT_CACHE = Path.home() / ".cache" / "strongpose" / "bench_infer_overfit_resnet18.ckpt"


def overfit_checkpoint(path: Path, steps: int) -> Path:
    """The cached overfit ResNet-18, trained (once) by experiments/overfit_checkpoint.py when missing."""
    if path.is_file():
        return path
    print(f"no checkpoint given: overfitting ResNet-18 on 8 sample images at 256 px for {steps} steps "
          f"(a few minutes on a CPU), cached at {path}", flush=True)
    import overfit_checkpoint as script  # experiments/ is on sys.path; imported only when it is needed

    script.main(["--out", str(path), "--images", "8", "--steps", str(steps), "--input", "256", "--bhm-weights", ""])
    return path


def mosaics(tiles: list[np.ndarray], k: int) -> list[np.ndarray]:
    """One (k S) x (k S) picture per S x S tile: k x k tiles, tile i and the next k*k - 1 (cyclically)."""
    out = []
    for i in range(len(tiles)):
        grid = [tiles[(i + j) % len(tiles)] for j in range(k * k)]
        out.append(np.concatenate([np.concatenate(grid[r * k:(r + 1) * k], 1) for r in range(k)], 0))
    return out


def sample_pictures(predictor: Predictor, trained_at: int, count: int | None) -> tuple[list, list, int]:
    """The first ``count`` sample images (all: None) as RGB arrays, what ``predictor`` decodes (the images,
    or mosaics of their validation views at ``trained_at`` when it fits k = input // trained_at > 1 of them
    across), and k."""
    k = max(1, predictor.input_size // trained_at)
    data = COCOKeypointDataset(*sample_paths(), predictor.codec, input_size=predictor.input_size // k,
                               max_images=count)
    images = [data.load(i)[0] for i in range(len(data))]
    if k == 1:
        return images, images, k
    return images, mosaics([data.transformed(i).image for i in range(len(data))], k), k


def config_predictor(backbone: str, input_size: int) -> Predictor:
    """A Predictor around the packaged config's (untrained) network for ``backbone``."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"backbone={backbone}", "logger=none", "paths.output_dir=null"])
    module = instantiate(cfg.model, codec=instantiate(cfg.codec))
    return Predictor(module, input_size, device="cpu")


def timed_pass(predictor: Predictor, images: list, batch: int) -> dict[str, float]:
    """One predict_batch over ``images``: the predictor's own time split plus the wall time, in ms."""
    t0 = time.perf_counter()
    predictor.predict_batch(images, batch_size=batch)
    return {**predictor.last_timing, "wall_ms": 1e3 * (time.perf_counter() - t0)}


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", type=Path, default=None, help="checkpoint whose maps are decoded (default: overfit model)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the overfit model is kept")
    p.add_argument("--overfit-steps", type=int, default=100)
    p.add_argument("--backbones", default="resnet18,resnet50")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--input", type=int, default=512)
    p.add_argument("--images", type=int, default=None, help="the first N sample images (default: all 13)")
    p.add_argument("--repeats", type=int, default=2, help="timed passes per configuration (the fastest is kept)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    checkpoint = args.ckpt or overfit_checkpoint(args.cache, args.overfit_steps)
    realistic = strongpose.load(checkpoint, device="cpu", input_size=args.input)
    trained_at = int((realistic.run_config.get("data") or {}).get("input_size") or args.input)
    images, pictures, k = sample_pictures(realistic, trained_at, args.images)
    print(f"{len(images)} sample images at {args.input} px, torch threads {torch.get_num_threads()}; decoding "
          f"timed on the maps of {checkpoint} ({realistic.module.net.backbone.arch}, trained at {trained_at} px"
          + (f", fed {k} x {k} mosaics of sample images" if k > 1 else "") + ")", flush=True)

    # how realistic the decoded maps are: people found (score > 0.1) per picture, all people kept
    found = realistic.predict_batch(pictures, batch_size=8)
    strong = [int((p.scores > 0.1).sum()) for p in found]
    print(f"realistic maps: {sum(len(p.scores) for p in found)} people decoded, {sum(strong)} with score > 0.1 "
          f"(per image {strong})", flush=True)

    rows = []
    for backbone in args.backbones.split(","):
        timed = config_predictor(backbone, args.input)
        for batch in (int(b) for b in args.batches.split(",")):
            timed.predict_batch(images[:batch], batch_size=batch)  # warm-up: allocator, oneDNN kernels
            realistic.predict_batch(pictures[:batch], batch_size=batch)
            net_passes, dec_passes = [], []
            for _ in range(args.repeats):
                net_passes.append(timed_pass(timed, images, batch))
                dec_passes.append(timed_pass(realistic, pictures, batch))
            net = min(net_passes, key=lambda t: t["preprocess_ms"] + t["network_ms"])
            dec = min(dec_passes, key=lambda t: t["decode_ms"])
            n = len(images)
            row = {"backbone": backbone, "batch": batch, "preprocess_ms": net["preprocess_ms"] / n,
                   "network_ms": net["network_ms"] / n, "decode_ms": dec["decode_ms"] / n}
            total = row["preprocess_ms"] + row["network_ms"] + row["decode_ms"]
            row["img_per_s"] = 1e3 / total
            row["decode_share"] = row["decode_ms"] / total
            rows.append(row)
            print(f"backbone={backbone} batch={batch} img_per_s={row['img_per_s']:.2f} "
                  f"network_ms={row['network_ms']:.1f} decode_ms={row['decode_ms']:.1f} "
                  f"preprocess_ms={row['preprocess_ms']:.1f} decode_share={row['decode_share']:.3f}", flush=True)
    worst = max(r["decode_share"] for r in rows)
    print(f"max_decode_share={worst:.3f} target={TARGET_SHARE:.2f} met={worst < TARGET_SHARE}")
    return rows


if __name__ == "__main__":
    main()
