"""COCO keypoint AP as a torchmetrics ``Metric``: collects decoded poses per image, syncs across DDP ranks.

States are flat 1-D float64 tensors (list states concatenated with ``dist_reduce_fx="cat"``), so that
ranks with different numbers of images or people, or with none at all, gather without shape or dtype
mismatches on any backend (gloo, NCCL):

* ``image_ids`` (N,): every image updated, in order, whether or not anybody was found in it;
* ``num_people`` (N,): how many people each of those images contributed;
* ``keypoints`` (sum(num_people) * K * 3,): their keypoints in original-image pixels, then scores;
* ``scores`` (sum(num_people),): their person scores.

Each rank's images and people are concatenated in the same rank order, so the per-image counts still
locate each image's people after the gather. A distributed sampler pads the last batches with images
from the start of the dataset; such an image is kept only once (its first occurrence: the padded copy
gives the same predictions). Every rank computes the same COCOeval statistics from the gathered states.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO
from torchmetrics import Metric

from strongpose.data.annotations import load_coco
from strongpose.data.transforms import poses_to_original
from strongpose.evaluation.coco_eval import check_backend, coco_keypoint_stats, evaluated_category
from strongpose.structures import Poses

_STATES = ("image_ids", "num_people", "keypoints", "scores")


class COCOKeypointAP(Metric):
    """COCO keypoint statistics (AP, AP50, AP75, APM, APL, AR; with CrowdPose's ground truth also AP_easy,
    AP_medium, AP_hard) of decoded poses.

    Args:
        annotations: the ground truth: a pycocotools ``COCO`` or the path of a COCO-format JSON file.
        sigmas: per-keypoint OKS sigmas (default: COCOeval's, i.e. COCO's 17 keypoints).
        category_id: the person category of the annotations and of the results (None: the annotations'
            category with keypoints that ``keypoints`` choose, ``person`` preferred, as the data loader picks it).
        keypoints: the skeleton's keypoint names, to choose the category by (None: ``person`` or the first).
        backend: ``"pycocotools"`` (the reference) or ``"faster_coco_eval"`` (same numbers, faster).

    ``update(poses, meta)`` takes a batch's decoded :class:`Poses` (input pixels) and its ``meta`` (``image_id``
    (B,), ``affine`` (B, 2, 3) from input to original pixels); ``compute()`` returns a dict of scalar tensors
    keyed by :func:`~strongpose.evaluation.coco_eval.stat_names` of the ground truth, evaluated over exactly the images updated (on all ranks together).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, annotations: COCO | str | Path, sigmas: Sequence[float] | None = None,
                 category_id: int | None = None, backend: str = "pycocotools",
                 keypoints: Sequence[str] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.backend = check_backend(backend)  # fail at construction, not at the first epoch's end
        self.coco = annotations if isinstance(annotations, COCO) else load_coco(annotations)
        self.sigmas = None if sigmas is None else [float(s) for s in sigmas]
        self.category_id = evaluated_category(self.coco, keypoints) if category_id is None else int(category_id)
        if self.sigmas is not None:
            self.num_keypoints = len(self.sigmas)
        else:  # COCOeval's default sigmas are COCO's 17 keypoints
            self.num_keypoints = 17
        for name in _STATES:
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self._seed_states()

    def _seed_states(self) -> None:
        # an empty float64 entry in every list: a rank that saw no data still gathers a (0,) float64 tensor
        # (torchmetrics would otherwise substitute one of the metric's default dtype, float32)
        for name in _STATES:
            getattr(self, name).append(torch.zeros(0, dtype=torch.float64, device=self.device))

    def reset(self) -> None:
        super().reset()
        self._seed_states()

    def update(self, poses: Sequence[Poses], meta: Mapping) -> None:
        image_ids = torch.as_tensor(meta["image_id"]).reshape(-1)
        if len(image_ids) != len(poses):
            raise ValueError(f"{len(poses)} images of poses but {len(image_ids)} image ids")
        for p in poses:
            if len(p) and p.keypoints.shape[1:] != (self.num_keypoints, 3):
                raise ValueError(f"expected keypoints of shape (N, {self.num_keypoints}, 3), "
                                 f"got {tuple(p.keypoints.shape)}")
        # in original pixels; people decoded in the batch's padding are no detections
        originals = poses_to_original(poses, meta, dtype=torch.float64)
        keypoints = [people.keypoints.reshape(-1) for people in originals]
        scores = [people.scores for people in originals]
        counts = [len(people) for people in originals]
        device = self.device
        self.image_ids.append(image_ids.to(device=device, dtype=torch.float64))
        self.num_people.append(torch.tensor(counts, dtype=torch.float64, device=device))
        # one copy per state and batch: concatenated where the poses are, then moved
        where = keypoints[0].device if keypoints else device
        empty = torch.zeros(0, dtype=torch.float64, device=where)  # a batch without people still appends
        self.keypoints.append(torch.cat([empty, *[k.to(where) for k in keypoints]]).to(device))
        self.scores.append(torch.cat([empty, *[s.to(where) for s in scores]]).to(device))

    def results(self) -> tuple[list[dict], list[int]]:
        """COCO results and the ids of the images evaluated, from the (already synced) states; duplicates dropped."""
        image_ids, num_people, keypoints, scores = (_cat(getattr(self, name)) for name in _STATES)
        image_ids, num_people = image_ids.astype(np.int64), num_people.astype(np.int64)
        if num_people.sum() != len(scores) or len(keypoints) != len(scores) * self.num_keypoints * 3:
            raise RuntimeError(f"inconsistent states: {num_people.sum()} people counted, {len(scores)} scores, "
                               f"{len(keypoints)} keypoint values")
        keypoints = keypoints.reshape(-1, self.num_keypoints * 3)
        starts = np.concatenate([[0], np.cumsum(num_people)])
        results, seen = [], set()
        for n, image_id in enumerate(image_ids.tolist()):
            if image_id in seen:
                continue  # the distributed sampler's padding (or an image validated twice)
            seen.add(image_id)
            people = slice(starts[n], starts[n + 1])
            poses = Poses(torch.from_numpy(keypoints[people]).reshape(-1, self.num_keypoints, 3),
                          torch.from_numpy(scores[people]))
            results += poses.to_coco(image_id, self.category_id)
        return results, sorted(seen)

    def compute(self) -> dict[str, torch.Tensor]:
        results, image_ids = self.results()
        stats = coco_keypoint_stats(self.coco, results, image_ids, self.sigmas, backend=self.backend,
                                    category_id=self.category_id)
        return {name: torch.tensor(value, dtype=torch.float64) for name, value in stats.items()}


def _cat(tensors: list[torch.Tensor] | torch.Tensor) -> np.ndarray:
    if isinstance(tensors, torch.Tensor):
        return tensors.detach().cpu().reshape(-1).numpy()
    return torch.cat([t.detach().cpu().reshape(-1) for t in tensors]).numpy() if tensors else np.zeros(0)
