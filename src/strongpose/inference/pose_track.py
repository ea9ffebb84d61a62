"""Who is who across video frames: a track id for every person found, frame after frame.

The simple tracker of the PoseTrack baselines (Xiao et al. 2018, "Simple Baselines", without their optical flow):
each frame's people are matched to the tracks seen recently, greedily, the pair with the highest OKS first, and a
person left over starts a new track. OKS is COCO's, over the keypoints both poses have, at the scale of the track's
last pose. Written here rather than taken from a library: the pose packages that track (mmpose's inferencer,
OpenPifPaf) tie it to their own pose structures, and the matching is thirty lines of NumPy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from strongpose.structures import Poses


class PoseTracker:
    """Track ids for the people of consecutive frames; :meth:`update` once per frame, in order.

    Args:
        sigmas: the skeleton's OKS sigmas (``predictor.codec.skeleton.sigmas``).
        oks_threshold: a person continues a track only when their OKS with its last pose is at least this.
        max_age: frames a person may go unseen (occluded, missed) and still continue their track; a track unseen
            for longer is ended (an id is never given twice).
        keypoint_threshold: keypoints scoring at or below are not compared (0: those found; a keypoint not found
            has score 0 and a guessed position).
    """

    def __init__(self, sigmas: Sequence[float], oks_threshold: float = 0.3, max_age: int = 5,
                 keypoint_threshold: float = 0.0) -> None:
        if not 0.0 <= oks_threshold <= 1.0:
            raise ValueError(f"oks_threshold must be in 0..1, got {oks_threshold}")
        if max_age < 0:
            raise ValueError(f"max_age must be >= 0 frames, got {max_age}")
        self.var = (2 * np.asarray(sigmas, np.float64)) ** 2
        self.oks_threshold, self.max_age = float(oks_threshold), int(max_age)
        self.keypoint_threshold = float(keypoint_threshold)
        self.reset()

    def reset(self) -> None:
        """Forget every track (a new video); ids start again at 0."""
        self.ids: list[int] = []  # the live tracks: id, last pose (K, 3), frame last seen
        self.poses = np.zeros((0, len(self.var), 3))
        self.seen: list[int] = []
        self.frame, self.next_id = 0, 0

    def update(self, poses: Poses) -> list[int]:
        """The track id of each person of this frame, in their order."""
        if poses.keypoints.ndim != 3 or poses.keypoints.shape[1:] != (len(self.var), 3):
            raise ValueError(f"PoseTracker of {len(self.var)} keypoints (its sigmas) got people of shape "
                             f"{tuple(poses.keypoints.shape)}")
        people = poses.keypoints.detach().cpu().double().numpy()
        oks = self.similarity(self.poses, people)  # (tracks, people)
        ids = [-1] * len(people)
        taken: set[int] = set()
        for flat in np.argsort(-oks, axis=None, kind="stable"):  # best pair first
            track, person = divmod(int(flat), len(people))
            if oks[track, person] < self.oks_threshold or oks[track, person] <= 0.0:
                break
            if ids[person] < 0 and track not in taken:
                ids[person] = self.ids[track]
                taken.add(track)
        for person, track_id in enumerate(ids):
            if track_id < 0:
                ids[person], self.next_id = self.next_id, self.next_id + 1
        # this frame's people are the tracks' last poses; tracks not seen keep theirs until they are too old
        kept = [t for t in range(len(self.ids)) if t not in taken and self.frame - self.seen[t] <= self.max_age]
        self.ids = [self.ids[t] for t in kept] + ids
        self.poses = np.concatenate([self.poses[kept], people])
        self.seen = [self.seen[t] for t in kept] + [self.frame] * len(people)
        self.frame += 1
        return ids

    def similarity(self, tracks: np.ndarray, people: np.ndarray) -> np.ndarray:
        """(M, N) OKS of ``people`` (N, K, 3) with ``tracks`` (M, K, 3) at the tracks' scale (their found
        keypoints' box area), over the keypoints both have found; 0 with none in common."""
        if not len(tracks) or not len(people):
            return np.zeros((len(tracks), len(people)))
        found_t, found_p = tracks[..., 2] > self.keypoint_threshold, people[..., 2] > self.keypoint_threshold
        low = np.where(found_t[..., None], tracks[..., :2], np.inf).min(1)
        high = np.where(found_t[..., None], tracks[..., :2], -np.inf).max(1)
        area = np.maximum(np.prod(np.maximum(high - low, 0.0), axis=1), 1.0)
        both = found_t[:, None] & found_p[None]
        d2 = ((tracks[:, None, :, :2] - people[None, :, :, :2]) ** 2).sum(-1)
        e = d2 / self.var / (2 * area[:, None, None])
        return np.where(both, np.exp(-e), 0.0).sum(-1) / np.maximum(both.sum(-1), 1)
