"""The README's recipe for a skeleton of one's own ("Your own skeleton, data and backbone"), as written there:
a codec config in a --config-dir folder trains on a dataset of that skeleton, and typos get the key hint."""

import json
import re
from pathlib import Path

import pytest
from hydra.utils import instantiate

from strongpose import check_data
from strongpose.config_check import unknown_key_hint
from strongpose.data import sample_paths
from strongpose.train import CONFIG_DIR, train

README = Path(__file__).parents[2] / "README.md"
# COCO keypoints the README's head_hands_feet skeleton is made of
FROM_COCO = {"head": 0, "left_hand": 9, "right_hand": 10, "left_foot": 15, "right_foot": 16}


@pytest.fixture(scope="module")
def user_config_dir(tmp_path_factory):
    """DIR/codec/hands.yaml holding the README's YAML block, verbatim."""
    section = README.read_text().split("## Your own skeleton, data and backbone", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    folder = tmp_path_factory.mktemp("user_conf")
    (folder / "codec").mkdir()
    (folder / "codec" / "hands.yaml").write_text(block)
    return folder


def five_keypoint_sample(folder: Path) -> Path:
    """The embedded sample's annotations cut down to the head, hands and feet of the README's skeleton."""
    data = json.loads(Path(sample_paths()[1]).read_text())
    data["categories"][0]["keypoints"] = list(FROM_COCO)
    data["categories"][0]["skeleton"] = []
    for ann in data["annotations"]:
        kps = ann["keypoints"]
        ann["keypoints"] = [v for k in FROM_COCO.values() for v in kps[3 * k:3 * k + 3]]
        ann["num_keypoints"] = sum(v > 0 for v in ann["keypoints"][2::3])
    path = folder / "five.json"
    path.write_text(json.dumps(data))
    return path


def test_the_readme_skeleton_trains_and_evaluates(user_config_dir, train_config, tmp_path):
    annotations = five_keypoint_sample(tmp_path)
    images = sample_paths()[0]
    cfg = train_config(["codec=hands", f"hydra.searchpath=[file://{user_config_dir}]",
                        f"data.train_images={images}", f"data.train_annotations={annotations}",
                        f"data.val_images={images}", f"data.val_annotations={annotations}",
                        "trainer.max_steps=1"], output_dir=tmp_path / "run")
    codec = instantiate(cfg.codec)
    assert codec.skeleton.name == "head_hands_feet" and codec.channels["skhm"] == 5
    assert codec.channels["mid"] == 2 * 2 * 5  # 4 tree + 1 redundant edges, both ways
    metrics, _ = train(cfg)
    assert "val/AP" in metrics  # COCO AP with the skeleton's 5 sigmas ran
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_check_data_takes_the_skeleton_of_a_codec_of_ones_own(user_config_dir, tmp_path, capsys):
    five = five_keypoint_sample(tmp_path)
    own = ["--config-dir", str(user_config_dir), "codec=hands"]
    assert check_data.main([*own, f"annotations={five}"]) == check_data.CLEAN
    assert "0 problems" in capsys.readouterr().out
    # the 17-keypoint file against the 5-keypoint skeleton, and the 5-keypoint file against COCO's: refused
    assert check_data.main([*own, f"annotations={sample_paths()[1]}"]) == check_data.PROBLEMS
    assert "category 'person' has 17 keypoints, the head_hands_feet" in capsys.readouterr().out
    assert check_data.main([f"annotations={five}"]) == check_data.PROBLEMS
    assert "category 'person' has 5 keypoints, the coco" in capsys.readouterr().out


@pytest.mark.parametrize("form", ["--config-dir={}", "--config-dir {}", "-cd {}", "-cd {} --cfg job"])
def test_a_typo_gets_its_hint_with_a_config_dir_of_ones_own(user_config_dir, form):
    args = [*form.format(user_config_dir).split(" "), "codec=hands", "codec.decode_sigmaa=2", "model.lr=3"]
    hint = unknown_key_hint(args, CONFIG_DIR)
    assert hint is not None and hint.startswith("codec has no key 'decode_sigmaa' (did you mean 'decode_sigma'?)")
    assert "skeleton" in hint  # the user's codec config was composed
