"""strongpose.load_onnx: an exported file alone makes a Predictor that finds the checkpoint's people."""

import sys

import numpy as np
import pytest
import torch

from hydra import compose, initialize_config_dir

import strongpose
from strongpose import evaluate, predict
from strongpose.codec import StrongPoseCodec
from strongpose.config_check import ConfigError
from strongpose.data.sample import sample_paths
from strongpose.export import describe_input, run
from strongpose.inference.onnx import CODEC_KEY, INPUT_SIZE_KEY, OnnxFileError
from strongpose.train import CONFIG_DIR

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    run({"ckpt_path": str(tiny_checkpoint), "output": str(path), "check": False})
    return path


@pytest.fixture(scope="module")
def images():
    return sorted(sample_paths()[0].glob("*.jpg"))[:3]


def test_the_file_alone_finds_the_checkpoints_people(exported, tiny_checkpoint, images):
    from_file = strongpose.load_onnx(exported)
    from_checkpoint = strongpose.load(tiny_checkpoint, device="cpu")
    assert from_file.input_size == from_checkpoint.input_size == 64  # the size it was exported at
    assert from_file.codec.skeleton == from_checkpoint.codec.skeleton
    assert from_file.codec.decode_peak_threshold == from_checkpoint.codec.decode_peak_threshold == 0.001
    assert from_file.category_id == from_checkpoint.category_id
    batch, _ = from_checkpoint.preprocess([np.asarray(strongpose.inference.images.as_rgb_array(images[0]))], 64)
    with torch.inference_mode():
        ours, theirs = from_file.network(batch), from_checkpoint.network(batch)
    for name, value in theirs.items():
        torch.testing.assert_close(ours[name], value, rtol=0, atol=1e-3 * max(1.0, float(value.abs().max())))
    got, expected = from_file.predict_batch(images), from_checkpoint.predict_batch(images)
    assert sum(len(p) for p in expected) > 0
    for a, b in zip(got, expected):
        assert len(a) == len(b)
        torch.testing.assert_close(a.keypoints, b.keypoints, rtol=0, atol=0.05)


def test_decoding_settings_change_and_wrong_ones_are_refused(exported):
    predictor = strongpose.load_onnx(exported, codec={"decode_max_people": 3}, flip=True)
    assert predictor.codec.decode_max_people == 3 and predictor.options["codec"] == {"decode_max_people": 3}
    with pytest.raises(ConfigError, match="stride"):
        strongpose.load_onnx(exported, codec={"stride": 16})


def test_a_file_without_the_codec_says_what_to_pass(exported, tmp_path, images):
    old = tmp_path / "old.onnx"
    old.write_bytes(exported.read_bytes())
    describe_input(old)  # the metadata an export before the codec was written there
    with pytest.raises(ConfigError, match="codec=StrongPoseCodec"):
        strongpose.load_onnx(old)
    codec = strongpose.load_onnx(exported).codec
    predictor = strongpose.load_onnx(old, codec=codec, input_size=64)
    assert predictor.codec is codec and len(predictor.predict_batch(images)) == 3


def test_metadata_and_bad_files(exported, tmp_path):
    import onnxruntime as ort

    meta = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"]).get_modelmeta()
    assert meta.custom_metadata_map[INPUT_SIZE_KEY] == "64"
    assert '"keypoints": ["nose"' in meta.custom_metadata_map[CODEC_KEY]  # the skeleton written out
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        strongpose.load_onnx(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(OnnxFileError, match="bad.onnx is not an ONNX file"):
        strongpose.load_onnx(bad)


def test_a_fixed_shape_file_runs_any_batch_at_its_size_only(tiny_checkpoint, tmp_path, images):
    path = tmp_path / "fixed.onnx"
    run({"ckpt_path": str(tiny_checkpoint), "output": str(path), "check": False, "dynamic": False,
         "input_size": 60})  # off the stride grid: a flip test would pad it to 64
    predictor = strongpose.load_onnx(path)
    assert predictor.module.fixed_batch == 1 and len(predictor.predict_batch(images, batch_size=2)) == 3
    for options, message in (({"input_size": 96}, "fixed input of 60 x 60"), ({"flip": True}, "flip pads")):
        with pytest.raises(ConfigError, match=message):
            strongpose.load_onnx(path, **options)
    predictor.scales = [1.0, 1.5]  # set after loading: the network names the file and its size
    with pytest.raises(ConfigError, match="fixed.onnx takes 60 x 60 px only"):
        predictor.predict(images[0])


def test_a_whole_codec_must_be_the_files_as_trained(exported, images):
    stored = strongpose.load_onnx(exported).codec
    with pytest.raises(ConfigError, match="differs from .*tiny.onnx's in stride"):
        strongpose.load_onnx(exported, codec=StrongPoseCodec(stride=16, skeleton=stored.skeleton))
    predictor = strongpose.load_onnx(exported, codec={"decode_max_people": 2})
    whole = strongpose.load_onnx(exported, codec=predictor.codec)  # the same, passed as a codec
    assert whole.codec_changes == {"decode_max_people": 2}
    assert [len(p) for p in whole.predict_batch(images)] == [len(p) for p in predictor.predict_batch(images)]


def test_crafted_or_foreign_files_are_refused_by_name(exported, tmp_path):
    crafted = tmp_path / "crafted.onnx"
    crafted.write_bytes(exported.read_bytes())
    for codec, message in (('{"_target_": "zz_never_imported.Codec", "skeleton": "coco"}', "not StrongPose's"),
                           ('{"_target_": "json.JSONDecoder", "skeleton": "coco"}', "not a StrongPoseCodec"),
                           ('{"stride": "8", "skeleton": "coco"}', "does not make a codec"),
                           ("[1, 2]", "does not make a codec")):
        describe_input(crafted, {CODEC_KEY: codec})
        with pytest.raises(OnnxFileError, match=f"crafted.onnx: its strongpose.codec metadata .*{message}"):
            strongpose.load_onnx(crafted)
    assert "zz_never_imported" not in sys.modules
    conv = tmp_path / "conv.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 2, 1), (torch.zeros(1, 3, 8, 8),), str(conv), dynamo=False)
    with pytest.raises(OnnxFileError, match="conv.onnx is not a StrongPose export"):
        strongpose.load_onnx(conv)
    with pytest.raises(ConfigError, match="has no NoSuchExecutionProvider"):
        strongpose.load_onnx(exported, providers=["NoSuchExecutionProvider"])
    predictor = strongpose.load_onnx(exported, providers="CPUExecutionProvider")  # one name, not its letters
    with pytest.raises(ConfigError, match="runs in float32"):
        predictor.precision = "bf16"
    assert "file=" in repr(predictor) and predictor.precision == "32"
    with pytest.raises(ConfigError, match="whole number"):
        strongpose.load_onnx(exported, input_size="abc")


def config(name, overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(name, overrides=overrides)


def test_evaluate_and_predict_take_the_onnx_file(exported, tiny_checkpoint, tmp_path, images):
    """`evaluate ckpt_path=model.onnx` checks that an export keeps the checkpoint's AP."""
    common = ["data.max_val_images=3"]
    onnx = evaluate.run(config("evaluate", [f"ckpt_path={exported}", f"paths.output_dir={tmp_path / 'a'}", *common]))
    ckpt = evaluate.run(config("evaluate", [f"ckpt_path={tiny_checkpoint}", f"paths.output_dir={tmp_path / 'b'}",
                                            *common]))
    assert onnx["people"] == ckpt["people"] > 0
    assert onnx["stats"] == pytest.approx(ckpt["stats"], abs=1e-3)
    summary = predict.run(config("predict", [f"ckpt_path={exported}", f"input={images[0]}",
                                             f"output={tmp_path / 'c'}", "test.codec.decode_max_people=2"]))
    assert summary["images"] == 1 and summary["options"]["codec"] == {"decode_max_people": 2}
    with pytest.raises(ConfigError, match="precision=bf16: an ONNX file runs in float32"):
        predict.run(config("predict", [f"ckpt_path={exported}", f"input={images[0]}", f"output={tmp_path / 'd'}",
                                       "precision=bf16"]))
