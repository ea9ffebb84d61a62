import pytest
import torch

from strongpose.skeleton import COCO_PERSON
from strongpose.structures import Poses
from strongpose.viz import draw_batch, draw_poses


def a_person(score=0.9):
    kp = torch.zeros(1, 17, 3)
    kp[0, :, 0] = torch.linspace(10, 90, 17)
    kp[0, :, 1] = 50
    kp[0, :, 2] = score
    return kp


def test_keypoints_take_the_skeleton_colour():
    image = torch.zeros(3, 100, 100, dtype=torch.uint8)
    kp = a_person()
    out = draw_poses(image, Poses(kp, torch.tensor([0.9])), COCO_PERSON, radius=2)
    for k in (0, 5, 6):  # nose (centre), left and right shoulder
        x, y = int(kp[0, k, 0]), int(kp[0, k, 1])
        assert tuple(out[:, y, x].tolist()) == COCO_PERSON.colors[k]
    assert image.sum() == 0  # the input is left alone


def test_low_scores_are_not_drawn():
    image = torch.zeros(3, 100, 100, dtype=torch.uint8)
    weak = draw_poses(image, Poses(a_person(0.01), torch.tensor([0.9])), COCO_PERSON, score_threshold=0.1)
    assert weak.sum() == 0
    dropped = draw_poses(image, Poses(a_person(), torch.tensor([0.2])), COCO_PERSON, person_threshold=0.5)
    assert dropped.sum() == 0


def test_draw_batch_returns_images_for_loggers():
    batch = torch.full((2, 3, 64, 64), 128, dtype=torch.uint8)  # the data module's uint8 images
    poses = [Poses(a_person() * torch.tensor([0.6, 1, 1]), torch.tensor([0.9])), Poses(torch.zeros(0, 17, 3), torch.zeros(0))]
    drawn = draw_batch(batch, poses, COCO_PERSON)
    assert [d.shape for d in drawn] == [(64, 64, 3), (64, 64, 3)]
    assert (drawn[0] != drawn[1]).any() and (drawn[1] == 128).all()


def _one_person_targets(codec, size=96):
    """Targets of one person with four keypoints whose disks (radius 12) do not overlap."""
    kp = torch.zeros(1, 17, 3)
    where = {0: (20.0, 20.0), 7: (75.0, 58.0), 9: (75.0, 30.0), 16: (40.0, 80.0)}  # nose, l. elbow, l. wrist, r. ankle
    for k, (x, y) in where.items():
        kp[0, k] = torch.tensor([x, y, 2.0])
    return codec.encode(kp, (size, size)), where


def test_draw_targets_puts_disks_of_the_type_colour_on_the_keypoints():
    from strongpose.codec import StrongPoseCodec
    from strongpose.viz import draw_targets

    codec = StrongPoseCodec(stride=8, disk_radius=12.0)
    targets, where = _one_person_targets(codec)
    image = torch.full((3, 96, 96), 100, dtype=torch.uint8)
    out = draw_targets(image, targets, codec, short_step=0, alpha=0.5)
    assert out.shape == (3, 96, 96) and out.dtype == torch.uint8
    assert (image == 100).all()  # the input is left alone
    no_disks = draw_targets(image, {**targets, "skhm": torch.zeros_like(targets["skhm"])}, codec, short_step=0)
    for k, (x, y) in where.items():  # half the type's colour over the picture without disks
        blended = 0.5 * no_disks[:, int(y), int(x)].float() + 0.5 * torch.tensor(COCO_PERSON.colors[k])
        assert (out[:, int(y), int(x)].float() - blended).abs().max() <= 1
    # far from every keypoint and off the body map: only dimmed, no disk
    assert (out[:, 90, 2] < 100).all() and (out[:, 90, 2] == no_disks[:, 90, 2]).all()

    plain = draw_targets(image, targets, codec, short_step=0)
    changed = (draw_targets(image, targets, codec, short_step=1) != plain).any(0)
    ys, xs = changed.nonzero(as_tuple=True)  # short arrows stay inside the disks (radius 12)
    assert len(ys) > 0
    near = torch.stack([((xs - x) ** 2 + (ys - y) ** 2).float().sqrt() for x, y in where.values()]).amin(0)
    assert near.max() <= 12 + 8  # disk radius plus a cell (arrows start at cell centres)
    mid = draw_targets(image, targets, codec, short_step=0, mid_edge=("left_wrist", "left_elbow"), mid_step=1)
    ys, xs = (mid != plain).any(0).nonzero(as_tuple=True)  # white arrows from the wrist's disk to the elbow
    assert len(ys) > 0 and ys.min() >= 30 - 12 - 8 and ys.max() <= 58 + 2 and (xs - 75).abs().max() <= 12 + 8


def test_draw_targets_refuses_maps_of_another_size_and_unknown_edges():
    import pytest

    from strongpose.codec import StrongPoseCodec
    from strongpose.viz import draw_targets

    codec = StrongPoseCodec(stride=8, disk_radius=12.0)
    targets, _ = _one_person_targets(codec)
    with pytest.raises(ValueError, match="does not fit a 64x96 image"):
        draw_targets(torch.zeros(3, 64, 96, dtype=torch.uint8), targets, codec)
    with pytest.raises(ValueError, match="unknown"):
        draw_targets(torch.zeros(3, 96, 96, dtype=torch.uint8), targets, codec, mid_edge=("nose", "tail"))


def test_draw_targets_script_writes_a_png(tmp_path, capsys):
    import cv2
    import draw_targets as module  # experiments/ (pytest's pythonpath)

    out = module.main(["--out", str(tmp_path / "t.png"), "--image", "2", "--input", "128"])
    picture = cv2.imread(str(out))
    assert picture.shape[2] == 3 and max(picture.shape[:2]) == 128  # padding cropped: the longer side stays
    data = module.COCOKeypointDataset(*module.sample_paths(), module.StrongPoseCodec(), train=False,
                                      skip_empty=True)
    info = data.coco.imgs[data.image_ids[2]]
    # cropped at the resized image's edge, not where its last dark rows end
    assert picture.shape[:2] == tuple(round(v * 128 / max(info["height"], info["width"]))
                                      for v in (info["height"], info["width"]))
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"wrote {out} (")


def test_labels_are_written_above_each_drawn_person():
    image = torch.zeros(3, 100, 100, dtype=torch.uint8)
    two = torch.cat([a_person(), a_person()])
    two[1, :, 1] = 90  # the second lower down
    poses = Poses(two, torch.tensor([0.9, 0.9]))
    plain = draw_poses(image, poses, COCO_PERSON)
    labelled = draw_poses(image, poses, COCO_PERSON, labels=["7", "8"])
    changed = (labelled != plain).any(0).nonzero()
    assert changed.numel() and changed[:, 0].max() < 90  # text above the people, not over the lower one's keypoints
    assert ((labelled != plain).any(0)[20:45]).any() and ((labelled != plain).any(0)[60:85]).any()  # both labelled
    with pytest.raises(ValueError, match="1 labels for 2 people"):
        draw_poses(image, poses, COCO_PERSON, labels=["7"])
