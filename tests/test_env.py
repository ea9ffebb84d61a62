"""The installed torch and torchvision are a working pair: torchvision's compiled operators load and run.

A torchvision built for another torch imports its Python part but not its C++ operators (``torchvision::nms``
does not exist then); pinning torch below the version PyPI's torchvision was built against does that (README,
"Two commands")."""

import torch
import torchvision


def test_torchvision_compiled_ops_run_with_this_torch():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [20.0, 20.0, 30.0, 30.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    keep = torchvision.ops.nms(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [0, 2]  # the second box overlaps the first by 0.68 IoU
