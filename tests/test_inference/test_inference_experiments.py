"""experiments/overfit_checkpoint.py, bench_test_time.py and bench_infer.py run end to end (tiny settings)."""

import re
import runpy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import strongpose
from strongpose.codec import StrongPoseCodec
from strongpose.data import COCOKeypointDataset, sample_paths

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def script_main(name: str):
    return runpy.run_path(str(EXPERIMENTS / f"{name}.py"))["main"]  # not as __main__: main() is not run


def test_overfit_checkpoint_loads_with_the_same_weights(tmp_path, capsys):
    out = script_main("overfit_checkpoint")(["--out", str(tmp_path / "o.ckpt"), "--images", "2", "--steps", "1",
                                             "--input", "64", "--device", "cpu", "--bhm-weights", ""])
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"checkpoint={out} AP=")
    predictor = strongpose.load(out, device="cpu")  # strict: the composed config must build the same model
    assert predictor.input_size == 64 and predictor.module.net.backbone.out_channels == 128
    saved = torch.load(out, weights_only=True)["state_dict"]
    for name, value in predictor.module.state_dict().items():
        assert torch.equal(value, saved[name]), name


def test_bench_test_time_reports_each_option(tiny_checkpoint, capsys):
    rows = script_main("bench_test_time")(["--ckpt", str(tiny_checkpoint), "--images", "2", "--repeats", "1",
                                           "--options", "plain,flip"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "options=2 repeats=1"
    assert [line.split()[0] for line in lines[-3:-1]] == ["option=plain", "option=flip"]
    assert all(row["network_ms"] > 0 and 0 <= row["AP"] <= 1 for row in rows.values())
    assert rows["plain"]["people"] > 0


def test_bench_infer_times_each_configuration_and_reports_the_decode_share(tiny_checkpoint, capsys):
    # trained at 64 px, run at 128: 2 x 2 mosaics of validation views, fitted by the Predictor
    rows = script_main("bench_infer")(["--ckpt", str(tiny_checkpoint), "--backbones", "resnet18", "--batches", "2",
                                       "--input", "128", "--images", "2", "--repeats", "1", "--threads", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert "2 sample images at 128 px" in lines[0] and "fed 2 x 2 mosaics" in lines[0]
    assert re.fullmatch(r"max_decode_share=\d\.\d{3} target=0\.20 met=(True|False)", lines[-1])
    assert re.fullmatch(r"backbone=resnet18 batch=2 img_per_s=\S+ network_ms=\S+ decode_ms=\S+ preprocess_ms=\S+ "
                        r"decode_share=\S+", lines[-2])
    assert len(rows) == 1 and rows[0]["network_ms"] > 0 and rows[0]["preprocess_ms"] > 0
    assert float(lines[-1].split()[0].split("=")[1]) == pytest.approx(rows[0]["decode_share"], abs=1e-3)



def test_bench_infer_mosaics_tile_the_validation_views():
    sample_pictures = runpy.run_path(str(EXPERIMENTS / "bench_infer.py"))["sample_pictures"]
    codec = StrongPoseCodec()
    images, pictures, k = sample_pictures(SimpleNamespace(input_size=128, codec=codec), 64, 3)
    views = COCOKeypointDataset(*sample_paths(), codec, input_size=64, max_images=3)
    assert k == 2 and len(images) == len(pictures) == 3 and pictures[0].shape == (128, 128, 3)
    # picture 1: views 1, 2 / 0, 1 (cyclically), each as ValTransform makes it (what the model trained on)
    for (row, col), index in zip([(0, 0), (0, 1), (1, 0), (1, 1)], [1, 2, 0, 1]):
        tile = pictures[1][64 * row:64 * (row + 1), 64 * col:64 * (col + 1)]
        assert np.array_equal(tile, views.transformed(index).image)
    assert images[0].shape == views.load(0)[0].shape  # the whole images, for the network's timing
    whole, same, k = sample_pictures(SimpleNamespace(input_size=96, codec=codec), 64, 2)
    assert k == 1 and same is whole  # not trained at half the size or less: the images as they are
