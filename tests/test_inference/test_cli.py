"""python -m strongpose.evaluate / strongpose.predict: files written, bad images skipped, video, thresholds."""

import json
from pathlib import Path
import logging
import os
import re
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

import strongpose
from strongpose import evaluate, predict
from strongpose.config_check import ConfigError, InputError
from strongpose.data.sample import sample_paths
from strongpose.evaluation import STAT_NAMES
from strongpose.inference.images import video_writer
from strongpose.lit_module import CATEGORY
from strongpose.train import CONFIG_DIR


def config(name, overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(name, overrides=overrides)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Two sample images, one with a stem that is no number, a corrupt .jpg and a text file."""
    folder = tmp_path_factory.mktemp("images")
    first, second = sorted(sample_paths()[0].glob("*.jpg"))[:2]
    shutil.copy(first, folder / first.name)
    shutil.copy(second, folder / "street scene.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (folder / "notes.txt").write_text("not an image")
    return folder, first


def test_evaluate_writes_results_and_summary(tiny_checkpoint, tmp_path, capsys):
    cfg = config("evaluate", [f"ckpt_path={tiny_checkpoint}", f"paths.output_dir={tmp_path}",
                              "data.max_val_images=3", "test.flip=true"])
    summary = evaluate.run(cfg)
    out = capsys.readouterr().out
    assert "Average Precision" in out and str(tmp_path / "summary.json") in out  # COCOeval's table, where
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert set(summary["stats"]) == set(STAT_NAMES)
    assert list(summary["per_keypoint"]) == list(strongpose.COCO_PERSON.keypoints) and "Per keypoint" in out
    assert summary["images"] == 3 and summary["skipped"] == []
    assert summary["options"]["flip"] is True and summary["options"]["input_size"] == 64
    assert summary["timing"]["network_ms_per_image"] > 0 and summary["timing"]["decode_ms_per_image"] > 0
    results = json.loads((tmp_path / "results.json").read_text())
    first_ids = sorted(json.loads(sample_paths()[1].read_text())["images"], key=lambda i: i["id"])[:3]
    sizes = {i["id"]: (i["width"], i["height"]) for i in first_ids}
    assert len(results) == summary["people"] > 0 and {r["image_id"] for r in results} <= set(sizes)
    for r in results:  # original pixels: x up to the image width, not the 64 px input
        assert max(r["keypoints"][0::3]) <= sizes[r["image_id"]][0] + 16
    assert max(max(r["keypoints"][0::3]) for r in results) > 64
    # COCO results as written, nothing the evaluator adds (pycocotools' loadRes writes id, area, bbox)
    assert all(set(r) == {"image_id", "category_id", "keypoints", "score"} for r in results)


def test_evaluate_draws_the_images_fitted_worst(tiny_checkpoint, tmp_path):
    summary = evaluate.run(config("evaluate", [f"ckpt_path={tiny_checkpoint}", f"paths.output_dir={tmp_path}",
                                               "data.max_val_images=6", "draw_worst=3", "warmup=false"]))
    worst = summary["worst"]
    assert len(worst) == 3 and [w["oks"] for w in worst] == sorted(w["oks"] for w in worst)
    coco = json.loads(sample_paths()[1].read_text())
    names = {i["id"]: i["file_name"] for i in coco["images"]}
    for rank, row in enumerate(worst):
        path = Path(row["file"])
        assert path.name == f"{rank:02d}_{names[row['image_id']]}" and path.parent == tmp_path / "worst"
        drawn = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        original = cv2.cvtColor(cv2.imread(str(sample_paths()[0] / names[row["image_id"]])), cv2.COLOR_BGR2RGB)
        assert drawn.shape == original.shape
        # the ground truth in green at a labelled keypoint of each annotated person (JPEG: near, not exact)
        for a in coco["annotations"]:
            if a["image_id"] == row["image_id"] and not a.get("iscrowd") and a.get("num_keypoints", 0) > 0:
                kp = np.array(a["keypoints"]).reshape(-1, 3)
                x, y = kp[kp[:, 2] > 0][0, :2].round().astype(int)
                r, g, b = drawn[y, x].astype(int)
                assert g > 200 and g - max(r, b) > 60, (row, drawn[y, x])
    with pytest.raises(ConfigError, match="draw_worst draws the images a checkpoint is evaluated on"):
        evaluate.run(config("evaluate", [f"results={tmp_path / 'results.json'}", "draw_worst=2",
                                         f"paths.output_dir={tmp_path}"]))


def test_evaluate_refuses_an_unknown_backend_before_predicting(tmp_path):
    with pytest.raises(ValueError, match="nope"):
        evaluate.run(config("evaluate", ["ckpt_path=missing.ckpt", f"paths.output_dir={tmp_path}", "backend=nope"]))


def test_evaluate_skips_an_image_with_a_malformed_annotation_as_training_does(tiny_checkpoint, tmp_path, capsys):
    images_dir, annotations = sample_paths()
    coco = json.loads(annotations.read_text())
    first = min(image["id"] for image in coco["images"])
    bad = next(a for a in coco["annotations"] if a["image_id"] == first and not a.get("iscrowd"))
    bad["keypoints"] = bad["keypoints"][:-3]  # 16 keypoints: its image cannot be scored against it
    (tmp_path / "bad.json").write_text(json.dumps(coco))
    summary = evaluate.run(config("evaluate", [
        f"ckpt_path={tiny_checkpoint}", f"paths.output_dir={tmp_path}", f"data.val_images={images_dir}",
        f"data.val_annotations={tmp_path / 'bad.json'}", "data.max_val_images=2", "warmup=false"]))
    assert summary["images"] == 1 and [s["image_id"] for s in summary["skipped"]] == [first]
    assert f"(annotation id {bad['id']}): malformed annotation: 48 keypoint values" in summary["skipped"][0]["reason"]
    assert f"skipped image {first}" in capsys.readouterr().out

@pytest.mark.slow
def test_evaluate_cli(tiny_checkpoint, tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-m", "strongpose.evaluate", f"ckpt_path={tiny_checkpoint}",
                           "data.max_val_images=2", "warmup=false", "hydra.run.dir=run"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Evaluated 2 images" in done.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["images"] == 2 and (tmp_path / "run" / "results.json").is_file()
    log = (tmp_path / "run" / "evaluate.log").read_text()  # was empty: the lines were printed only
    assert "Evaluated 2 images" in log and "AP=" in log and log.count("Evaluated 2 images") == 1
    assert done.stdout.count("Evaluated 2 images") == 1  # and printed once


def test_image_ids_are_numbers_when_they_can_be_and_never_shared(tmp_path):
    assert predict.image_id("000000000785") == 785 and predict.image_id("street scene") == "street scene"
    assert predict.image_id("12\u00b3") == "12\u00b3"  # isdigit, but int() refuses it: the run died at the end
    paths = [tmp_path / name for name in ("1.jpg", "001.PNG", "7.jpg", "a.jpg", "a.png")]
    assert predict.image_ids(paths) == dict(zip(paths, ["1.jpg", "001.PNG", 7, "a.jpg", "a.png"]))
    # a stem that is another file's name: "1.jpg.png" would have taken "1.jpg", the name 1.jpg falls back to
    paths = [tmp_path / name for name in ("1.jpg", "01.jpg", "1.jpg.png", "1.jpg.png.webp")]
    ids = predict.image_ids(paths)
    assert len(set(ids.values())) == len(paths), ids
    assert ids == dict(zip(paths, ["1.jpg", "01.jpg", "1.jpg.png", "1.jpg.png.webp"]))


def test_predict_folder_skips_the_corrupt_file_and_does_the_rest(tiny_checkpoint, image_folder, tmp_path):
    folder, first = image_folder
    summary = predict.run(config("predict", [f"ckpt_path={tiny_checkpoint}", f"input={folder}",
                                             f"output={tmp_path}", "batch_size=2"]))
    assert summary["images"] == 2 and summary["num_skipped"] == 1
    assert summary["skipped"][0]["file"].endswith("broken.jpg") and "decode" in summary["skipped"][0]["reason"]
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    results = json.loads((tmp_path / "results.json").read_text())
    assert {r["file_name"] for r in results} == {first.name, "street scene.jpg"}
    ids = {r["file_name"]: r["image_id"] for r in results}
    assert ids[first.name] == int(first.stem) and ids["street scene.jpg"] == "street scene"
    drawn = cv2.imread(str(tmp_path / first.name))
    assert drawn.shape == cv2.imread(str(first)).shape  # drawn at the original size
    assert not (tmp_path / "broken.jpg").exists()


def test_predict_draws_the_maps_of_each_image_when_asked(tiny_checkpoint, image_folder, tmp_path):
    folder, first = image_folder
    summary = predict.run(config("predict", [f"ckpt_path={tiny_checkpoint}", f"input={first}", f"output={tmp_path}",
                                             "draw_maps=true", "draw_maps_edge=left_shoulder-left_elbow"]))
    maps = cv2.imread(str(tmp_path / "maps" / first.name))
    assert summary["maps"] == str(tmp_path / "maps")
    assert maps.shape == cv2.imread(str(first)).shape and not np.array_equal(maps, cv2.imread(str(tmp_path /
                                                                                                   first.name)))
    with pytest.raises(ConfigError, match="left_elbow-left_knee.*not a directed edge.*left_shoulder-left_elbow"):
        predict.run(config("predict", [f"ckpt_path={tiny_checkpoint}", f"input={first}", f"output={tmp_path}",
                                       "draw_maps=true", "draw_maps_edge=left_elbow-left_knee"]))
    video = write_video(tmp_path / "clip.mp4", [np.zeros((64, 96, 3), np.uint8)] * 2)
    with pytest.raises(ConfigError, match="draw_maps=true draws the maps of images; .*clip.mp4 is a video"):
        predict.run(config("predict", [f"ckpt_path={tiny_checkpoint}", f"input={video}", f"output={tmp_path}",
                                       "draw_maps=true"]))
    with pytest.raises(ConfigError, match="draw_maps_edge='left_shoulder-left_elbow' .*needs draw_maps=true"):
        predict.run(config("predict", [f"ckpt_path={tiny_checkpoint}", f"input={first}", f"output={tmp_path}",
                                       "draw_maps_edge=left_shoulder-left_elbow"]))


def test_predict_maps_never_replace_the_images_they_are_drawn_over(tiny_checkpoint, image_folder, tmp_path):
    _, first = image_folder
    inputs = tmp_path / "maps"  # the output's maps/ folder would be the input's folder
    inputs.mkdir()
    original = (inputs / first.name).write_bytes(first.read_bytes()) and (inputs / first.name).read_bytes()
    for source in (inputs, inputs / first.name):  # a folder or one of its images, drawn or not
        for draw in ("true", "false"):
            with pytest.raises(ConfigError, match="maps/ folder is the input's folder.*replace the originals"):
                predict.run(config("predict", [f"ckpt_path={tiny_checkpoint}", f"input={source}",
                                               f"output={tmp_path}", "draw_maps=true", f"draw={draw}"]))
    assert (inputs / first.name).read_bytes() == original and not (tmp_path / "results.json").exists()


def test_score_threshold_filters_people(tiny_checkpoint, image_folder, tmp_path):
    _, first = image_folder
    args = [f"ckpt_path={tiny_checkpoint}", f"input={first}", "draw=false"]
    every = predict.run(config("predict", [*args, f"output={tmp_path / 'all'}"]))
    scores = sorted(r["score"] for r in json.loads((tmp_path / "all" / "results.json").read_text()))
    assert len(scores) >= 2 and every["options"]["person_threshold"] is None
    cut = (scores[-1] + scores[-2]) / 2
    best = predict.run(config("predict", [*args, f"output={tmp_path / 'best'}", f"score_threshold={cut}"]))
    kept = json.loads((tmp_path / "best" / "results.json").read_text())
    assert best["options"]["person_threshold"] == cut
    assert [r["score"] for r in kept] == pytest.approx([scores[-1]])


def test_decoding_settings_change_at_test_time_and_are_recorded(tiny_checkpoint, image_folder, tmp_path):
    _, first = image_folder
    args = [f"ckpt_path={tiny_checkpoint}", f"input={first}", "draw=false"]
    every = predict.run(config("predict", [*args, f"output={tmp_path / 'all'}"]))
    one = predict.run(config("predict", [*args, f"output={tmp_path / 'one'}", "test.codec.decode_max_people=1"]))
    assert len(json.loads((tmp_path / "all" / "results.json").read_text())) >= 2 and every["options"]["codec"] == {}
    assert len(json.loads((tmp_path / "one" / "results.json").read_text())) == 1
    assert one["options"]["codec"] == {"decode_max_people": 1}


def test_predict_names_the_training_annotations_category(tiny_checkpoint, image_folder, tmp_path):
    checkpoint = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    assert checkpoint[CATEGORY] == 1  # the embedded sample's person category, saved by training
    checkpoint[CATEGORY] = 3  # e.g. a dataset whose people are category 3
    other = tmp_path / "category3.ckpt"
    torch.save(checkpoint, other)
    _, first = image_folder
    predict.run(config("predict", [f"ckpt_path={other}", f"input={first}", "draw=false", f"output={tmp_path}"]))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results and {r["category_id"] for r in results} == {3}


@pytest.mark.parametrize(("change", "message"), [
    ({"stride": 4}, "codec: stride cannot change after training"),
    ({"decode_nms_oks": "high"}, "codec.decode_nms_oks='high' (str): expected float"),
])
def test_only_decoding_settings_of_the_right_type_change_at_test_time(tiny_checkpoint, change, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        strongpose.load(tiny_checkpoint, device="cpu", codec=change)


def test_a_training_codec_setting_given_to_evaluate_is_refused(tiny_checkpoint, tmp_path):
    cfg = config("evaluate", [f"ckpt_path={tiny_checkpoint}", f"paths.output_dir={tmp_path}",
                              "+codec.decode_max_people=0"])
    with pytest.raises(ConfigError, match=r"test.codec.decode_\*, e.g. test.codec.decode_nms_oks=0.3"):
        evaluate.run(cfg)


def write_video(path, frames, fps: float = 5):
    """An mp4 of (64, 96, 3) BGR frames, written as predict writes its drawn videos."""
    writer = video_writer(path, fps, (96, 64))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def zero_frame_data(video, out, start_fraction: float = 0.0):
    """A copy of ``video`` with its frames' data (mp4v writes them before the index) zeroed from
    ``start_fraction`` of it on: the container intact, the frames from there undecodable."""
    data = bytearray(video.read_bytes())
    start, end = data.find(b"mdat"), data.find(b"moov")
    assert 0 < start < end
    first = start + 8 + int((end - start - 8) * start_fraction)
    data[first:end - 4] = bytes(end - 4 - first)
    out.write_bytes(bytes(data))
    return out


def test_predict_video(tiny_checkpoint, tmp_path):
    frame = cv2.resize(cv2.imread(str(sorted(sample_paths()[0].glob("*.jpg"))[0])), (96, 64))
    video = write_video(tmp_path / "clip.mp4", (np.roll(frame, 4 * i, axis=1) for i in range(5)))
    summary = predict.run(config("predict", [f"ckpt_path={tiny_checkpoint}", f"input={video}",
                                             f"output={tmp_path / 'out'}", "batch_size=2"]))
    assert summary["images"] == 5
    drawn = cv2.VideoCapture(summary["drawn"])
    frames = 0
    while drawn.read()[0]:
        frames += 1
    assert frames == 5 and drawn.get(cv2.CAP_PROP_FRAME_WIDTH) == 96
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results and {r["image_id"] for r in results} <= set(range(5))
    assert {r["file_name"] for r in results} == {"clip.mp4"}
    assert summary["options"]["track"] is True and summary["options"]["track_max_age"] == 5
    ids = [r["track_id"] for r in results]  # tracked: ids from 0, one person once per frame
    assert min(ids) == 0 and all(isinstance(i, int) for i in ids)
    for f in range(5):
        in_frame = [r["track_id"] for r in results if r["image_id"] == f]
        assert len(in_frame) == len(set(in_frame))
    predict.run(config("predict", [f"ckpt_path={tiny_checkpoint}", f"input={video}", f"output={tmp_path / 'plain'}",
                                   "track=false", "draw=false"]))
    assert all("track_id" not in r for r in json.loads((tmp_path / "plain" / "results.json").read_text()))


def test_predict_fails_on_a_video_it_cannot_read(tiny_checkpoint, tmp_path):
    """A video OpenCV cannot open, or one whose frames cannot be decoded, is an input error (exit 2), not an empty
    result, nor an error about the drawn video it could not write."""
    video = write_video(tmp_path / "clip.mp4", (np.full((64, 96, 3), 60 * i, np.uint8) for i in range(3)))
    zeroed = zero_frame_data(video, tmp_path / "zeroed.mp4")  # every frame's data
    fake = tmp_path / "fake.mp4"
    fake.write_text("not a video\n")
    for path, message in ((fake, "cannot open video"), (zeroed, "no decodable video stream|no frame of video")):
        for draw in ("true", "false"):
            with pytest.raises(InputError, match=message):
                predict.run(config("predict", [f"ckpt_path={tiny_checkpoint}", f"input={path}", f"draw={draw}",
                                               f"output={tmp_path / 'out'}"]))
    assert not list((tmp_path / "out").glob("*_poses.mp4"))  # no empty drawn video is left


def test_predict_warns_when_a_video_ends_well_before_its_header_says(tiny_checkpoint, tmp_path, caplog):
    rng = np.random.default_rng(0)
    video = write_video(tmp_path / "clip.mp4", (rng.integers(0, 255, (64, 96, 3), dtype=np.uint8) for _ in range(20)),
                        fps=10)
    damaged = zero_frame_data(video, tmp_path / "damaged.mp4", 0.5)  # OpenCV stops reading halfway
    with caplog.at_level(logging.WARNING, logger="strongpose.predict"):
        summary = predict.run(config("predict", [f"ckpt_path={tiny_checkpoint}", f"input={damaged}", "draw=false",
                                                 f"output={tmp_path / 'out'}"]))
    assert 0 < summary["images"] < 20
    assert f"read {summary['images']} frames of the 20 its header gives" in caplog.text


def test_predict_refuses_bad_inputs(tiny_checkpoint, image_folder, tmp_path):
    folder, _ = image_folder
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        predict.run(config("predict", [f"ckpt_path={tiny_checkpoint}", f"input={tmp_path / 'nothing-here'}"]))
    with pytest.raises(ValueError, match="replace the originals"):
        predict.run(config("predict", [f"ckpt_path={tiny_checkpoint}", f"input={folder}", f"output={folder}"]))
    image = next(folder.glob("street*.jpg"))  # one image, output its own folder: the drawing would replace it
    with pytest.raises(ValueError, match="replace the originals"):
        predict.run(config("predict", [f"ckpt_path={tiny_checkpoint}", f"input={image}", f"output={folder}"]))
    existing = tmp_path / "results.json"
    existing.write_text("[]")
    with pytest.raises(ConfigError, match="output .*results.json is a file"):
        predict.run(config("predict", [f"ckpt_path={tiny_checkpoint}", f"input={image}", f"output={existing}"]))
    assert existing.read_text() == "[]"
    with pytest.raises(ValueError, match="unknown file type"):
        predict.run(config("predict", [f"ckpt_path={tiny_checkpoint}", f"input={folder / 'notes.txt'}"]))


@pytest.mark.parametrize("command, args, message", [
    # a string that bool() or int() would have taken, or a failure with a traceback after the model was loaded
    ("evaluate", ["test.flip=no"], r"test.flip='no' \(str\): expected bool"),
    ("evaluate", ["test.scales=1.5"], r"test.scales=1.5 \(float\): expected list"),
    ("evaluate", ["data.batch_size=abc"], r"data.batch_size='abc' \(str\): expected int"),
    ("evaluate", ["data.input_size=abc"], r"data.input_size='abc' \(str\): expected int or null"),
    ("evaluate", ["data.num_workers=-1"], r"data.num_workers=-1: must be >= 0"),
    ("evaluate", ["data.val_batch_size=0"], r"data.val_batch_size=0: must be > 0"),
    ("predict", ["draw=no"], r"draw='no' \(str\): expected bool"),
    ("predict", ["batch_size=abc"], r"batch_size='abc' \(str\): expected int"),
    ("predict", ["batch_size=0"], r"batch_size=0: must be > 0"),
    ("predict", ["num_workers=-1"], r"num_workers=-1: must be >= 0"),
    ("predict", ["score_threshold=abc"], r"score_threshold='abc' \(str\): expected float or null"),
])
def test_options_of_the_wrong_type_or_range_are_refused_before_the_model_loads(command, args, message, tmp_path):
    base = ["ckpt_path=never-read.ckpt"] + ([f"input={tmp_path}"] if command == "predict" else [])
    with pytest.raises(ConfigError, match=message):
        {"evaluate": evaluate, "predict": predict}[command].run(config(command, [*base, *args]))


def test_the_predictor_takes_only_a_bool_for_flip(tiny_checkpoint):
    with pytest.raises(ConfigError, match="flip must be True or False, got 'no'"):
        strongpose.load(tiny_checkpoint, flip="no")
    assert strongpose.load(tiny_checkpoint, flip=np.bool_(True)).flip is True


@pytest.mark.parametrize("module, args, hint", [
    ("strongpose.evaluate", ["ckpt_path=x.ckpt", "test.flipp=true"],
     "test has no key 'flipp' (did you mean 'flip'?); its keys: codec, flip, keypoint_threshold"),
    ("strongpose.predict", ["ckpt_path=x.ckpt", "input=.", "batch_sise=2"],
     "the config has no key 'batch_sise' (did you mean 'batch_size'?); its keys: batch_size, ckpt_path"),
])
def test_a_typo_in_a_key_lists_the_keys_and_fails(cli, tmp_path, module, args, hint):
    done = cli(module, [*args, "hydra.run.dir=run"], tmp_path, timeout=120, check=False)
    assert done.returncode != 0
    assert "is not in struct" in done.stderr and hint in done.stderr  # Hydra's message, then ours
    assert not (tmp_path / "run").exists()  # refused before the run started


def test_evaluate_and_predict_fail_when_no_image_could_be_read(tiny_checkpoint, tmp_path, capsys):
    """An AP of 0 or an empty result would look like an answer: no readable image is an error (exit 2 from the
    command line, the reason of the first image in the message), as a missing image folder is."""
    images, annotations = sample_paths()
    wrong = tmp_path / "wrong"  # a folder that exists, holding other images
    wrong.mkdir()
    shutil.copy(sorted(images.glob("*.jpg"))[0], wrong / "other.jpg")
    cfg = config("evaluate", [f"ckpt_path={tiny_checkpoint}", f"paths.output_dir={tmp_path / 'e'}",
                              f"data.val_images={wrong}", f"data.val_annotations={annotations}", "data.max_val_images=2"])
    with pytest.raises(InputError, match=r"no image of .* could be used .* all 2 skipped, the first: .*not found"):
        evaluate.run(cfg)
    for selection in ("data.max_val_images=0", "data.max_val_images=-1"):  # none, or all but the last
        with pytest.raises(InputError, match=r"data.max_val_images=-?[01]: must be > 0"):
            evaluate.run(config("evaluate", [f"ckpt_path={tiny_checkpoint}", selection]))
    no_images = tmp_path / "no_images.json"
    no_images.write_text(json.dumps({**json.loads(annotations.read_text()), "images": [], "annotations": []}))
    with pytest.raises(InputError, match="no_images.json: it lists no images"):
        evaluate.run(config("evaluate", [f"ckpt_path={tiny_checkpoint}", f"data.val_images={images}",
                                         f"data.val_annotations={no_images}"]))
    with pytest.raises(FileNotFoundError, match="data.val_images: image folder not found"):
        evaluate.run(config("evaluate", [f"ckpt_path={tiny_checkpoint}", f"data.val_images={tmp_path / 'nope'}",
                                         f"data.val_annotations={annotations}"]))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(InputError, match=r"no image of .* could be read: all 1 skipped, the first: .*a\.jpg"):
        predict.run(config("predict", [f"ckpt_path={tiny_checkpoint}", f"input={broken}",
                                       f"output={tmp_path / 'p'}"]))
    assert json.loads((tmp_path / "p" / "summary.json").read_text())["num_skipped"] == 1  # why, for the record


def test_input_errors_are_one_line_and_exit_2(cli, tmp_path):
    done = cli("strongpose.evaluate", ["ckpt_path=missing.ckpt", "hydra.run.dir=run"], tmp_path, timeout=120,
               check=False)
    assert done.returncode == 2
    message, where = done.stderr.strip().splitlines()[-2:]
    assert message == "CheckpointError: checkpoint missing.ckpt does not exist"
    assert re.fullmatch(r"\(raised at .*strongpose.checkpoint\.py:\d+; HYDRA_FULL_ERROR=1 shows the traceback\)", where)
    assert "Traceback" not in done.stderr
    # in a multirun every job runs, and Hydra reports the failure (an exit would end the sweep at the first)
    swept = cli("strongpose.evaluate", ["-m", "ckpt_path=a.ckpt,b.ckpt", "hydra.sweep.dir=sweep"], tmp_path,
                timeout=120, check=False)
    assert swept.returncode != 0 and "#1 : ckpt_path=b.ckpt" in swept.stdout + swept.stderr
    assert "CheckpointError: checkpoint a.ckpt does not exist" in swept.stderr


def test_images_in_subfolders_are_named_not_silently_left_out(tiny_checkpoint, tmp_path, caplog):
    first, second = sorted(sample_paths()[0].glob("*.jpg"))[:2]
    nested = tmp_path / "data" / "group1" / "sub"
    nested.mkdir(parents=True)
    shutil.copy(first, nested / first.name)
    with pytest.raises(ConfigError, match=r"holds no images \(.*\); 1 in its subfolders, which are not searched: "
                                          r"give a subfolder as input"):
        predict.run(config("predict", [f"ckpt_path={tiny_checkpoint}", f"input={tmp_path / 'data'}",
                                       f"output={tmp_path / 'out'}"]))
    shutil.copy(second, tmp_path / "data" / second.name)
    with caplog.at_level(logging.WARNING):
        summary = predict.run(config("predict", [f"ckpt_path={tiny_checkpoint}", f"input={tmp_path / 'data'}",
                                                 f"output={tmp_path / 'out'}", "draw=false"]))
    assert summary["images"] == 1 and "1 images in its subfolders are not predicted" in caplog.text
