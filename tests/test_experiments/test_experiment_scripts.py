"""The benchmark scripts under experiments/ run end to end (tiny settings) and print their summary line."""

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def load(name: str):
    """The script experiments/<name>.py as a module (experiments/ is on pytest's pythonpath)."""
    return importlib.import_module(name)


def last_line_keys(capsys) -> dict[str, str]:
    last = capsys.readouterr().out.strip().splitlines()[-1]
    return dict(item.split("=", 1) for item in last.split())


def test_overfit_runs_and_reports(capsys):
    run = load("overfit").main(["--images", "2", "--steps", "2", "--input", "128", "--device", "cpu"])
    keys = last_line_keys(capsys)
    assert {"AP", "AP50", "loss_start", "loss_end", "steps", "wall_s"} <= keys.keys()
    assert keys["steps"] == "2" and 0.0 <= run.stats["AP"] <= 1.0
    assert float(keys["AP"]) == pytest.approx(run.stats["AP"], abs=5e-4)
    assert run.input_size == 128 and run.module.codec.stride == 8  # what overfit_checkpoint.py saves


def test_bench_train_runs_and_reports(capsys):
    result = load("bench_train").main(["--input", "96", "--batch", "2", "--steps", "1", "--rounds", "1",
                                       "--workers", "0", "--device", "cpu"])
    keys = last_line_keys(capsys)
    assert {"full_ips", "bare_ips", "ratio"} <= keys.keys()
    assert result["full_ips"] > 0 and result["bare_ips"] > 0
    assert float(keys["ratio"]) == pytest.approx(result["ratio"], abs=1e-3)


def test_bench_blocks_start_in_steady_state_after_taking_the_stock():
    """The workers' stock (2 a worker) is taken, then as many untimed steps run, each drawing its own batch."""
    drawn, steps = iter(range(100)), []
    load("bench_train").into_steady_state(lambda: steps.append(next(drawn)), drawn, workers=3)
    assert steps == list(range(6, 12)) and next(drawn) == 12
    whole_waves = load("bench_train").whole_waves  # timed blocks of whole waves of the workers' batches
    assert (whole_waves(20, 14), whole_waves(28, 14), whole_waves(3, 1), whole_waves(3, 0)) == (28, 28, 3, 3)


def test_count_step_ops_splits_the_full_step_and_does_not_depend_on_the_input_size(capsys):
    script = load("count_step_ops")
    small = script.main(["--backbone", "resnet18", "--input", "64"])
    keys = last_line_keys(capsys)
    assert int(keys["full_ops"]) == small["full_ops"] == sum(small[part] for part in script.PARTS)
    assert 0 < small["bare_ops"] < small["full_ops"] and small["losses"] > 0
    assert float(keys["ceiling"]) == pytest.approx(small["bare_ops"] / small["full_ops"], abs=1e-3)
    assert 0 < small["full_views"] < small["full_ops"] and 0 < small["bare_views"] < small["bare_ops"]
    assert float(keys["ceiling_no_views"]) == pytest.approx(
        (small["bare_ops"] - small["bare_views"]) / (small["full_ops"] - small["full_views"]), abs=1e-3)
    assert script.main(["--backbone", "resnet18", "--input", "96", "--batch", "3"]) == small
    frozen = script.main(["--backbone", "resnet18", "--override", "backbone.norm=frozen"])  # the override applies
    assert last_line_keys(capsys)["backbone.norm"] == "frozen" and frozen["full_ops"] < small["full_ops"]


def test_loop_overhead_splits_a_fit_step_and_puts_the_functions_back(capsys):
    script = load("loop_overhead")
    before = (torch.autograd.backward, torch._foreach_copy_, script.L.LightningModule.log)
    result = script.main(["trainer.max_epochs=3"])  # 18 steps, the first 12 untimed
    keys = last_line_keys(capsys)
    assert keys["steps"] == "5" and float(keys["loop_ms"]) == pytest.approx(result["loop_ms"], abs=0.01)
    assert all(result[part] > 0 for part in ("forward", "backward", "optimizer", "averaging", "data", "log"))
    assert 0 < result["loop_ms"] < result["wall"]
    assert (torch.autograd.backward, torch._foreach_copy_, script.L.LightningModule.log) == before


def test_bench_data_runs_and_reports(capsys):
    result = load("bench_data").main(["--input", "128", "--images", "3"])
    keys = last_line_keys(capsys)
    assert {"images_per_s", "ms_per_image", "load_ms", "augment_ms", "encode_ms"} <= keys.keys()
    assert result["ms_per_image"] >= result["encode_ms"] > 0


def test_bench_data_measures_the_loader_it_is_asked_for(capsys):
    load("bench_data").main(["--input", "64", "--images", "1", "--loader-workers", "1", "--batch", "3",
                             "--batches", "2"])
    loader = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("loader "))
    keys = dict(part.split("=") for part in loader.split()[1:])
    assert keys["workers"] == "1" and keys["batch"] == "3" and float(keys["images_per_s"]) > 0
    # per image: uint8 image 12 KB + targets at stride 8 with float16 offsets 29 KB (float32 pixels and
    # offsets: 97 KB)
    assert float(keys["mb_per_image"]) == pytest.approx(0.0408, abs=0.001)


def test_overfit_builds_the_neck_width_it_is_given():
    run = load("overfit").main(["--images", "1", "--steps", "1", "--input", "64", "--device", "cpu",
                                "--neck-channels", "32"])
    assert run.module.net.backbone.out_channels == 32


@pytest.mark.slow  # a Python start with torch and Lightning per script: ~5 s each, over a minute in all
@pytest.mark.parametrize("script", sorted(p.name for p in EXPERIMENTS.glob("*.py")))
def test_every_script_answers_help(script):
    env = {**os.environ, "WANDB_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1"}
    done = subprocess.run([sys.executable, str(EXPERIMENTS / script), "--help"], cwd=EXPERIMENTS.parent, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "usage" in done.stdout.lower()


@pytest.mark.parametrize(("script", "shown"), [
    ("overfit_checkpoint", ["--out OUT", "--images IMAGES"]),  # its --out required: --help failed on it
    ("loop_overhead", ["[KEY=VALUE ...]", "backbone=resnet50"]),  # given to Hydra as an override: a parse error
])
def test_help_of_the_scripts_that_failed_it(capsys, script, shown):
    with pytest.raises(SystemExit) as exited:
        load(script).main(["--help"])
    out = capsys.readouterr().out
    assert exited.value.code == 0 and out.startswith("usage:") and all(text in out for text in shown)


@pytest.mark.slow
def test_the_gpu_session_script_runs_every_step_in_its_quick_form(tmp_path):
    """QUICK=1 on the CPU: each step of the prepared device script runs and logs (the GPU session's check)."""
    env = {**os.environ, "QUICK": "1", "PYTHON": sys.executable, "OUT": str(tmp_path), "TMPDIR": str(tmp_path)}
    done = subprocess.run(["bash", str(EXPERIMENTS / "gpu_session.sh")], cwd=EXPERIMENTS.parent, env=env,
                          capture_output=True, text=True, timeout=900)  # a hang guard (~3.5 min idle)
    log = (tmp_path / "gpu_session.log").read_text()
    assert done.returncode == 0, done.stdout + done.stderr
    assert log.count("full_ips=") == 5  # bench_train: default and COCO networks, compiled, fp32 grid, R152 bf16 b8
    assert log.count(" backbone.norm=frozen model.heads.num_convs=2 model.heads.width=256 full_ips=") == 1
    assert log.count(" compile=default full_ips=") == 1  # torch.compile really ran: 1.5 min on the 2-core CPU
    assert log.count("wait_ms=") == 1 and "fit_ms=" in log  # bench_step_parts in steady state
    assert "val/AP=" in log and "\nDone: checkpoint" in log  # the packaged trainer config, end to end
    assert " loop_ms=" in log  # loop_overhead.py
    assert re.search(r"\n\d+ passed", log)  # the codec tests


def test_bench_step_parts_runs_and_reports(capsys):
    default = torch.multiprocessing.get_sharing_strategy()
    result = load("bench_step_parts").main(["--backbone", "resnet18", "--input", "64", "--batch", "2",
                                            "--precision", "32", "--steps", "1", "--rounds", "1", "--workers", "1",
                                            "--device", "cpu", "--sharing", "file_system", "--collate", "default",
                                            "--override", "backbone.norm=frozen"])
    keys = last_line_keys(capsys)
    parts = ("bare_ms", "net_ms", "fused_ms", "issue_ms", "loader_ms", "full_ms", "wait_ms", "fit_ms")
    assert set(parts) <= keys.keys() and keys["workers"] == "1" and keys["sharing"] == "file_system"
    assert keys["collate"] == "default" and keys["backbone.norm"] == "frozen"
    assert torch.multiprocessing.get_sharing_strategy() == default  # put back for the rest of the process
    from strongpose.data import collate as collate_module
    assert collate_module.packed_collate is not torch.utils.data.default_collate
    assert all(result[name] > 0 for name in parts)
    assert result["full_ms"] >= result["wait_ms"]  # the wait is part of the full step
    assert float(keys["full_ms"]) == pytest.approx(result["full_ms"], abs=0.05)
    assert "compile" not in keys  # and with --compile (bench_train's argument; 1.3 min to run on the 2-core CPU):
    parts_args = load("bench_step_parts").parse_args
    assert parts_args(["--compile"]).compile == "default"
    assert parts_args(["--compile", "reduce-overhead"]).compile == "reduce-overhead"


def test_probe_loader_gil_counts_batches_under_each_main_thread_load(capsys):
    probe = load("probe_loader_gil")
    for main, collate in (("idle", "packed"), ("python", "default")):
        result = probe.main(["--main", main, "--collate", collate, "--input", "64", "--batch", "2", "--seconds", "1"])
        keys = last_line_keys(capsys)
        assert keys["main"] == main and keys["sharing"] == "file_descriptor" and keys["collate"] == collate
        assert result["batches_per_s"] > 0 and float(keys["batches_per_s"]) == pytest.approx(result["batches_per_s"], abs=0.01)
    from strongpose.data import collate as collate_module
    assert collate_module.packed_collate is not torch.utils.data.default_collate  # put back
