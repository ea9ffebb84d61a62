"""python -m strongpose.sweep_summary: one table of a sweep's runs from their folders' files."""

import csv
import json
import traceback

import pytest
from hydra import compose, initialize_config_dir

from strongpose.config_check import ConfigError, InputError
from strongpose.faults import NonFiniteLossError
from strongpose.sweep_summary import find_runs, ranked, summarise, table
from strongpose.train import CONFIG_DIR


def run_folder(root, name, overrides, metrics=None, best=None, failed=None, optimized="val/AP", step=100):
    """A run folder as train() leaves it: Hydra's overrides and config, then metrics.json or failed.txt."""
    folder = root / name
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (folder / ".hydra" / "config.yaml").write_text("seed: 0\ntrainer:\n  max_epochs: 1\n")
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps({
            "metrics": metrics, "best_checkpoint": best, "last_checkpoint": str(folder / "last.ckpt"),
            "global_step": step, "epoch": 1, "optimized_metric": optimized}))
    if failed is not None:
        (folder / "failed.txt").write_text(failed)
    return folder


@pytest.fixture
def sweep(tmp_path):
    common = ["trainer=cpu", "data.input_size=64"]
    # the sweeper's value: the best checkpoint's score when it monitors val/AP, else the final value
    run_folder(tmp_path, "0", [*common, "model.lr=0.001"], {"val/AP": 0.30, "val/loss": 2.0},
               {"path": "a.ckpt", "monitor": "val/AP", "score": 0.35})
    run_folder(tmp_path, "1", [*common, "model.lr=0.0003"], {"val/AP": 0.40, "val/loss": 1.5},
               {"path": "b.ckpt", "monitor": "val/loss", "score": 1.4})
    try:  # failed.txt as train writes it: the whole traceback, the error last
        raise NonFiniteLossError("loss is NaN")
    except NonFiniteLossError as err:
        failed = "".join(traceback.format_exception(err))
    run_folder(tmp_path, "2", [*common, "model.lr=0.01"], failed=failed)
    run_folder(tmp_path, "10", [*common, "model.lr=0.1"])  # killed: no file yet
    (tmp_path / "evaluate" / ".hydra").mkdir(parents=True)  # an evaluate run's folder: not a training run
    (tmp_path / "evaluate" / ".hydra" / "overrides.yaml").write_text("- ckpt_path=a.ckpt\n")
    (tmp_path / "evaluate" / ".hydra" / "config.yaml").write_text("ckpt_path: a.ckpt\n")
    return tmp_path


def config(*overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("sweep_summary", overrides=list(overrides))


def test_runs_are_ranked_by_what_the_sweeper_got_and_failures_say_why(sweep, capsys):
    runs = summarise(config(f"dir={sweep}"))
    assert [r.folder.name for r in runs] == ["1", "0", "2", "10"]  # 0.40 (final), 0.35 (best), then no result
    assert [r.status for r in runs] == ["done", "done", "failed", "unfinished"]
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "shared overrides: trainer=cpu data.input_size=64" in lines[0] and "4 runs" in lines[0]
    assert lines[1].split() == ["run", "model.lr", "val/AP", "step", "status"]
    assert lines[2].split()[:3] == ["1", "0.0003", "0.4000"] and lines[3].split()[:3] == ["0", "0.001", "0.3500"]
    assert "failed: NonFiniteLossError: loss is NaN" in lines[4] and "Traceback" not in out
    assert lines[-1] == "done 2, failed 1, unfinished 1"


def test_a_loss_ranks_lowest_first_and_the_csv_has_every_metric(sweep, tmp_path):
    path = tmp_path / "out" / "runs.csv"
    runs = summarise(config(f"dir={sweep}", "metric=val/loss", f"csv={path}"))
    assert [r.folder.name for r in runs][:2] == ["1", "0"]  # 1.4 (its best checkpoint's score) < 2.0
    rows = list(csv.DictReader(path.open()))
    assert [row["run"] for row in rows] == ["1", "0", "2", "10"]
    assert rows[0]["model.lr"] == "0.0003" and float(rows[0]["val/AP"]) == 0.40 and float(rows[0]["result"]) == 1.4
    assert rows[2]["status"] == "failed" and rows[2]["val/AP"] == ""


def test_mistakes_are_named(sweep, tmp_path):
    with pytest.raises(ConfigError, match="metric=val/AQ: no run .* logged it; they logged: val/AP, val/loss"):
        summarise(config(f"dir={sweep}", "metric=val/AQ"))
    with pytest.raises(InputError, match="nowhere: no such folder"):
        summarise(config(f"dir={tmp_path / 'nowhere'}"))
    (sweep / "0" / "metrics.json").write_text("{not json")
    with pytest.raises(InputError, match=r"0/metrics.json: not a StrongPose run's metrics file"):
        find_runs(sweep)
    assert "no training runs under" in table([], tmp_path / "empty", None)


def test_runs_with_other_optimized_metrics_show_each_ones_own(tmp_path):
    run_folder(tmp_path, "a", ["optimized_metric=val/loss"], {"val/AP": 0.5, "val/loss": 3.0}, optimized="val/loss")
    run_folder(tmp_path, "b", ["optimized_metric=val/AP"], {"val/AP": 0.2, "val/loss": 1.0}, optimized="val/AP")
    runs = find_runs(tmp_path)
    assert [r.result(None) for r in ranked(runs, None)] == [3.0, 0.2]  # a loss and an AP: folder order
    assert "optimized_metric" in table(runs, tmp_path, None).splitlines()[1]
    assert [r.folder.name for r in ranked(runs, "val/AP")] == ["a", "b"]  # one metric named: ranked by it
