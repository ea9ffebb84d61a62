import torch

from strongpose.skeleton import COCO_PERSON
from strongpose.structures import Poses
from strongpose.viz import denormalise, draw_batch, draw_poses


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
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    batch = ((torch.full((2, 3, 64, 64), 0.5) - mean) / std)
    assert torch.allclose(denormalise(batch[0]).float(), torch.full((3, 64, 64), 127.5), atol=1)
    poses = [Poses(a_person() * torch.tensor([0.6, 1, 1]), torch.tensor([0.9])), Poses(torch.zeros(0, 17, 3), torch.zeros(0))]
    drawn = draw_batch(batch, poses, COCO_PERSON)
    assert [d.shape for d in drawn] == [(64, 64, 3), (64, 64, 3)]
    assert (drawn[0] != drawn[1]).any()
