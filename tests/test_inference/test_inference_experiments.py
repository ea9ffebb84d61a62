"""experiments/overfit_checkpoint.py and experiments/bench_test_time.py run end to end (tiny settings)."""

import runpy
from pathlib import Path

import torch

import strongpose

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
