"""Decoding speed and recall in crowds: synthetic scenes of 1-100 people at 512 px, decoded from noisy targets.

Each scene's people are the codec tests' standing template (``tests/test_codec/helpers.py``'s shape, copied
here so that the script runs without the tests): on a grid (``apart``) or at random places and heights
(``overlap``). Their targets are encoded, the offsets get Gaussian noise (``--noise`` px, so that linking has
choices to make; the validity masks are dropped, as for a network's outputs) and the maps are decoded with
``decode_max_people`` and ``decode_max_peaks`` at 100. Times are CPU medians over ``--repeats`` decodes (one
torch thread by default); "recovered" counts the people matched by a decoded person at OKS > 0.5.
``--save F.npz`` writes every decoded person, to compare two versions of the decoder (``--compare F.npz``
says whether this run decodes the same people, to 1e-4 px).

    python experiments/bench_crowd_decode.py
    python experiments/bench_crowd_decode.py --people 100 --layout overlap --repeats 9

One line per (layout, people); the last line is the summary:

    people=100 layout=overlap decode_ms=X peaks_ms=P links_ms=L group_ms=G recovered=R/100
"""

from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from strongpose.codec import StrongPoseCodec  # noqa: E402

# (x, y) of COCO's 17 keypoints for a standing person about 1 unit tall, centred on x = 0
TEMPLATE = np.array([
    [0.0, 0.00], [-0.03, -0.02], [0.03, -0.02], [-0.07, 0.0], [0.07, 0.0],
    [-0.15, 0.15], [0.15, 0.15], [-0.22, 0.35], [0.22, 0.35], [-0.25, 0.52], [0.25, 0.52],
    [-0.10, 0.55], [0.10, 0.55], [-0.11, 0.78], [0.11, 0.78], [-0.12, 1.0], [0.12, 1.0],
], dtype=np.float32)
SIZE = 512


def scene(people: int, layout: str, rng: np.random.Generator) -> np.ndarray:
    """(N, 17, 3) keypoints of ``people`` template people in a SIZE x SIZE image."""
    if layout == "apart":  # a grid of cells, one person in each, as tall as the cell allows
        cols = int(np.ceil(np.sqrt(people)))
        rows = int(np.ceil(people / cols))
        cell_w, cell_h = SIZE / cols, SIZE / rows
        height = min(0.8 * cell_h, 1.6 * cell_w)
        cx = (np.arange(people) % cols + 0.5) * cell_w
        top = (np.arange(people) // cols + 0.5) * cell_h - height / 2
    else:  # anywhere, any height from 40 to 200 px: people overlap
        height = rng.uniform(40, 200, people)
        cx = rng.uniform(30, SIZE - 30, people)
        top = rng.uniform(5, SIZE - 5 - height)
    height = np.broadcast_to(height, (people,))
    kp = np.zeros((people, 17, 3), np.float32)
    kp[..., 0] = cx[:, None] + TEMPLATE[:, 0] * height[:, None]
    kp[..., 1] = top[:, None] + TEMPLATE[:, 1] * height[:, None]
    kp[..., 2] = 2
    return kp


def noisy_maps(codec: StrongPoseCodec, kp: np.ndarray, noise: float, rng: np.random.Generator) -> dict:
    maps = codec.encode(torch.from_numpy(kp), (SIZE, SIZE))
    out = {key: maps[key] for key in ("skhm", "bhm")}
    for key in ("short", "mid", "long"):
        if key in maps:
            out[key] = maps[key] + torch.from_numpy(rng.normal(0, noise, maps[key].shape).astype(np.float32))
    return {key: v[None] for key, v in out.items()}


def recovered(kps: np.ndarray, gt: np.ndarray, sigmas: np.ndarray) -> int:
    """Ground-truth people matched (greedily, best OKS first) by a decoded person at OKS > 0.5."""
    if not len(kps):
        return 0
    lo, hi = gt[..., :2].min(1), gt[..., :2].max(1)
    area = np.prod(hi - lo, axis=1) * 0.53  # COCO's segment area is about half the keypoint box
    d2 = ((kps[:, None, :, :2] - gt[None, :, :, :2]) ** 2).sum(-1)  # (P, G, K)
    oks = np.exp(-d2 / (2 * area[None, :, None] * (2 * sigmas) ** 2)).mean(-1)
    taken, count = set(), 0
    for p in range(len(kps)):  # decoded people come strongest first
        g = int(np.argmax(np.where([i in taken for i in range(len(gt))], -1.0, oks[p])))
        if oks[p, g] > 0.5 and g not in taken:
            taken.add(g)
            count += 1
    return count


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--people", default="1,5,20,50,100", help="comma-separated people per scene")
    p.add_argument("--layout", default="apart,overlap", help="apart, overlap or both (comma-separated)")
    p.add_argument("--scenes", type=int, default=3, help="scenes per (layout, people)")
    p.add_argument("--noise", type=float, default=2.0, help="Gaussian noise on the offsets, px")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--snap-radius", type=float, default=8.0,
                   help="decode_snap_radius, px (the codec's default; the test config's null: the disk radius, 32)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", help="write the decoded people to this .npz")
    p.add_argument("--compare", help="a --save file of another run: say whether the people are the same")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    codec = StrongPoseCodec(stride=8, decode_max_people=100, decode_max_peaks=100, decode_snap_radius=args.snap_radius)
    sigmas = np.asarray(codec.skeleton.sigmas)
    rows, saved = [], {}
    for layout in args.layout.split(","):
        for people in (int(n) for n in args.people.split(",")):
            rng = np.random.default_rng(args.seed + people)
            times = {key: [] for key in ("decode", "peaks", "links", "group")}
            found = 0
            for s in range(args.scenes):
                gt = scene(people, layout, rng)
                maps = noisy_maps(codec, gt, args.noise, rng)
                codec.decode(maps)  # warm-up (caches, allocator)
                for _ in range(args.repeats):
                    poses = codec.decode(maps)[0]
                    t = codec.last_timing
                    for key in ("peaks", "links", "group"):
                        times[key].append(t[f"{key}_ms"])
                    times["decode"].append(t["peaks_ms"] + t["links_ms"] + t["group_ms"])
                kps = poses.keypoints.numpy()
                saved[f"{layout}_{people}_{s}"] = kps
                found += recovered(kps, gt, sigmas)
            row = {"people": people, "layout": layout, **{f"{k}_ms": statistics.median(v) for k, v in times.items()},
                   "recovered": found, "total": people * args.scenes}
            rows.append(row)
            print(f"people={people} layout={layout} decode_ms={row['decode_ms']:.2f} peaks_ms={row['peaks_ms']:.2f} "
                  f"links_ms={row['links_ms']:.2f} group_ms={row['group_ms']:.2f} "
                  f"recovered={found}/{people * args.scenes}", flush=True)
    if args.save:
        np.savez(args.save, **saved)
    if args.compare:
        other = np.load(args.compare)
        differ = [key for key in saved if key not in other or saved[key].shape != other[key].shape
                  or not np.allclose(saved[key], other[key], atol=1e-4)]
        print(f"compared with {args.compare}: {len(saved) - len(differ)}/{len(saved)} scenes decode the same people"
              + (f"; differ: {', '.join(differ)}" if differ else ""))
    last = rows[-1]
    print(f"people={last['people']} layout={last['layout']} decode_ms={last['decode_ms']:.2f} "
          f"peaks_ms={last['peaks_ms']:.2f} links_ms={last['links_ms']:.2f} group_ms={last['group_ms']:.2f} "
          f"recovered={last['recovered']}/{last['total']}")
    return rows


if __name__ == "__main__":
    main()
