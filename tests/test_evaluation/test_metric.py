"""COCOKeypointAP gives exactly COCOeval's numbers, with 1 process or 2 (gloo), duplicates or not;
COCOEvalCallback logs them."""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import os
from pathlib import Path
import socket
import subprocess
import sys

import lightning as L
from lightning.pytorch.loggers import CSVLogger
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from strongpose.codec import StrongPoseCodec
from strongpose.data import COCOKeypointDataModule, sample_paths
from strongpose.evaluation import STAT_NAMES, COCOEvalCallback, COCOKeypointAP, coco_keypoint_stats, poses_to_coco
from strongpose.evaluation.coco_eval import _faster_cocoeval
from strongpose.structures import Poses

from ground_truth_module import GroundTruthModule

ANNOTATIONS = sample_paths()[1]
# input -> original pixels of the perturbed predictions: x = 2 u + 3, y = 2 v - 5 (exact in float32)
AFFINE = torch.tensor([[2.0, 0.0, 3.0], [0.0, 2.0, -5.0]])


@functools.lru_cache(maxsize=1)
def _coco() -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(ANNOTATIONS))


def _reference(results: list[dict], image_ids, sigmas=None) -> list[float]:
    """pycocotools' COCOeval, called directly."""
    coco = _coco()
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), "keypoints")
        ev.params.imgIds = sorted(image_ids)
        if sigmas is not None:
            ev.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats[:6]]


def _ground_truth_people(image_id: int) -> torch.Tensor:
    coco = _coco()
    anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False)) if a["num_keypoints"] > 0]
    return torch.tensor([a["keypoints"] for a in anns], dtype=torch.float32).reshape(-1, 17, 3)


def _predictions(perturbed: bool, seed: int = 0) -> list[tuple[int, Poses, torch.Tensor]]:
    """(image id, poses in input pixels, affine input -> original) per image of the sample.

    Perturbed: keypoints moved by multiples of 1/4 pixel, random scores, people shuffled, some dropped,
    some invented, one image without anybody; positions given in input pixels of ``AFFINE``.
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    for n, image_id in enumerate(sorted(_coco().getImgIds())):
        kp = _ground_truth_people(image_id)
        if not perturbed:
            out.append((image_id, Poses(kp, torch.ones(len(kp))), torch.eye(2, 3)))
            continue
        kp = kp.clone()
        kp[..., :2] += torch.round(torch.randn(kp[..., :2].shape, generator=g) * 4 * (1 + n % 4)) / 4
        kp[..., 2] = torch.rand(kp.shape[:2], generator=g)
        keep = torch.randperm(len(kp), generator=g)[: max(len(kp) - n % 2, 0)]
        kp = kp[keep]
        if n % 3 == 0:  # a false positive somewhere in the image
            fake = torch.round(torch.rand(1, 17, 3, generator=g) * 400) / 4
            kp = torch.cat([kp, fake])
        if n == 5:
            kp = kp[:0]
        kp[..., :2] = (kp[..., :2] - AFFINE[:, 2]) / 2.0  # original -> input pixels
        scores = torch.rand(len(kp), generator=g)
        out.append((image_id, Poses(kp, scores), AFFINE))
    return out


def _as_results(predictions) -> list[dict]:
    """What the metric should evaluate: people mapped back to original pixels by hand."""
    results = []
    for image_id, poses, affine in predictions:
        kp = poses.keypoints.clone().double()
        kp[..., :2] = kp[..., :2] * affine[0, 0].double() + affine[:, 2].double()
        results += Poses(kp, poses.scores).to_coco(image_id)
    return results


def _update(metric: COCOKeypointAP, predictions, batch_size: int = 3) -> None:
    for start in range(0, len(predictions), batch_size):
        chunk = predictions[start:start + batch_size]
        metric.update([p for _, p, _ in chunk], {"image_id": torch.tensor([i for i, _, _ in chunk]),
                                                 "affine": torch.stack([a for _, _, a in chunk])})


def _values(stats: dict) -> list[float]:
    assert list(stats) == list(STAT_NAMES)
    return [float(stats[name]) for name in STAT_NAMES]


def test_ground_truth_as_prediction_gives_cocoeval_numbers_and_ap_1():
    predictions = _predictions(perturbed=False)
    metric = COCOKeypointAP(ANNOTATIONS)
    _update(metric, predictions)
    values = _values(metric.compute())
    assert values == _reference(_as_results(predictions), _coco().getImgIds())
    assert values[0] == 1.0


@pytest.mark.parametrize("sigmas", [None, tuple(StrongPoseCodec().skeleton.sigmas)])
def test_perturbed_predictions_give_exactly_cocoeval_numbers(sigmas):
    predictions = _predictions(perturbed=True)
    metric = COCOKeypointAP(_coco(), sigmas=sigmas)
    _update(metric, predictions[::-1], batch_size=4)  # order of images does not matter
    values = _values(metric.compute())
    assert values == _reference(_as_results(predictions), _coco().getImgIds(), sigmas)
    assert 0.2 < values[0] < 0.95


def test_only_updated_images_are_evaluated_and_duplicates_count_once():
    predictions = _predictions(perturbed=True, seed=1)
    part = predictions[:7]
    metric = COCOKeypointAP(_coco())
    _update(metric, part)
    once = _values(metric.compute())
    assert once == _reference(_as_results(part), [i for i, _, _ in part])
    _update(metric, part[:2] + part[-1:])  # as a distributed sampler's padding repeats images
    assert _values(metric.compute()) == once
    metric.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):  # torchmetrics' warning
        assert _values(metric.compute()) == [0.0] * 6
    _update(metric, part)
    assert _values(metric.compute()) == once


def test_faster_coco_eval_backend_matches_pycocotools():
    sigmas = [2 * s for s in StrongPoseCodec().skeleton.sigmas]  # the sigmas must reach both
    results = _as_results(_predictions(perturbed=True, seed=2))
    ids = _coco().getImgIds()
    for s in (None, sigmas):
        reference = coco_keypoint_stats(_coco(), results, ids, s)
        assert reference == coco_keypoint_stats(_coco(), results, ids, s, backend="faster_coco_eval")
        assert list(reference.values()) == _reference(results, ids, s)
    predictions = _predictions(perturbed=True, seed=2)
    metrics = [COCOKeypointAP(ANNOTATIONS, backend=b) for b in ("pycocotools", "faster_coco_eval")]
    for metric in metrics:
        _update(metric, predictions)
    assert _values(metrics[0].compute()) == _values(metrics[1].compute())
    with pytest.raises(ValueError, match="nope"):
        COCOKeypointAP(ANNOTATIONS, backend="nope")
    with pytest.raises(ValueError, match="nope"):  # the callback, too, checks at construction
        COCOEvalCallback(backend="nope")



def test_faster_coco_eval_shares_the_ground_truth_and_leaves_the_results_alone():
    coco = _coco()
    results = _as_results(_predictions(perturbed=True, seed=2))
    before = copy.deepcopy(results)
    ids = coco.getImgIds()
    ev = _faster_cocoeval(coco, results)
    assert all(ev.cocoGt.anns[i] is coco.anns[i] for i in coco.anns)  # not a copy per compute
    assert results == before  # loadRes writes id, area and bbox into copies of the entries
    # one COCO object shared by both backends, in turn: the numbers do not move
    faster = coco_keypoint_stats(coco, results, ids, backend="faster_coco_eval")
    assert results == before
    assert coco_keypoint_stats(coco, results, ids) == faster
    assert results == before  # pycocotools' loadRes, too, writes into copies
    assert coco_keypoint_stats(coco, results, ids, backend="faster_coco_eval") == faster

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed_worker(rank: int, world_size: int, port: int, shares: list, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        metric = COCOKeypointAP(ANNOTATIONS)
        computed = []
        for share in shares:  # one scenario after the other, resetting in between
            _update(metric, share[rank], batch_size=2)
            computed.append(_values(metric.compute()))
            metric.reset()
        torch.save(computed, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_give_the_numbers_of_one(tmp_path):
    predictions = _predictions(perturbed=True, seed=3)
    single = COCOKeypointAP(ANNOTATIONS)
    _update(single, predictions)
    expected = _values(single.compute())
    assert expected == _reference(_as_results(predictions), _coco().getImgIds())
    half = len(predictions) // 2 + 1
    # like DistributedSampler: interleaved, padded with the first image; then one rank without images
    padded = predictions + predictions[:1]
    scenarios = [[padded[0::2], padded[1::2]], [predictions, []], [predictions[:half], predictions[half - 2:]]]
    mp.spawn(_distributed_worker, args=(2, _free_port(), scenarios, str(tmp_path / "stats")), nprocs=2, join=True)
    for rank in range(2):
        assert torch.load(tmp_path / f"stats.{rank}") == [expected] * 3


def test_callback_logs_cocoeval_of_decoded_outputs_in_original_pixels(tmp_path):
    codec = StrongPoseCodec(stride=4)
    data = COCOKeypointDataModule(codec, input_size=256, batch_size=5)
    callback = COCOEvalCallback(backend="faster_coco_eval")
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, callbacks=[callback], enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    (logged,) = trainer.validate(GroundTruthModule(codec), datamodule=data, verbose=False)
    assert set(logged) == {f"val/{name}" for name in STAT_NAMES}
    assert logged["val/AP"] > 0.8, logged  # decoded targets, mapped back to original pixels


class _MediaLogger(CSVLogger):
    """A logger that takes images, as WandbLogger does: records what it is given."""

    images: list = []

    def log_image(self, key, images, step=None, **kwargs):
        self.images.append((key, images, step))


def test_callback_sends_drawn_predictions_to_media_loggers(tmp_path):
    codec = StrongPoseCodec(stride=8)
    data = COCOKeypointDataModule(codec, input_size=128, batch_size=4)
    logger = _MediaLogger(tmp_path)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=logger, callbacks=[COCOEvalCallback(log_images=3)],
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        default_root_dir=tmp_path)
    trainer.validate(GroundTruthModule(codec), datamodule=data, verbose=False)
    ((key, images, _),) = logger.images
    assert key == "val/predictions" and len(images) == 3
    assert all(im.shape == (128, 128, 3) and im.dtype == np.uint8 for im in images)


def test_fast_dev_run_logs_val_ap(train_config, tmp_path):
    from strongpose.train import train

    cfg = train_config(["trainer.fast_dev_run=true"], output_dir=tmp_path)
    assert cfg.callbacks.coco_eval._target_ == "strongpose.evaluation.COCOEvalCallback"
    metrics, objects = train(cfg)
    assert {f"val/{name}" for name in STAT_NAMES} <= set(objects["trainer"].callback_metrics)
    assert 0.0 <= metrics["val/AP"] <= 1.0
    # and it can be dropped
    assert train_config(["callbacks.coco_eval=null"], output_dir=tmp_path).callbacks.coco_eval is None


def test_checkpoints_can_monitor_val_ap(train_config, tmp_path):
    from strongpose.train import train

    # the config's mode=auto: the highest AP is the best (mode=min, the default before, kept the lowest)
    cfg = train_config(["optimized_metric=val/AP", "callbacks.ema=null"], output_dir=tmp_path)
    metrics, objects = train(cfg)
    checkpoint = objects["trainer"].checkpoint_callback
    assert checkpoint.monitor == "val/AP" and checkpoint.mode == "max" and checkpoint.best_model_path
    assert float(checkpoint.best_model_score) == metrics["val/AP"]


def test_checkpoint_mode_auto_maximises_coco_statistics_and_minimises_the_rest():
    from strongpose.callbacks import ModelCheckpoint, monitor_mode

    assert [monitor_mode(name) for name in ("val/AP", "val/AP50", "val/AR", "test/APM", "AP")] == ["max"] * 5
    assert [monitor_mode(name) for name in ("val/loss", "val/loss_skhm", "val/APX", None)] == ["min"] * 4
    assert ModelCheckpoint(monitor="val/AP", mode="auto").mode == "max"
    assert ModelCheckpoint(monitor="val/AP", mode="min").mode == "min"  # said outright: kept


_DDP_SCRIPT = '''
import json, sys
import lightning as L, torch
from strongpose.codec import StrongPoseCodec
from strongpose.data import COCOKeypointDataModule
from strongpose.evaluation import COCOEvalCallback
from ground_truth_module import GroundTruthModule


if __name__ == "__main__":
    torch.set_num_threads(1)
    codec = StrongPoseCodec(stride=4)
    devices = int(sys.argv[1])
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", logger=False,
                        callbacks=[COCOEvalCallback()], enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False)
    (logged,) = trainer.validate(GroundTruthModule(codec), datamodule=COCOKeypointDataModule(codec, input_size=256,
                                 batch_size=2), verbose=False)
    # one file per rank: ranks printing to a shared stdout can interleave their lines
    with open(f"stats_{devices}_{trainer.global_rank}.json", "w") as f:
        json.dump(logged, f, sort_keys=True)
'''


@pytest.mark.slow
def test_lightning_ddp_on_two_cpu_processes_logs_the_numbers_of_one(tmp_path):
    # 13 images on 2 ranks: Lightning's DistributedSampler pads rank 1 with image 0
    script = tmp_path / "validate.py"
    script.write_text(_DDP_SCRIPT)
    # the script imports ground_truth_module from this folder
    env = {**os.environ, "WANDB_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))}
    for devices in (1, 2):
        done = subprocess.run([sys.executable, str(script), str(devices)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    single = (tmp_path / "stats_1_0.json").read_text()
    assert sorted(f.name for f in tmp_path.glob("stats_2_*.json")) == ["stats_2_0.json", "stats_2_1.json"]
    assert all((tmp_path / f"stats_2_{rank}.json").read_text() == single for rank in (0, 1))


def test_people_decoded_in_the_padding_are_no_detections():
    """A resized batch is padded: a person the network sees there maps outside the original image. The metric,
    poses_to_coco and the Predictor keep only people with a found keypoint on the image."""
    inside = torch.tensor([[[10.0, 20.0, 0.9], [30.0, 40.0, 0.0]]])
    outside = torch.tensor([[[10.0, 700.0, 0.9], [30.0, 40.0, 0.0]]])  # its only found keypoint below the image
    poses = Poses(torch.cat([inside, outside]), torch.tensor([0.9, 0.8]))
    assert len(poses.on_image((480, 640))) == 1 and poses.on_image((800, 640)) is poses
    meta = {"image_id": torch.tensor([7]), "affine": torch.eye(2, 3)[None], "orig_size": torch.tensor([[480, 640]])}
    assert [r["score"] for r in poses_to_coco([poses], meta)] == pytest.approx([0.9])
    metric = COCOKeypointAP(_coco(), sigmas=[0.05, 0.05])
    metric.update([poses], meta)
    results, _ = metric.results()
    assert [r["score"] for r in results] == pytest.approx([0.9])


def test_unfound_keypoints_guesses_land_on_the_image_found_ones_stay():
    """Decoding keeps guesses on the letterboxed input; on a narrow image mapped back they may still lie beyond it
    (x = 600 on a 300 px wide image): moved onto it, never further from a keypoint annotated there."""
    person = torch.tensor([[[100.0, 200.0, 0.9], [600.0, 650.0, 0.0], [-40.0, 10.0, 0.0], [310.0, 20.0, 0.7]]])
    poses = Poses(person, torch.tensor([0.9]))
    meta = {"image_id": torch.tensor([7]), "affine": torch.eye(2, 3)[None], "orig_size": torch.tensor([[600, 300]])}
    (result,) = poses_to_coco([poses], meta)
    kps = np.array(result["keypoints"]).reshape(-1, 3)
    assert kps[:, :2].tolist() == [[100.0, 200.0], [299.5, 599.5], [-0.5, 10.0], [310.0, 20.0]]
    assert poses.guesses_on_image((600, 300)).keypoints[0, 3].tolist() == pytest.approx([310.0, 20.0, 0.7])
