"""A tiny real checkpoint, written once per session by strongpose.train (Lightning, run config included)."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from strongpose.train import CONFIG_DIR, train

# one step at input 64 on two sample images; near-zero decode thresholds so that the barely trained
# network still yields people to compare (they travel in the checkpoint's run config)
TINY_RUN = ("trainer=cpu", "logger=none", "data.input_size=64", "data.batch_size=2", "data.max_train_images=2",
            "data.max_val_images=2", "trainer.max_steps=1", "trainer.enable_model_summary=false",
            "callbacks.progress_bar=null", "codec.decode_vote_threshold=0.001", "codec.decode_peak_threshold=0.001")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_run")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*TINY_RUN, f"paths.output_dir={out}"])
    train(cfg)
    path = out / "checkpoints" / "last.ckpt"
    assert path.is_file()
    return path
