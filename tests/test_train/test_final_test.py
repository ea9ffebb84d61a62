"""final_test=true: after training, the best (else last) checkpoint evaluated with test-time options, as
`python -m strongpose.evaluate` does, its statistics in metrics.json as test/*; its options checked first."""

import json

import pytest

from strongpose import evaluate
from strongpose.config_check import ConfigError
from strongpose.train import train


def test_the_trained_checkpoint_is_tested_with_flip_and_reported(train_config, tmp_path, monkeypatch):
    ran = []
    run = evaluate.run
    monkeypatch.setattr(evaluate, "run", lambda cfg: ran.append(cfg) or run(cfg))
    cfg = train_config(["final_test=true", "optimized_metric=test/AP",
                        "+final_test_options.codec={decode_nms_oks: 0.3}"], output_dir=tmp_path)
    metrics, objects = train(cfg)
    (ecfg,) = ran
    assert objects["trainer"].checkpoint_callback.monitor == "val/AP"  # test/AP comes after: chosen by its twin
    assert ecfg.test.flip is True and ecfg.ckpt_path == objects["best_checkpoint"]["path"]  # the best, with flip
    assert ecfg.data.val_annotations == str(objects["datamodule"].val_paths[1]) and ecfg.data.max_val_images == 2
    summary = json.loads((tmp_path / "test" / "summary.json").read_text())
    assert summary["options"]["flip"] is True and summary["options"]["codec"] == {"decode_nms_oks": 0.3}
    written = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert {f"test/{name}" for name in summary["stats"]} <= set(written)
    assert written["test/AP"] == summary["stats"]["AP"] == metrics["test/AP"]


@pytest.mark.parametrize("override, message", [
    ("final_test=no", "final_test must be true or false"),
    ("final_test_options.scales=[0]", "final_test_options.scales must be positive"),
    ("final_test_options.flip=no", "final_test_options.flip"),
    ("optimized_metric=test/APP", "the final test reports test/AP,"),
    ("optimized_metric=test/AP_easy", "CrowdPose's AP by crowd index"),
    ("+final_test_options.flipp=true", "final_test_options: unknown flipp"),
    ("+final_test_options.codec={stride: 16}", "final_test_options.codec: stride cannot change"),
])
def test_wrong_options_are_refused_before_training(train_config, tmp_path, override, message):
    cfg = train_config(["final_test=true", override], output_dir=tmp_path)  # (the last final_test= wins)
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


def test_a_test_metric_needs_the_final_test(train_config, tmp_path):
    with pytest.raises(ConfigError, match="optimized_metric='test/AP': test/\\* metrics come from the final test"):
        train(train_config(["optimized_metric=test/AP"], output_dir=tmp_path))


def test_the_csv_logger_gets_the_test_metrics_and_a_failing_test_keeps_the_training_metrics(train_config, tmp_path,
                                                                                             monkeypatch):
    cfg = train_config(["final_test=true", "logger=csv", "callbacks.coco_eval=null", "optimized_metric=test/AP"],
                       output_dir=tmp_path / "a")
    _, objects = train(cfg)
    assert objects["trainer"].checkpoint_callback.monitor == "val/loss"  # no val/AP to choose by
    (csv,) = (tmp_path / "a").rglob("metrics.csv")
    assert "test/AP" in csv.read_text().splitlines()[0]

    def fails(cfg):
        raise RuntimeError("the test failed")
    monkeypatch.setattr(evaluate, "run", fails)
    with pytest.raises(RuntimeError, match="the test failed"):
        train(train_config(["final_test=true"], output_dir=tmp_path / "b"))
    assert "val/loss" in json.loads((tmp_path / "b" / "metrics.json").read_text())["metrics"]
