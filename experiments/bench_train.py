"""Training throughput: the full StrongPose step next to the bare backbone, in one run.

Full step = next batch from the data pipeline (decode JPEG, augment, encode targets in the workers) +
host-to-device copy + forward (backbone, neck, heads) + losses + backward + AdamW step.
Bare step = the torchvision ResNet trunk alone (to C5, no neck, no heads, no data loading) forward +
backward of a dummy loss + AdamW step, on a batch of the same shape already on the device.
The two alternate in blocks and each block's images/s is kept; the medians are reported.

Every combination of ``--backbone``, ``--precision`` and ``--batch`` is measured in turn (a fresh model
and data loader each), one line each: ``device=... backbone=... input=... batch=... precision=...
workers=... full_ips=X bare_ips=Y ratio=Z peak_mem_gb=M bare_peak_mem_gb=B`` (peaks: CUDA memory
allocated during the timed full / bare steps, nan on a CPU; both models' weights, gradients and AdamW
states stay resident throughout, so each peak includes the other model's state: ~1 GB for ResNet-152 in
fp32). ``--max-batch`` then looks for the largest batch whose full step fits in GPU memory, per backbone
and precision, with the full model alone (``... max_batch=N peak_mem_gb=M``; skipped on a CPU).

    python experiments/bench_train.py --backbone resnet18 --input 256 --batch 8
    python experiments/bench_train.py --backbone resnet50 resnet152 --input 512 --batch 8 16 32 \\
        --precision 32 bf16 --device cuda
    python experiments/bench_train.py --backbone resnet152 --input 512 --precision bf16 --device cuda \\
        --max-batch --batch 32
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import os
import statistics
import time
from collections.abc import Callable, Iterator

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from lightning.fabric.utilities.apply_func import move_data_to_device  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
import torchvision  # noqa: E402

from strongpose.codec import StrongPoseCodec  # noqa: E402
from strongpose.data.datamodule import COCOKeypointDataModule  # noqa: E402
from strongpose.lit_module import StrongPoseModule  # noqa: E402
from strongpose.models.network import PixelNormalize  # noqa: E402
from strongpose.train import CONFIG_DIR  # noqa: E402

# the backbone/ config options (ResNet-18 ... 152, ResNeXt, Wide ResNet)
BACKBONES = sorted((p.stem for p in (CONFIG_DIR / "backbone").glob("*.yaml")),
                   key=lambda name: (not name.startswith("resnet"), len(name), name))
MAX_BATCH_LIMIT = 4096  # the search stops doubling here


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def timed_block(step, steps: int, images: int, device: torch.device) -> tuple[float, float]:
    """(images/s, peak GiB allocated during the block; nan off CUDA)."""
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    rate = steps * images / (time.perf_counter() - t0)
    return rate, torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def drain_prefetched(batches, workers: int, prefetch_factor: int = 2) -> None:
    """Take the batches the loader's workers made ahead (up to ``prefetch_factor`` each), untimed, so that a
    timed block measures the rate batches are produced at, not a stock built while nothing consumed them
    (14 workers hold 28 batches: more than a 20-step block of a fast step uses)."""
    for _ in range(workers * prefetch_factor):
        next(batches)


def whole_waves(steps: int, workers: int) -> int:
    """``steps`` rounded up to a multiple of ``workers``, for a timed block that draws batches. Where the loader
    is the limit, its workers (restarted together by a drain) each deliver a batch at about the same moment, a
    wave; a block of part of a wave waits for the whole of it (20 steps of 14 workers: 2 waves, timed 1.4x too
    long), a block of whole waves times the loader's rate."""
    return -(-steps // workers) * workers if workers > 0 else steps


def into_steady_state(step, batches, workers: int, prefetch_factor: int = 2) -> None:
    """Before a timed block that draws batches: :func:`drain_prefetched`, then as many untimed ``step``s.

    The drain alone biased the block the other way (H200, 2026-11-27): every worker then starts its next
    batch at the same moment, and the first arrives one worker's batch-time later (0.2-0.6 s at 512 px), a
    stall that no training run has past its first steps; 20 steps of 14 workers take two such waves. After
    the untimed steps the stock is what the step's own pace leaves: none when the loader is the slower
    (the block then times the loader), up to the whole queue when it is the faster (as in training)."""
    drain_prefetched(batches, workers, prefetch_factor)
    for _ in range(workers * prefetch_factor):
        step()


def add_override_argument(parser: argparse.ArgumentParser) -> None:
    """``--override KEY=VALUE ...``: training-config overrides for StrongPose's network (:func:`build_models`)."""
    parser.add_argument("--override", nargs="+", default=[], metavar="KEY=VALUE",
                        help="training-config overrides for StrongPose's network, e.g. backbone.norm=frozen (the "
                             "COCO experiments' norm) or model.heads.num_convs=2")


def add_compile_argument(parser: argparse.ArgumentParser) -> None:
    """``--compile [MODE]``: torch.compile both networks in :func:`build_models`."""
    parser.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                        help="torch.compile both networks (StrongPose's as callbacks.compile does, and the bare "
                             "trunk) with this mode (default: torch's); the warm-up steps pay the compilation")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", nargs="+", default=["resnet18"], choices=BACKBONES)
    p.add_argument("--input", type=int, default=256, help="square input size")
    p.add_argument("--batch", type=int, nargs="+", default=[8], help="per-step batch sizes to measure")
    p.add_argument("--stride", type=int, default=8)
    p.add_argument("--steps", type=int, default=3,
                   help="steps per timed block, rounded up to a multiple of --workers (whole_waves)")
    p.add_argument("--rounds", type=int, default=3, help="timed blocks of each kind")
    p.add_argument("--workers", type=int, default=2, help="data-loading worker processes")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", nargs="+", default=["32"], choices=["32", "bf16"])
    p.add_argument("--channels-last", action="store_true")
    add_override_argument(p)
    add_compile_argument(p)
    p.add_argument("--encode-on", default="worker", choices=["worker", "device"],
                   help="data.encode_on: keypoint targets encoded in the workers or on the device after the copy")
    p.add_argument("--max-batch", action="store_true",
                   help="also find the largest batch whose full step fits in GPU memory (CUDA only); "
                        "the search starts from the largest --batch")
    p.add_argument("--only-max-batch", action="store_true", help="--max-batch without the throughput grid")
    args = p.parse_args(argv)
    args.max_batch |= args.only_max_batch
    return args


def device_name(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    return name.replace(" ", "_")


def build_models(backbone: str, args: argparse.Namespace, codec: StrongPoseCodec, device: torch.device):
    """The training module (backbone, neck width and heads as the training config builds them) and the bare
    torchvision trunk to C5 (no pooling, no classifier), each with the config's optimiser (AdamW, fused)."""
    torch.manual_seed(0)
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"backbone={backbone}", f"codec.stride={args.stride}",
                                          *getattr(args, "override", [])])
    optimizer = instantiate(cfg.model.optimizer)  # the training config's (AdamW, fused), for both steps
    module = StrongPoseModule(codec, instantiate(cfg.backbone), optimizer=optimizer,
                              heads=OmegaConf.to_container(cfg.model.heads)).to(device)
    bare = torch.nn.Sequential(*list(torchvision.models.get_model(backbone).children())[:-2]).to(device)
    if args.channels_last:
        module, bare = module.to(memory_format=torch.channels_last), bare.to(memory_format=torch.channels_last)
    if getattr(args, "compile", None):  # in place, as the Compile callback does: fewer, fused kernels
        mode = None if args.compile == "default" else args.compile
        module.net.compile(mode=mode)
        bare.compile(mode=mode)
    module.train()
    bare.train()
    return module, bare, optimizer(module.parameters(), lr=1e-4), optimizer(bare.parameters(), lr=1e-4)


def full_step_fn(module, optimizer, next_batch: Callable[[], dict], device: torch.device, precision: str,
                 finish: Callable[[dict], dict] = lambda batch: batch):
    """One training step on ``next_batch()``, copied to ``device`` and then ``finish``-ed (the data module's
    ``finish_targets``, as Lightning's ``on_after_batch_transfer`` runs it)."""
    def step() -> None:
        batch = finish(move_data_to_device(next_batch(), device))
        with autocast(device, precision):
            outputs = module(batch["image"])
        losses = module.losses({k: v.float() for k, v in outputs.items()}, batch["targets"])
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimizer.step()
    return step


def endless_loader(codec: StrongPoseCodec, batch_size: int, args: argparse.Namespace, device: torch.device,
                   encode_on: str | None = None, collate: Callable[[list], dict] | None = None,
                   ) -> tuple[DataLoader, COCOKeypointDataModule]:
    """The data module's training DataLoader over the embedded sample (``args.workers`` workers, pinned memory
    on CUDA, ``encode_on`` or ``args.encode_on``, ``collate`` instead of the data module's own if given), and
    the data module. The sample holds 11 training images: (index, epoch) pairs are drawn endlessly, so that
    batches of any size are full and the workers never wait for an epoch boundary."""
    data = COCOKeypointDataModule(codec, input_size=args.input, batch_size=batch_size, num_workers=args.workers,
                                  pin_memory=device.type == "cuda", persistent_workers=args.workers > 0,
                                  encode_on=encode_on or getattr(args, "encode_on", "worker"))
    return data.endless_train_dataloader(collate), data


def endless_batches(codec: StrongPoseCodec, batch_size: int, args: argparse.Namespace, device: torch.device,
                    encode_on: str | None = None, collate: Callable[[list], dict] | None = None,
                    ) -> tuple[Iterator[dict], Callable[[dict], dict]]:
    """Batches of :func:`endless_loader`, one after another, and the data module's ``finish_targets``."""
    loader, data = endless_loader(codec, batch_size, args, device, encode_on, collate)
    return iter(loader), data.finish_targets


def measure(backbone: str, precision: str, batch_size: int, args: argparse.Namespace) -> dict[str, float]:
    """Full vs bare step images/s (medians of ``args.rounds`` alternating blocks) and their peak memory."""
    device = torch.device(args.device)
    codec = StrongPoseCodec(stride=args.stride)
    batches, finish = endless_batches(codec, batch_size, args, device)
    module, bare, opt_full, opt_bare = build_models(backbone, args, codec, device)
    full_step = full_step_fn(module, opt_full, lambda: next(batches), device, precision, finish)

    fixed = PixelNormalize().to(device)(next(batches)["image"].to(device))  # the trunk's usual float input
    if args.channels_last:
        fixed = fixed.contiguous(memory_format=torch.channels_last)

    def bare_step() -> None:
        with autocast(device, precision):
            out = bare(fixed)
        opt_bare.zero_grad(set_to_none=True)
        out.float().mean().backward()
        opt_bare.step()

    for step in (full_step, bare_step):  # warm-up: workers start, kernels are chosen, memory is allocated
        step()
        step()
    full, bare_blocks = [], []
    steps = whole_waves(args.steps, args.workers)
    for _ in range(args.rounds):
        into_steady_state(full_step, batches, args.workers)  # the bare block let the workers fill their queues
        full.append(timed_block(full_step, steps, batch_size, device))
        bare_blocks.append(timed_block(bare_step, steps, batch_size, device))
    result = {"full_ips": statistics.median(r for r, _ in full), "bare_ips": statistics.median(r for r, _ in bare_blocks),
              "peak_mem_gb": max(m for _, m in full), "bare_peak_mem_gb": max(m for _, m in bare_blocks)}
    result["ratio"] = result["full_ips"] / result["bare_ips"]
    print(f"device={device_name(device)} backbone={backbone} input={args.input} batch={batch_size} "
          f"precision={precision} workers={args.workers} encode_on={args.encode_on}"
          + (f" compile={args.compile}" if args.compile else "") + "".join(f" {item}" for item in args.override)
          + f" full_ips={result['full_ips']:.2f} "
          f"bare_ips={result['bare_ips']:.2f} ratio={result['ratio']:.3f} peak_mem_gb={result['peak_mem_gb']:.2f} "
          f"bare_peak_mem_gb={result['bare_peak_mem_gb']:.2f}", flush=True)
    del batches, module, bare, opt_full, opt_bare, full_step
    release(device)
    return result


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def max_batch(backbone: str, precision: str, start: int, args: argparse.Namespace) -> tuple[int, float]:
    """Largest batch (and its peak GiB) whose full training step fits in GPU memory: doubling from ``start``
    until a step runs out of memory, then bisection. Batches are one real batch tiled, already on the GPU
    (data loading needs no GPU memory)."""
    device = torch.device(args.device)
    codec = StrongPoseCodec(stride=args.stride)
    data = COCOKeypointDataModule(codec, input_size=args.input, batch_size=4, num_workers=0,
                                  encode_on=getattr(args, "encode_on", "worker"))
    data.setup("fit")
    seed = next(iter(data.train_dataloader()))
    fields = {key: seed[key] for key in ("image", "targets", "people", "regions") if key in seed}
    module, bare, optimizer, bare_optimizer = build_models(backbone, args, codec, device)
    del bare, bare_optimizer  # only the full step's memory counts here
    release(device)

    def fits(n: int) -> float | None:
        tile = torch.arange(n) % len(seed["image"])
        batch = {key: value[tile] if isinstance(value, torch.Tensor) else {k: v[tile] for k, v in value.items()}
                 for key, value in fields.items()}
        # with --encode-on device the step also holds the device encoder's working memory
        step = full_step_fn(module, optimizer, lambda: batch, device, precision, data.finish_targets)
        torch.cuda.reset_peak_memory_stats(device)
        try:
            step()
            step()  # the second step also holds the optimiser's state
            sync(device)
            return torch.cuda.max_memory_allocated(device) / 2**30
        except torch.cuda.OutOfMemoryError:
            return None
        finally:
            optimizer.zero_grad(set_to_none=True)
            del batch, step
            release(device)

    good, peak = largest_fitting(fits, start)
    print(f"device={device_name(device)} backbone={backbone} input={args.input} precision={precision} "
          f"max_batch={good} peak_mem_gb={peak:.2f}", flush=True)
    del module, optimizer
    release(device)
    return good, peak


def largest_fitting(fits: Callable[[int], float | None], start: int, limit: int = MAX_BATCH_LIMIT) -> tuple[int, float]:
    """Largest n <= ``limit`` with ``fits(n)`` not None (its peak memory), assuming every smaller n fits too:
    doubling from ``start`` to the first failure, then bisection. (0, nan) when even 1 does not fit."""
    good, bad, peak = 0, None, float("nan")
    n = max(1, start)
    while bad is None and n <= limit:
        if (p := fits(n)) is None:
            bad = n
        else:
            good, peak, n = n, p, n * 2
    bad = bad if bad is not None else limit + 1
    while bad - good > 1:
        mid = (good + bad) // 2
        if (p := fits(mid)) is None:
            bad = mid
        else:
            good, peak = mid, p
    return good, peak


def run(args: argparse.Namespace) -> list[dict]:
    """Every (backbone, precision, batch) measurement, then the largest batches if asked."""
    results = []
    for backbone, precision, batch in itertools.product(args.backbone, args.precision, args.batch):
        if args.only_max_batch:
            break
        results.append({"backbone": backbone, "precision": precision, "batch": batch,
                        **measure(backbone, precision, batch, args)})
    if args.max_batch:
        if torch.device(args.device).type != "cuda":
            print("max_batch=skipped (needs a CUDA device: CPU memory is not the limit being searched)", flush=True)
        else:
            for backbone, precision in itertools.product(args.backbone, args.precision):
                max_batch(backbone, precision, max(args.batch), args)
    return results


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Runs the benchmark; returns the numbers of the last configuration measured ({} with --only-max-batch)."""
    torch.backends.cudnn.benchmark = True  # as trainer=gpu runs (the H200 table of 2026-11-26 ran without)
    results = run(parse_args(argv))
    return results[-1] if results else {}


if __name__ == "__main__":
    main()
