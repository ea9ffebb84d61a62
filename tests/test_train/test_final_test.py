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
    ("final_test_options.flip=no", "final_test_options.flip"),
    ("+final_test_options.flipp=true", "final_test_options: unknown flipp"),
    ("+final_test_options.codec={stride: 16}", "final_test_options.codec: stride cannot change"),
])
def test_wrong_options_are_refused_before_training(train_config, tmp_path, override, message):
    cfg = train_config(["final_test=true", override], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


def test_a_test_metric_needs_the_final_test(train_config, tmp_path):
    with pytest.raises(ConfigError, match="optimized_metric='test/AP' is not logged"):
        train(train_config(["optimized_metric=test/AP"], output_dir=tmp_path))
