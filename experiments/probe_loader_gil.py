"""Does a busy main thread slow the thread that receives the loader's batches? A CPU probe of a GPU question.

On a GPU, DataLoader(pin_memory=True) receives batches from the workers in a thread of the training
process (unpickling, one shared-memory storage per tensor, then pinning), which needs the GIL while the
main thread launches kernels (pytorch/pytorch#77139 describes the contention). This probe needs no GPU: a
thread pulls batches from the data module's loader (as the pin-memory thread does, without pinning) while
the main thread is idle, runs pure Python (holds the GIL), or runs tiny torch ops (which release it at each
dispatch, as launching does). ``--sharing`` picks torch.multiprocessing's strategy: ``file_descriptor``
(Linux default: each storage's descriptor travels over a socket) or ``file_system`` (by file name).
``--collate default`` replaces the data module's packed collate (3 storages a batch) by torch's
default_collate (one storage per tensor, 13). Last line: ``sharing=S collate=C main=M batches_per_s=X``.

    python experiments/probe_loader_gil.py --main idle
    python experiments/probe_loader_gil.py --main python --sharing file_descriptor
"""

from __future__ import annotations

import argparse
import os
import queue
import threading
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from strongpose.codec import StrongPoseCodec  # noqa: E402
from strongpose.data.datamodule import COCOKeypointDataModule  # noqa: E402


def busy_python() -> None:
    x = 0
    for i in range(20_000):  # ~1 ms of bytecode with the GIL held
        x += i


def busy_torch(small: torch.Tensor = torch.ones(4)) -> None:
    for _ in range(300):  # tiny ops: each dispatch releases the GIL, as a kernel launch does
        small + small


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--main", choices=["idle", "python", "torch"], default="idle")
    p.add_argument("--sharing", choices=["file_descriptor", "file_system"], default="file_descriptor")
    p.add_argument("--collate", choices=["packed", "default"], default="packed",
                   help="the data module's (3 storages a batch) or torch's default_collate (13)")
    p.add_argument("--input", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seconds", type=float, default=8.0)
    args = p.parse_args(argv)
    previous = torch.multiprocessing.get_sharing_strategy()
    torch.multiprocessing.set_sharing_strategy(args.sharing)
    try:
        data = COCOKeypointDataModule(StrongPoseCodec(stride=8), input_size=args.input, batch_size=args.batch,
                                      num_workers=args.workers, persistent_workers=True)
        # the data module's SkipBadCollate, stacking with torch's own for --collate default
        batches = iter(data.endless_train_dataloader(
            torch.utils.data.default_collate if args.collate == "default" else None))
        for _ in range(3 * args.workers):  # workers started, their first batches and stock taken
            next(batches)
        received: queue.Queue = queue.Queue()
        stop = threading.Event()

        def pull() -> None:  # the pin-memory thread's receiving half
            while not stop.is_set():
                received.put(next(batches))

        thread = threading.Thread(target=pull, daemon=True)
        thread.start()
        work = {"idle": None, "python": busy_python, "torch": busy_torch}[args.main]
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < args.seconds:
            if work is None:
                received.get(timeout=60)  # a dead pull thread stops the probe rather than hanging it
                count += 1
                continue
            work()
            while not received.empty():
                received.get()
                count += 1
        rate = count / (time.perf_counter() - t0)
        stop.set()
        thread.join(timeout=30)  # it ends after its next batch
        del batches
    finally:
        torch.multiprocessing.set_sharing_strategy(previous)
    print(f"sharing={args.sharing} collate={args.collate} main={args.main} batches_per_s={rate:.2f}", flush=True)
    return {"batches_per_s": rate}


if __name__ == "__main__":
    main()
