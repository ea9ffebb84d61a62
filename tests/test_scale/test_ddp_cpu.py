"""DDP on two CPU processes (gloo) through the real command line.

One epoch of 2 processes x batch 2 against 1 process x batch 4 on the same 8 images: the same images in
each optimiser step, the same LR, the same losses and weights (to tolerance), validation AP computed once
over the whole validation set, checkpoints written once.

BatchNorm: with statistics computed per batch, 2 x 2 images cannot match 1 x 4 (measured: gradients
differ by more than their own norm), and SyncBatchNorm, which would make them match, is CUDA-only in
torch. So BatchNorm is kept in eval mode (fixed statistics; ``Recorder(eval_batchnorm=True)``). The losses
divide by the processes' mean counts (valid offset cells, heat-map weights; one all-reduce per step), so
the mean of the ranks' gradients is the global batch's gradient: step losses agree to 1e-4 and the
weights to 3e-4 of the epoch's change (float32 sums in another order, largest in the first layers, where
the images' gradients nearly cancel; in float64 the gradients agree to 1e-9, tests/test_models/test_losses.py).
With per-process counts the gap was 6.5e-3, which the test refuses.
SGD rather than AdamW: its update is proportional to the gradient, so a wrong LR scale or gradient sum
instead of mean would show (AdamW normalises both away).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from strongpose.train import train

HERE = Path(__file__).parent
BASE_LR = 0.1
COMMON = [
    "logger=none", "data.input_size=64", "data.max_train_images=8", "data.max_val_images=5",
    "data.val_batch_size=1",  # one image per validation batch: its loss is that image's
    "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1", "trainer.enable_model_summary=false",
    "trainer.precision=32-true", "callbacks.ema=null", "callbacks.progress_bar=null", "model/optimizer=sgd",
    f"model.lr={BASE_LR}", "+callbacks.record._target_=scale_recorder.Recorder", "+callbacks.record.eval_batchnorm=true",
    "callbacks.coco_eval._target_=scale_recorder.RecordingCOCOEval",
]


@pytest.mark.slow
def test_the_documented_ddp_command_runs_on_two_cpu_processes(tmp_path, train_cli):
    done = train_cli(["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.fast_dev_run=true",
                      "logger=none", "data.input_size=64", "data.batch_size=1", "data.max_train_images=2",
                      "data.max_val_images=2", "hydra.run.dir=run"], tmp_path, importable=[HERE])
    assert "Starting with 2 processes" in done.stdout + done.stderr
    assert "distributed_backend=gloo" in done.stdout + done.stderr
    assert sum(line.startswith("Done:") for line in done.stdout.splitlines()) == 1  # rank 0 speaks


def test_a_local_multirun_of_a_ddp_run_is_refused_before_it_starts(tmp_path, cli):
    """Lightning would run the command line again for the second process, and that one would run the sweep."""
    done = cli("strongpose.train", ["-m", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                                    "trainer.fast_dev_run=true", "logger=none", "data.input_size=64",
                                    "hydra.sweep.dir=sweep"], tmp_path, timeout=300, check=False)
    out = done.stdout + done.stderr
    assert done.returncode != 0 and "cannot start a 2-process DDP run" in out, out[-2000:]
    assert "Starting with 2 processes" not in out and not list(tmp_path.rglob("*.ckpt"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, train_cli, train_config) -> dict[str, Path]:
    """The 2-process run (command line, as a user starts it) and the 1-process run (in this process)."""
    root = tmp_path_factory.mktemp("ddp")
    train_cli([*COMMON, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=2",
               "hydra.run.dir=ddp", "+callbacks.record.out=ddp/record", "+callbacks.coco_eval.record_to=ddp/record"],
              root, importable=[HERE])  # scale_recorder, for the DDP children too
    one = root / "one"
    train(train_config([*COMMON, "trainer=cpu", "data.batch_size=4", f"+callbacks.record.out={one}/record",
                        f"+callbacks.coco_eval.record_to={one}/record"], output_dir=one, tiny=False))
    return {"ddp": root / "ddp", "one": one}


def _records(run: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((run / "record").glob("rank*.json"))]


@pytest.mark.slow
def test_each_step_sees_the_same_images_and_each_rank_a_disjoint_shard(runs):
    (one,), ddp = _records(runs["one"]), _records(runs["ddp"])
    assert len(ddp) == 2 and [r["world_size"] for r in ddp] == [2, 2] and one["world_size"] == 1
    steps = [set(step["ids"]) for step in one["train"]]
    assert len(steps) == 2 and all(len(s) == 4 for s in steps)
    for k, expected in enumerate(steps):
        assert set(ddp[0]["train"][k]["ids"]) | set(ddp[1]["train"][k]["ids"]) == expected
    shards = [{i for step in rank["train"] for i in step["ids"]} for rank in ddp]
    assert not shards[0] & shards[1] and shards[0] | shards[1] == set().union(*steps)


@pytest.mark.slow
def test_lr_losses_and_weights_match_one_process_with_the_global_batch(runs):
    (one,), ddp = _records(runs["one"]), _records(runs["ddp"])
    # global batch 2 x 2 = 1 x 4: the same LR, scaled from the reference batch of 16
    assert one["lr"] == pytest.approx(BASE_LR * 4 / 16) and [r["lr"] for r in ddp] == [one["lr"]] * 2
    for k, step in enumerate(one["train"]):
        mean_of_ranks = (ddp[0]["train"][k]["loss"] + ddp[1]["train"][k]["loss"]) / 2
        assert mean_of_ranks == pytest.approx(step["loss"], rel=1e-4)

    start = torch.load(runs["one"] / "record" / "initial.pt", weights_only=True)
    assert all(torch.equal(start[k], v) for k, v in torch.load(runs["ddp"] / "record" / "initial.pt",
                                                                 weights_only=True).items())
    weights = {name: torch.load(runs[name] / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
               for name in ("one", "ddp")}
    floats = [k for k, v in start.items() if v.is_floating_point()]
    change = math.sqrt(sum(float((weights["one"][k] - start[k]).square().sum()) for k in floats))
    gap = math.sqrt(sum(float((weights["ddp"][k] - weights["one"][k]).square().sum()) for k in floats))
    # a wrong LR scale or a sum of gradients would put the gap at 50-100 % of the change, per-process
    # loss normalisers at 0.65 %
    assert change > 0 and gap < 2e-3 * change, (gap, change)


@pytest.mark.slow
def test_validation_covers_every_image_once(runs):
    (one,), ddp = _records(runs["one"]), _records(runs["ddp"])
    val_ids = sorted(i for batch in one["val"] for i in batch["ids"])
    assert len(val_ids) == 5
    # 5 images on 2 ranks: Lightning's DistributedSampler repeats one to give both ranks 3
    seen = [i for rank in ddp for batch in rank["val"] for i in batch["ids"]]
    assert len(seen) == 6 and sorted(set(seen)) == val_ids
    # ... and the metric evaluates each image once, the same set on every rank and as with one process
    for run, ranks in (("ddp", 2), ("one", 1)):
        for rank in range(ranks):
            evaluated = json.loads((runs[run] / "record" / f"evaluated_rank{rank}.json").read_text())
            assert evaluated == [val_ids]
    assert [r["metrics"]["val/AP"] for r in ddp] == [pytest.approx(one["metrics"]["val/AP"], abs=0.02)] * 2
    # each image's validation loss is the one-process one (to the weights' tolerance)
    single = {batch["ids"][0]: batch["loss"] for batch in one["val"]}
    for batch in (b for rank in ddp for b in rank["val"]):
        assert batch["loss"] == pytest.approx(single[batch["ids"][0]], rel=2e-3)


@pytest.mark.slow
def test_checkpoints_are_written_once(runs):
    for run in runs.values():
        assert sorted(p.name for p in run.rglob("*.ckpt")) == ["epoch000-step000002.ckpt", "last.ckpt"]
        assert not list(run.rglob("*.tmp"))


@pytest.mark.slow
def test_submitit_local_multirun_runs_one_job_per_run(tmp_path, train_cli):
    """The launcher path of hydra/launcher=slurm (hydra-submitit-launcher: pickled job, one process per task,
    one folder per run), on this machine with submitit's local executor."""
    train_cli(["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "trainer=cpu", "logger=none",
               "data.input_size=64", "data.batch_size=1", "data.max_train_images=1", "data.max_val_images=1",
               "trainer.fast_dev_run=true", "callbacks.coco_eval=null", "backbone=resnet18,resnet34",
               "hydra.sweep.dir=sweep"], tmp_path, importable=[HERE])
    sweep = tmp_path / "sweep"
    for job, backbone in enumerate(("resnet18", "resnet34")):
        assert f"backbone={backbone}" in (sweep / str(job) / ".hydra" / "overrides.yaml").read_text()
    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.out"))
    assert logs.count("Done: checkpoint") == 2  # each job ran train() to its end


@pytest.mark.slow
def test_every_rank_validates_the_averaged_model_that_is_saved(tmp_path, train_cli):
    """Each rank's EMA follows its own batches' BatchNorm statistics: they are averaged over the ranks before
    validation (52 of 52 BN buffers differed between 2 ranks, by up to 0.17) and before the checkpoint."""
    train_cli(["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "logger=none", "data.input_size=64",
               "data.batch_size=2", "data.max_train_images=8", "data.max_val_images=2", "trainer.max_epochs=1",
               "trainer.check_val_every_n_epoch=1", "callbacks.coco_eval=null", "callbacks.progress_bar=null",
               "+callbacks.bn._target_=scale_recorder.BatchNormAtValidation", "+callbacks.bn.out=bn",
               "hydra.run.dir=run"], tmp_path, importable=[HERE])
    ranks = [torch.load(tmp_path / f"bn/bn_rank{r}.pt", weights_only=True) for r in range(2)]
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    running = [k for k in ranks[0] if k.endswith("running_var")]
    assert running and all(torch.allclose(ranks[0][k], ranks[1][k]) for k in ranks[0])
    assert all(torch.allclose(ranks[0][k], saved[k]) for k in running)
