"""Crash and resume: a run killed with SIGKILL and resumed from ``last.ckpt`` ends where an uninterrupted
run ends (weights, EMA weights, optimiser state, step count, learning rate).

Runs ``python -m strongpose.train`` three times per case on a tiny CPU setup (64 px, ResNet-18, 32-channel
neck and heads, EMA on): uninterrupted; killed (SIGKILL) as soon as its first ``last.ckpt`` is on disk;
resumed with ``ckpt_path=<run>/checkpoints/last.ckpt``. Two cases: ``epoch`` (checkpoints at epoch ends
only) and ``mid`` (a checkpoint every step, so the kill lands mid-epoch). Prints one line per case:
``case=epoch killed_at=2 steps=8/8 lr=.../... max_abs_ema=0 max_abs_raw=0 max_abs_adam=0``.

    python experiments/crash_resume.py                 # both cases, about a minute on a 2-core CPU
    python experiments/crash_resume.py --cases epoch
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

# 6 images in batches of 2: 3 steps per epoch, 4 epochs; no validation (it does not change the weights)
TINY = ["trainer=cpu", "logger=none", "data.input_size=64", "data.batch_size=2", "data.max_train_images=6",
        "data.max_val_images=2", "trainer.limit_val_batches=0", "trainer.max_epochs=4",
        "trainer.enable_model_summary=false",
        "callbacks.coco_eval=null", "backbone.neck_channels=32", "model.heads.width=32",
        "callbacks.model_checkpoint.monitor=null",
        "+callbacks.model_checkpoint.save_on_train_epoch_end=true"]
EVERY_STEP = ["callbacks.model_checkpoint.last_every_n_train_steps=1"]  # last.ckpt after every step


def start(args: list[str], cwd: Path, log_name: str) -> subprocess.Popen:
    """``python -m strongpose.train ARGS`` in ``cwd`` (one thread, W&B off), output to ``cwd/<log_name>``."""
    env = {**os.environ, "WANDB_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}
    with open(cwd / log_name, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "strongpose.train", *args], cwd=cwd, env=env,
                                stdout=out, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, cwd: Path, log_name: str, timeout: float = 600) -> subprocess.CompletedProcess:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, (cwd / log_name).read_text(), "")


def train_cli(args: list[str], cwd: Path, log_name: str, kill_when: Path | None = None, timeout: float = 600,
              signum: int = signal.SIGKILL) -> subprocess.CompletedProcess:
    """:func:`start` and wait. With ``kill_when``, sends ``signum`` as soon as that file exists."""
    proc = start(args, cwd, log_name)
    deadline = time.monotonic() + timeout
    while kill_when is not None and proc.poll() is None and time.monotonic() < deadline:
        if kill_when.exists():
            proc.send_signal(signum)
            break
        time.sleep(0.02)
    return finish(proc, cwd, log_name, max(deadline - time.monotonic(), 1))


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def max_abs_diff(a: dict, b: dict) -> float:
    """Largest absolute difference between two (nested) state dicts with the same keys."""
    assert a.keys() == b.keys(), set(a) ^ set(b)
    worst = 0.0
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, dict):
            worst = max(worst, max_abs_diff(x, y))
        elif isinstance(x, torch.Tensor) and x.is_floating_point():
            worst = max(worst, float((x - y).abs().max()) if x.numel() else 0.0)
        elif isinstance(x, torch.Tensor):
            assert torch.equal(x, y), key
    return worst


def compare(reference: Path, resumed: Path) -> dict[str, float]:
    """Steps, LR and the largest weight differences between two final checkpoints."""
    a, b = load(reference), load(resumed)
    adam = [max_abs_diff(x["state"], y["state"]) for x, y in zip(a["optimizer_states"], b["optimizer_states"],
                                                                   strict=True)]
    return {"steps_reference": a["global_step"], "steps_resumed": b["global_step"],
            "lr_reference": a["optimizer_states"][0]["param_groups"][0]["lr"],
            "lr_resumed": b["optimizer_states"][0]["param_groups"][0]["lr"],
            "max_abs_ema": max_abs_diff(a["state_dict"], b["state_dict"]),
            "max_abs_raw": max_abs_diff(a["current_model_state"], b["current_model_state"]),
            "max_abs_adam": max(adam)}


def crash_and_resume(folder: Path, extra: list[str] = ()) -> dict[str, float]:
    """Uninterrupted run, killed run, resumed run, in ``folder``; returns :func:`compare` plus the step of
    the checkpoint the killed run left (``killed_at``)."""
    folder.mkdir(parents=True, exist_ok=True)
    args = [*TINY, *extra]
    reference = start([*args, "hydra.run.dir=reference"], folder, "reference.log")  # alongside the others
    try:
        last = folder / "killed" / "checkpoints" / "last.ckpt"
        killed = train_cli([*args, "hydra.run.dir=killed"], folder, "killed.log", kill_when=last)
        assert killed.returncode == -signal.SIGKILL, f"not killed (exit {killed.returncode}): {killed.stdout[-3000:]}"
        killed_at = load(last)["global_step"]
        resumed = train_cli([*args, "hydra.run.dir=resumed", f"ckpt_path={last}"], folder, "resumed.log")
        assert resumed.returncode == 0, resumed.stdout[-3000:]
        done = finish(reference, folder, "reference.log")
        assert done.returncode == 0, done.stdout[-3000:]
    finally:
        if reference.poll() is None:
            reference.kill()
            reference.wait()
    final = "checkpoints/last.ckpt"
    return {"killed_at": killed_at, **compare(folder / "reference" / final, folder / "resumed" / final)}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", default=["epoch", "mid"], choices=["epoch", "mid"])
    p.add_argument("--folder", type=Path, default=Path("outputs/crash_resume"))
    args = p.parse_args(argv)
    results = {}
    for case in args.cases:
        t0 = time.perf_counter()
        r = crash_and_resume(args.folder / case, EVERY_STEP if case == "mid" else [])
        results[case] = r
        print(f"case={case} killed_at={r['killed_at']} steps={r['steps_resumed']}/{r['steps_reference']} "
              f"lr={r['lr_resumed']:.6g}/{r['lr_reference']:.6g} max_abs_ema={r['max_abs_ema']:.3g} "
              f"max_abs_raw={r['max_abs_raw']:.3g} max_abs_adam={r['max_abs_adam']:.3g} "
              f"wall_s={time.perf_counter() - t0:.0f}", flush=True)
    return results


if __name__ == "__main__":
    main()
