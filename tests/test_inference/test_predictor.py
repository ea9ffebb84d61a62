"""strongpose.load / Predictor: inputs of every kind, batching, original-pixel results, test-time options."""

import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from oracle_module import OracleModule, marked_image, people

import strongpose
from strongpose.checkpoint import CONFIG_KEY, CheckpointError
from strongpose.codec import StrongPoseCodec
from strongpose.config_check import ConfigError
from strongpose.data.annotations import BadSample, read_image
from strongpose.data.sample import sample_paths
from strongpose.inference import Predictor
from strongpose.inference.images import as_rgb_array
from strongpose.structures import Poses


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint):
    return strongpose.load(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def sample_images():
    return sorted(sample_paths()[0].glob("*.jpg"))[:3]


def assert_same_poses(a, b, atol=1e-4):
    assert len(a) == len(b)
    torch.testing.assert_close(a.keypoints, b.keypoints, rtol=0, atol=atol)
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=atol)


def test_load_rebuilds_the_run_from_the_checkpoint(predictor, tiny_checkpoint):
    assert isinstance(predictor, Predictor)
    assert predictor.input_size == 64  # the run's data.input_size
    assert predictor.device == torch.device("cpu") and not predictor.module.training
    assert predictor.codec is predictor.module.codec
    assert predictor.codec.decode_vote_threshold == pytest.approx(0.001)  # the run's codec config
    assert predictor.checkpoint == tiny_checkpoint
    assert strongpose.load(tiny_checkpoint, input_size=96).input_size == 96


def test_path_array_and_tensor_give_the_same_people(predictor, sample_images):
    path = sample_images[0]
    array = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    from_path = predictor.predict(path)
    assert len(from_path) > 0
    assert_same_poses(predictor.predict(str(path)), from_path, atol=0)
    assert_same_poses(predictor.predict(array), from_path, atol=0)
    assert_same_poses(predictor.predict(torch.from_numpy(array).permute(2, 0, 1)), from_path, atol=0)
    # in original pixels: spread over the square the 64 px input covers (padding included)
    side = max(array.shape[:2])
    xy = from_path.keypoints[..., :2]
    assert xy.max() > 64 and (xy >= -0.5).all() and (xy < side + 8).all()


def test_predict_batch_equals_one_image_at_a_time(predictor, sample_images):
    batched = predictor.predict_batch(sample_images, batch_size=2)
    timing = predictor.last_timing
    assert len(batched) == 3
    assert timing["images"] == 3 and timing["network_ms"] > 0 and timing["decode_ms"] > 0
    for path, poses in zip(sample_images, batched):
        assert_same_poses(poses, predictor.predict(path))
    assert predictor.last_timing["images"] == 1  # per call


def test_a_bad_file_in_a_batch_is_skipped_when_asked_and_the_others_kept(predictor, sample_images, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"")
    paths = [sample_images[0], broken, sample_images[1]]
    with pytest.raises(BadSample, match="broken.jpg: empty image file"):
        predictor.predict_batch(paths, batch_size=2)
    got = predictor.predict_batch(paths, batch_size=2, skip_bad=True)
    assert got[1] is None and predictor.last_skipped == [(1, f"broken.jpg: empty image file ({broken})")]
    assert_same_poses(got[0], predictor.predict(sample_images[0]))
    assert_same_poses(got[2], predictor.predict(sample_images[1]))
    assert predictor.predict_batch([broken], skip_bad=True) == [None]


def test_thresholds(predictor, sample_images):
    plain = predictor.predict(sample_images[0])
    assert len(plain) >= 2
    cut = float(plain.scores[:2].mean())  # between the best two people
    kp_scores = plain.keypoints[0, :, 2]
    kp_cut = float(kp_scores[kp_scores > 0].median())
    strict = Predictor(predictor.module, predictor.input_size, "cpu", person_threshold=cut,
                       keypoint_threshold=kp_cut).predict(sample_images[0])
    assert len(strict) == 1 and strict.scores[0] >= cut
    scores = strict.keypoints[..., 2]
    assert ((scores == 0) | (scores >= kp_cut)).all() and (scores == 0).any()


@pytest.mark.parametrize("hw", [(240, 400), (400, 240)], ids=["landscape", "portrait"])
@pytest.mark.parametrize("options", [{}, {"flip": True}, {"scales": (1.0, 1.5)},
                                     {"scales": (0.75, 1.0, 1.5), "flip": True}, {"scales": (1.5,)}],
                         ids=["plain", "flip", "two-scales", "three-scales-flip", "only-1.5"])
def test_people_come_back_in_original_pixels(hw, options):
    # a wrong half-pixel convention alone would be off by 0.5 * (400 / 128 - 1) = 1 px here
    h, w = hw
    big, small = (min(h, w) * 0.75, min(h, w) * 0.7)
    gt = people([(w * 0.3, 0.1 * h, big), (w * 0.72, 0.15 * h, small)])
    module = OracleModule(StrongPoseCodec(stride=8, disk_radius=24.0), gt, hw)
    predictor = Predictor(module, 128, "cpu", **options)
    poses = predictor.predict(marked_image(h, w))
    assert len(poses) == 2
    found = poses.keypoints[poses.keypoints[:, :, 0].mean(1).argsort()]
    torch.testing.assert_close(found[..., :2], gt[..., :2], rtol=0, atol=0.02)
    scales = options.get("scales", (1.0,))
    assert module.input_sizes == [round(128 * s) for s in scales]
    assert module.flipped == [False, True] * len(scales) if options.get("flip") else not any(module.flipped)


@pytest.mark.parametrize("hw", [(240, 400), (400, 240)], ids=["landscape", "portrait"])
def test_drawn_maps_lie_on_the_people_in_original_pixels(hw):
    """predict's draw_maps: the maps drawn at the (letterboxed) network input and mapped back onto the image.
    On a grey image the body map leaves the people bright and dims the rest to 0.45 of it."""
    from strongpose.predict import draw_maps

    h, w = hw
    gt = people([(w * 0.3, 0.1 * h, min(h, w) * 0.75), (w * 0.72, 0.15 * h, min(h, w) * 0.7)])
    module = OracleModule(StrongPoseCodec(stride=4, disk_radius=6.0), gt, hw)  # small disks: background between
    predictor = Predictor(module, 128, "cpu")
    grey = np.full((h, w, 3), 200, np.uint8)
    image, maps, affine = predictor.maps(grey)
    assert image.shape == (3, 128, 128) and maps["skhm"].shape == (17, 32, 32) and affine.shape == (2, 3)
    maps["skhm"].zero_()  # ordinary tensors
    drawn = draw_maps(grey, predictor).astype(int)
    assert drawn.shape == (h, w, 3)
    dimmed = np.abs(drawn - 90).max(-1) <= 3  # 200 x 0.45
    at = gt[..., :2].round().long().reshape(-1, 2).numpy()
    assert not dimmed[at[:, 1], at[:, 0]].any()  # every keypoint in a drawn person
    # near the corners, far from both (the edge pixel beside the letterbox padding is half mixed with it)
    assert dimmed[[2, 2, -3, -3], [2, -3, 2, -3]].all()
    if w > h:  # between the two people (apart by 130 px; in the portrait image, 14 px: their bodies' maps meet)
        assert dimmed[h // 2, int(gt[0, :, 0].max() + gt[1, :, 0].min()) // 2]
    marked = marked_image(h, w)  # the oracle tells a mirrored input by its bright left half
    averaged = Predictor(module, 128, "cpu", flip=True).maps(marked)[1]  # flip-averaged: the same maps
    assert torch.allclose(averaged["bhm"], predictor.maps(marked)[1]["bhm"], atol=1e-3)


def test_a_person_seen_in_the_padding_is_no_detection():
    """A landscape image is resized to 128 x 77 and padded to 128 x 128: a person the network finds in the
    padding rows lies below the original image, where nobody can be."""
    h, w = 240, 400
    gt = people([(w * 0.3, 0.1 * h, 0.75 * h), (w * 0.7, 1.1 * h, 0.4 * h)])  # the second one below the image
    module = OracleModule(StrongPoseCodec(stride=8, disk_radius=24.0), gt, (h, w))
    poses = Predictor(module, 128, "cpu").predict(marked_image(h, w))
    assert len(poses) == 1
    torch.testing.assert_close(poses.keypoints[0, :, :2], gt[0, :, :2], rtol=0, atol=0.02)


@pytest.mark.parametrize("flip", [False, True])
def test_flip_test_pads_the_input_to_a_multiple_of_the_stride(flip):
    hw = (240, 400)
    gt = people([(120, 24, 180), (290, 36, 170)])
    module = OracleModule(StrongPoseCodec(stride=8, disk_radius=24.0), gt, hw, padded={128: 124})
    poses = Predictor(module, 124, "cpu", flip=flip).predict(marked_image(*hw))
    assert module.input_sizes == [128 if flip else 124]  # 124 is no multiple of 8: mirrored cells would not align
    found = poses.keypoints[poses.keypoints[:, :, 0].mean(1).argsort()]
    torch.testing.assert_close(found[..., :2], gt[..., :2], rtol=0, atol=0.02)


def test_the_flip_padding_is_black_uint8_as_the_transform_pads():
    """The network gets uint8 pixels; the extra rows and columns of the flip test are 0, the value the
    validation transform pads with (the network normalises both alike)."""
    module = OracleModule(StrongPoseCodec(stride=8), people([(60, 10, 80)]), (100, 120))
    predictor = Predictor(module, 124, "cpu", flip=True)
    image = np.full((100, 120, 3), 200, np.uint8)
    batch, _ = predictor.preprocess([image], 124)
    assert batch.dtype == torch.uint8 and batch.shape == (1, 3, 128, 128)
    assert (batch[..., 124:] == 0).all() and (batch[..., 124:, :] == 0).all()
    assert (batch[..., :103, :124] == 200).all()  # the resized image (124 x 103) keeps its pixels


def test_bad_inputs_say_what_is_wrong(predictor, tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        predictor.predict(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        predictor.predict(torch.zeros(32, 32, 3, dtype=torch.uint8))
    with pytest.raises(TypeError, match="path"):
        predictor.predict([1, 2, 3])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(BadSample, match="broken.jpg"):
        predictor.predict(broken)
    with pytest.raises(ValueError, match=r"H, W > 0, got \(10, 0, 3\)"):  # was an OpenCV resize assertion
        predictor.predict(np.zeros((10, 0, 3), np.uint8))
    with pytest.raises(ConfigError, match="batch_size must be >= 1, got 0"):
        predictor.predict_batch([], batch_size=0)
    for one in (str(broken), broken, np.zeros((32, 32, 3), np.uint8)):  # read as characters / rows before
        with pytest.raises(TypeError, match=r"predict_batch takes a list of images.*predict_batch\(\[image\]\)"):
            predictor.predict_batch(one)


def test_results_are_ordinary_tensors_the_caller_may_change(predictor, sample_images):
    # inference tensors (the network runs in inference mode) refuse in-place changes outside it
    for poses in (predictor.predict(sample_images[0]), Predictor(predictor.module, 96, "cpu", scales=(1.0, 1.5),
                                                                   person_threshold=0.0).predict(sample_images[0])):
        assert not poses.keypoints.is_inference() and not poses.scores.is_inference()
        poses.keypoints[..., :2] += 10
        poses.scores.mul_(0.5)


def test_options_set_after_construction_take_effect_and_are_reported():
    h, w = 240, 400
    gt = people([(w * 0.3, 0.1 * h, 0.75 * h), (w * 0.72, 0.15 * h, 0.7 * h)])
    module = OracleModule(StrongPoseCodec(stride=8, disk_radius=24.0), gt, (h, w))
    predictor = Predictor(module, 128, "cpu")
    predictor.scales = [1.0, 1.5]
    predictor.input_size = 96
    poses = predictor.predict(marked_image(h, w))
    assert module.input_sizes == [96, 144] and predictor.options["scales"] == [1.0, 1.5]
    found = poses.keypoints[poses.keypoints[:, :, 0].mean(1).argsort()]
    torch.testing.assert_close(found[..., :2], gt[..., :2], rtol=0, atol=0.05)
    predictor.precision = "bf16"
    assert predictor._autocast is torch.bfloat16 and predictor.options["precision"] == "bf16"
    with pytest.raises(ConfigError, match="test.scales must be positive"):
        predictor.scales = [1.0, -2]
    assert predictor.scales == (1.0, 1.5) and predictor.sizes == [96, 144]  # unchanged by the refused value
    with pytest.raises(ConfigError, match="input_size"):
        predictor.input_size = 0
    numpy_number = Predictor(module, 128, "cpu", keypoint_threshold=np.float32(0.3), person_threshold=torch.tensor(0.1))
    assert numpy_number.options["keypoint_threshold"] == pytest.approx(0.3)
    assert type(numpy_number.person_threshold) is float


def test_bf16_runs_the_network_in_bf16_and_decodes_float32(predictor, tiny_checkpoint, sample_images):
    """precision=bf16: autocast around the network only (its convolutions in bfloat16), maps back in float32."""
    fast = strongpose.load(tiny_checkpoint, device="cpu", precision="bf16")
    seen = []
    hook = fast.module.net.backbone.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    batch, _ = fast.preprocess([as_rgb_array(sample_images[0])], fast.input_size)
    with torch.inference_mode():
        low, full = fast.network(batch), predictor.network(batch)
    hook.remove()
    assert seen == [torch.bfloat16] and fast.options["precision"] == "bf16"
    for name, value in full.items():
        assert low[name].dtype == torch.float32
        scale = float(value.abs().max())
        assert float((low[name] - value).abs().max()) < 0.05 * max(scale, 1.0), name  # bf16: 8 bits of mantissa
    assert isinstance(fast.predict(sample_images[0]), Poses)


@pytest.mark.parametrize(("options", "message"), [
    ({"device": "gpu"}, "device='gpu' is not a device: Expected one of"),
    ({"scales": [0]}, r"test.scales must be positive, got \[0.0\]"),
    ({"input_size": 0}, "input_size=0: must be > 0"),
    ({"precision": "fp8"}, "precision must be one of"),
    ({"keypoint_threshold": "0.3"}, r"keypoint_threshold must be a number or None, got '0.3' \(str\)"),
])
def test_options_that_cannot_be_right_are_config_errors(tiny_checkpoint, options, message):
    """Reported in a line by predict / evaluate (exit 2), not as a traceback."""
    with pytest.raises(ConfigError, match=message):
        strongpose.load(tiny_checkpoint, **options)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_it_says_so(tiny_checkpoint):
    """It said the checkpoint could not be read (torch.load onto a device that is not there)."""
    with pytest.raises(ConfigError, match="device=cuda: torch sees no CUDA device here"):
        strongpose.load(tiny_checkpoint, device="cuda")


def test_a_phone_photo_is_read_as_it_is_shown(tmp_path):
    """A portrait photo is stored sideways with an EXIF orientation: a path is read turned upright (as viewers
    and OpenCV's videos do), while the data pipeline reads the stored grid that annotations refer to."""
    from PIL import Image

    shown = marked_image(40, 60)  # (H, W) = (40, 60): bright left half
    stored = Image.fromarray(shown).transpose(Image.Transpose.ROTATE_90)  # 60 x 40 on disk
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to show"
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=98)
    upright = as_rgb_array(tmp_path / "phone.jpg")
    assert upright.shape == (40, 60, 3)
    assert np.abs(upright.astype(int) - shown.astype(int)).mean() < 8  # JPEG's loss only
    assert read_image(tmp_path / "phone.jpg").shape == (60, 40, 3)


def test_import_strongpose_stays_light_until_load_is_used():
    code = ("import sys, strongpose; heavy = {'lightning', 'hydra', 'albumentations'} & set(sys.modules); "
            "assert not heavy, heavy; from strongpose import load; assert 'albumentations' in sys.modules; "
            "assert load is strongpose.load; assert 'load' in dir(strongpose)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("cls", ["PlainResNet", "HubResNet"])
def test_a_custom_backbone_is_rebuilt_without_imagenet_weights(tiny_checkpoint, tmp_path, cls):
    """load / evaluate / predict rebuild the backbone from the run config (the weights are in the checkpoint):
    one without a ``pretrained`` argument is built as it is, one with it gets ``pretrained=False``, whether or
    not its config names it (HubResNet defaults to ImageNet weights)."""
    checkpoint = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    run = checkpoint[CONFIG_KEY]["backbone"]
    checkpoint[CONFIG_KEY]["backbone"] = {"_target_": f"custom_backbone.{cls}", "arch": run["arch"],
                                          "output_stride": run["output_stride"], "neck_channels": run["neck_channels"]}
    checkpoint["hyper_parameters"]["backbone"]["class"] = cls  # as a run with it would have saved
    torch.save(checkpoint, tmp_path / "custom.ckpt")
    loaded = strongpose.load(tmp_path / "custom.ckpt", device="cpu")
    assert type(loaded.module.net.backbone).__name__ == cls
    image = cv2.imread(str(sorted(sample_paths()[0].glob("*.jpg"))[0]))[..., ::-1].copy()
    assert_same_poses(loaded.predict(image), strongpose.load(tiny_checkpoint, device="cpu").predict(image))


def test_a_checkpoint_whose_backbone_module_is_not_importable_says_so(tiny_checkpoint, tmp_path):
    """It got Hydra's "Error locating target ..." (exit 1), naming neither the checkpoint nor what to do."""
    checkpoint = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    checkpoint[CONFIG_KEY]["backbone"] = {**checkpoint[CONFIG_KEY]["backbone"], "_target_": "my_lab.nets.Trunk"}
    torch.save(checkpoint, tmp_path / "elsewhere.ckpt")
    with pytest.raises(CheckpointError, match=re.escape(
            f"checkpoint {tmp_path / 'elsewhere.ckpt'}: backbone._target_=my_lab.nets.Trunk cannot be imported here "
            f"(ImportError): put the module that defines it on PYTHONPATH")):
        strongpose.load(tmp_path / "elsewhere.ckpt", device="cpu")
