"""Decoded poses -> COCO results in original-image coordinates -> COCOeval keypoint statistics."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from strongpose.config_check import ConfigError
from strongpose.data.transforms import to_original
from strongpose.structures import Poses

# names of COCOeval's first six keypoint statistics, in order (logged as val/AP, val/AP50, ...)
STAT_NAMES = ("AP", "AP50", "AP75", "APM", "APL", "AR")
BACKENDS = ("pycocotools", "faster_coco_eval")


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def poses_to_coco(poses: Sequence[Poses], meta: Mapping, category_id: int = 1) -> list[dict]:
    """A batch's decoded people (input pixels) -> COCO keypoint results in original-image pixels."""
    results = []
    for i, p in enumerate(poses):
        if len(p) == 0:
            continue
        kps = to_original(p.keypoints, meta["affine"][i].cpu())
        results += Poses(kps, p.scores).to_coco(int(meta["image_id"][i]), category_id)
    return results


def coco_keypoint_stats(coco: COCO, results: list[dict], image_ids: Iterable[int],
                        sigmas: Sequence[float] | None = None, verbose: bool = False,
                        backend: str = "pycocotools") -> dict[str, float]:
    """COCOeval (keypoints) restricted to ``image_ids``; returns AP, AP50, AP75, APM, APL, AR.

    ``backend="faster_coco_eval"`` runs faster-coco-eval's C++ COCOeval on the same ground truth
    (``coco.dataset``) instead of pycocotools' (the reference); the numbers are the same.
    """
    check_backend(backend)
    image_ids = sorted(set(int(i) for i in image_ids))
    if not results:
        return {name: 0.0 for name in STAT_NAMES}
    with contextlib.redirect_stdout(io.StringIO()) as buf:
        if backend == "faster_coco_eval":
            ev = _faster_cocoeval(coco, results)
        else:
            # copies: loadRes writes id, area and bbox into each result (the caller's list is left as it was)
            ev = COCOeval(coco, coco.loadRes([dict(r) for r in results]), "keypoints")
        ev.params.imgIds = image_ids
        if sigmas is not None:
            ev.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    if verbose:
        print(buf.getvalue(), end="")
    return {name: float(v) for name, v in zip(STAT_NAMES, ev.stats)}


def _faster_cocoeval(coco: COCO, results: list[dict]):
    from faster_coco_eval import COCO as FasterCOCO
    from faster_coco_eval import COCOeval_faster

    # The ground truth is shared, not copied (a deep copy of COCO val's annotations on every compute cost
    # more than the evaluation): FasterCOCO copies only the top-level dict (use_deepcopy=False); for
    # keypoints (no RLEs) and without extra_calc (no match flags) the only key COCOeval_faster writes into
    # the annotations is "ignore", which pycocotools' COCOeval writes into the same dicts too.
    gt = FasterCOCO(coco.dataset)
    # each result is copied (not its keypoint list): loadRes writes id, area and bbox into the entries
    return COCOeval_faster(gt, gt.loadRes([dict(r) for r in results]), "keypoints", print_function=print)
