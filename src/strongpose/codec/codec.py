"""StrongPoseCodec: the one object that turns people into targets and network outputs into people."""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from strongpose.codec.encode import encode_keypoint_maps, encode_regions, out_edge_table
from strongpose.codec.grouping import group_image, link_candidates
from strongpose.codec.hough import find_peaks, gaussian_blur, hough_vote, smooth_votes
from strongpose.config_check import ConfigError
from strongpose.skeleton import COCO_PERSON, Skeleton, get_skeleton
from strongpose.structures import Poses, map_size

# the codec's maps by kind: probabilities of binary maps (logits at the network's output) and (dx, dy)
# offsets in input pixels; the heads, losses, test-time fusion and encode's offset dtype go by these
HEATMAP_MAPS = ("skhm", "bhm")
OFFSET_MAPS = ("short", "mid", "long")


# what one more batched link call costs, in units of one image's linking work per detection slot squared:
# on the CPU ~0.23 ms a call against ~4 us per image and slot^2; on a GPU the padding costs next to nothing
LINK_CALL_COST = {"cpu": 64.0}


def link_groups(counts: list[int], call_cost: float | None = LINK_CALL_COST["cpu"]) -> list[tuple[list[int], int]]:
    """The images of a batch split into groups linked by one call each, ``[(images, slots)]``, where ``counts``
    are the images' most detections of one type (their peak slots in use: peaks are stored strongest first).
    Linking costs ~ slots^2 per image, with the slots of the group's busiest image: one crowded or noisy
    image would pad every other one to its count (15 clean images and a noisy one took 2.5x as long as one
    at a time). The split minimises ``call_cost`` per call + slots^2 per image over groups of images
    sorted by count (exact, O(B^2)); ``call_cost`` None: one group."""
    slots = [max(int(c), 1) for c in counts]
    order = sorted(range(len(slots)), key=slots.__getitem__)
    if call_cost is None or len(order) < 2:
        return [(order, max(slots, default=1))]
    best, cut = [0.0], [0]  # best[i]: the cheapest split of the i smallest; cut[i]: where its last group starts
    for end in range(1, len(order) + 1):
        size = slots[order[end - 1]] ** 2  # the largest of order[start:end], per image
        start = min(range(end), key=lambda s: best[s] + call_cost + (end - s) * size)
        best.append(best[start] + call_cost + (end - start) * size)
        cut.append(start)
    groups, end = [], len(order)
    while end:
        groups.append((order[cut[end]:end], slots[order[end - 1]]))
        end = cut[end]
    return groups[::-1]


class StrongPoseCodec:
    """Encode COCO people into StrongPose targets and decode (predicted) maps back into people.

    Shared by the data pipeline (``encode``, in the workers) and the model (``channels`` for the
    heads, ``decode`` for inference), as mmpose 1.x codecs are.

    Args:
        skeleton: a :class:`Skeleton` or its name.
        stride: output stride of the maps (4, 8, 16, ...).
        disk_radius: radius R of the keypoint disks, in input pixels.
        long_range: also produce / use long-range offsets.
        redundant_edges: add the skeleton's redundant edges to the mid-range offsets.
        decode_sigma: Gaussian smoothing of the Hough maps, in map pixels.
        decode_vote_threshold: cells with a lower keypoint probability do not vote.
        decode_peak_threshold: minimum normalised Hough score of a keypoint.
        decode_max_peaks: at most this many detections per keypoint type and image.
        decode_refine: refine each peak by the short-range offset read at it.
        decode_refine_radius: then move it to the probability-weighted mean of its type's votes (cell + short
            offset) within this many input px, ``decode_refine_iters`` times (0: the peak cell's offset alone).
            One cell's offset carries its own regression error, the mean of the votes that agree with it much
            less: on the overfit model the vote nearest a keypoint is off by 1.0 px (median), the median of
            its disk's votes by 0.3 px; AP 0.627 -> 0.710 there, oracle unchanged (experiments/RESULTS.md).
        decode_refine_iters: mean-shift steps of ``decode_refine_radius``.
        decode_mid_refine: follow the short offset where a mid-range offset lands.
        decode_snap_radius: a predicted neighbour snaps to a detection at most this far (input px; None:
            ``disk_radius``, the default of checkpoints trained before 8 px was). Farther, the walk would take
            another person's keypoint of that type when the right one is taken or merged into its Hough peak:
            8 px gave the oracle 0.979 AP instead of 0.966 at stride 8 (0.957 / 0.926 at 16) and the overfit model
            0.627 / 0.601 (experiments/RESULTS.md).
        decode_topn: how many nearest detections a link keeps (the nearest unclaimed one wins).
        decode_bhm_weight: person score *= (mean body-map probability under its keypoints) ** weight.
        decode_nms_oks: people overlapping a better one with a higher OKS are dropped (1 = off).
        decode_min_keypoints: people with fewer keypoints are dropped.
        decode_max_people: at most this many people per image.
    """

    def __init__(
        self,
        skeleton: Skeleton | str = COCO_PERSON,
        stride: int = 8,
        disk_radius: float = 32.0,
        long_range: bool = True,
        redundant_edges: bool = True,
        decode_sigma: float = 1.0,
        decode_vote_threshold: float = 0.01,
        decode_peak_threshold: float = 0.01,
        decode_max_peaks: int = 32,
        decode_refine: bool = True,
        decode_refine_radius: float = 4.0,
        decode_refine_iters: int = 2,
        decode_mid_refine: bool = True,
        decode_snap_radius: float | None = 8.0,
        decode_topn: int = 3,
        decode_bhm_weight: float = 0.0,
        decode_nms_oks: float = 0.5,
        decode_min_keypoints: int = 1,
        decode_max_people: int = 30,
    ) -> None:
        self.skeleton = get_skeleton(skeleton) if isinstance(skeleton, str) else skeleton
        if stride < 1 or disk_radius <= 0:
            raise ValueError(f"stride must be >= 1 and disk_radius > 0, got {stride}, {disk_radius}")
        if disk_radius < stride / math.sqrt(2):  # the farthest a point is from its nearest cell centre
            raise ConfigError(f"codec: disk_radius {disk_radius:g} is below stride / sqrt(2) = {stride / math.sqrt(2):.2f}"
                              f" at stride {stride}: a keypoint near a cell's corner would have no cell in its "
                              f"disk (no positive target, nothing to learn or decode); use a disk_radius of at "
                              f"least {math.ceil(stride / math.sqrt(2) * 100) / 100:g} or a smaller stride")
        self.stride = int(stride)
        self.disk_radius = float(disk_radius)
        self.long_range = bool(long_range)
        self.redundant_edges = bool(redundant_edges)
        self.edges = torch.tensor(self.skeleton.directed_edges(redundant_edges), dtype=torch.long)
        # (K, D) ids of the directed edges leaving each keypoint type, -1 padded
        self.out_edges = out_edge_table(self.edges, self.num_keypoints)
        self._tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self.decode_sigma = decode_sigma
        self.decode_vote_threshold = decode_vote_threshold
        self.decode_peak_threshold = decode_peak_threshold
        self.decode_max_peaks = decode_max_peaks
        self.decode_refine = decode_refine
        self.decode_refine_radius = float(decode_refine_radius)
        self.decode_refine_iters = int(decode_refine_iters)
        self.decode_mid_refine = decode_mid_refine
        self.decode_snap_radius = float(decode_snap_radius if decode_snap_radius is not None else disk_radius)
        self.decode_topn = decode_topn
        self.decode_bhm_weight = decode_bhm_weight
        self.decode_nms_oks = decode_nms_oks
        self.decode_min_keypoints = decode_min_keypoints
        self.decode_max_people = decode_max_people
        self._sigmas = np.asarray(self.skeleton.sigmas, dtype=np.float64)
        # a perfect keypoint's smoothed Hough peak with all its votes in one cell: keypoint scores are at most about
        # 1 (clamped to 1 later); its votes split over up to 4 cells by where it lies in its cell, a perfect one scores
        # 0.6-1 (stride 8; less at stride 16, whose disks have few cells)
        self._score_norm = self._perfect_peak()
        self.last_timing: dict[str, float] = {}

    # ------------------------------------------------------------------ description
    @property
    def num_keypoints(self) -> int:
        return self.skeleton.num_keypoints

    @property
    def num_edges(self) -> int:
        return int(self.edges.shape[0])

    @property
    def channels(self) -> dict[str, int]:
        """Output channels per head: what the network must predict for this codec."""
        ch = {"skhm": self.num_keypoints, "bhm": 1, "short": 2 * self.num_keypoints, "mid": 2 * self.num_edges}
        if self.long_range:
            ch["long"] = 2 * self.num_keypoints
        return ch

    def map_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        return map_size(image_size, self.stride)

    def __repr__(self) -> str:
        return (f"StrongPoseCodec(skeleton={self.skeleton.name!r}, stride={self.stride}, "
                f"disk_radius={self.disk_radius}, long_range={self.long_range}, edges={self.num_edges})")

    # ------------------------------------------------------------------ encode
    def encode(
        self,
        keypoints: torch.Tensor,
        image_size: tuple[int, int],
        masks: torch.Tensor | None = None,
        ignore_mask: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        offset_dtype: torch.dtype = torch.float32,
        has_mask: torch.Tensor | None = None,
        body_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Targets for one image of size (H, W), at map size (h, w) = ceil((H, W) / stride).

        Args:
            keypoints: (N, K, 3) x, y, visibility (0 unlabelled, 1 occluded, 2 visible) in input pixels
                for the non-crowd people. Keypoints off the image, non-finite or with v = 0 are unlabelled;
                people with no labelled keypoint become ignore regions.
            masks: optional (N, H, W) instance masks; a person whose mask is empty (or all people, when
                None) falls back to its box, else to the box around its keypoints grown by R / 2.
            ignore_mask: optional (H, W) crowd regions (``iscrowd``) and any other area to ignore.
            boxes: optional (N, 4) COCO xywh boxes, used by the fallback.
            offset_dtype: dtype of the offset maps (computed in float32, rounded when written); the data
                module's float16 halves what its workers send.
            has_mask: optional (N,) bool, the people that have a mask (default: a non-empty slice of
                ``masks``); the others fall back to boxes. The data pipeline passes whose annotation has a
                segmentation, so that a mask moved off the image by the augmentation leaves nothing rather
                than its box's on-image part.
            body_mask: optional (H, W) union of the masks of the people with a labelled keypoint, in place of
                ``masks`` (with ``has_mask``; the other people's masks then belong in ``ignore_mask``): the
                same maps from two masks instead of N (the data pipeline merges before warping).

        Returns a dict of tensors (float32 maps, offsets in ``offset_dtype``, bool validity):
            ``skhm`` (K, h, w) keypoint disks, each cell owned by the nearest person;
            ``bhm`` (1, h, w) body map; ``weight`` (1, h, w) 0 in ignored regions (crowd, people without a
            labelled keypoint), 1 elsewhere; the heat-map loss counts positive targets in them all the same;
            ``short`` (2K, h, w) cell -> own keypoint (dx, dy per type), ``short_valid`` (K, h, w);
            ``mid`` (2E, h, w) along each directed edge, ``mid_valid`` (E, h, w);
            ``long`` (2K, h, w) cell -> every keypoint of its person, ``long_valid`` (K, h, w)
            (only with ``long_range``). Offsets are in input pixels.
        """
        kp = self._people(keypoints, 3)  # one image: the regions, then the rest as a batch of one
        regions = self.encode_regions(kp, image_size, masks=masks, ignore_mask=ignore_mask, boxes=boxes,
                                      has_mask=has_mask, body_mask=body_mask)
        maps = self.encode_batch(kp[None], {key: v[None] for key, v in regions.items()}, image_size, offset_dtype)
        return {key: v[0] for key, v in maps.items()}

    def encode_regions(
        self,
        keypoints: torch.Tensor,
        image_size: tuple[int, int],
        masks: torch.Tensor | None = None,
        ignore_mask: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        has_mask: torch.Tensor | None = None,
        body_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The part of :meth:`encode` that needs full-resolution inputs (masks, crowd regions), for one image:
        ``bhm`` and ``ignore``, (1, h, w) bool. :meth:`encode_batch` turns them and the keypoints into the
        targets, e.g. on the training device (the data module's ``encode_on="device"``)."""
        kp = self._people(keypoints, 3)
        return encode_regions(kp, self._size(image_size), stride=self.stride, disk_radius=self.disk_radius,
                              masks=masks, ignore_mask=ignore_mask, boxes=boxes, has_mask=has_mask,
                              body_mask=body_mask)

    def encode_batch(
        self,
        keypoints: torch.Tensor,
        regions: dict[str, torch.Tensor],
        image_size: tuple[int, int],
        offset_dtype: torch.dtype = torch.float32,
    ) -> dict[str, torch.Tensor]:
        """:meth:`encode` of a batch, on the keypoints' device, without host synchronisation.

        Args:
            keypoints: (B, N, K, 3) people of B images of size ``image_size``, padded with unlabelled
                (v = 0) rows to a common N.
            regions: :meth:`encode_regions` of each image, stacked: ``bhm`` and ``ignore`` (B, 1, h, w).

        Returns :meth:`encode`'s maps with a batch dim, equal to encoding each image alone (tested).
        """
        kp = self._people(keypoints, 4)
        size = self._size(image_size)
        expect = (kp.shape[0], 1, *self.map_size(size))
        for key in ("bhm", "ignore"):
            if key not in regions or tuple(regions[key].shape) != expect:
                got = tuple(regions[key].shape) if key in regions else "missing"
                raise ValueError(f"regions[{key!r}] must be {expect} (B, 1, h, w) for these keypoints and image "
                                 f"size {size}, got {got}")
        edges, out_edges = self._edge_tables(kp.device)
        return encode_keypoint_maps(kp, regions, size, stride=self.stride, disk_radius=self.disk_radius,
                                    directed_edges=edges, out_edges=out_edges, long_range=self.long_range,
                                    offset_dtype=offset_dtype)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_tables"] = {}  # device copies stay in their process (a data worker has no use for them)
        return state

    def _edge_tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The directed edges and the edges leaving each type, on ``device``: copied once per device, not per
        batch (a host-to-device copy waits for the device's queue)."""
        if device not in self._tables:
            self._tables[device] = (self.edges.to(device), self.out_edges.to(device))
        return self._tables[device]

    def _people(self, keypoints: torch.Tensor, ndim: int) -> torch.Tensor:
        kp = torch.as_tensor(keypoints, dtype=torch.float32)
        if kp.ndim != ndim or kp.shape[-2:] != (self.num_keypoints, 3):
            expect = "(N, K, 3)" if ndim == 3 else "(B, N, K, 3)"
            raise ValueError(f"keypoints must be {expect} with K = {self.num_keypoints} for skeleton "
                             f"{self.skeleton.name!r}, got {tuple(kp.shape)}")
        return kp

    @staticmethod
    def _size(image_size: tuple[int, int]) -> tuple[int, int]:
        height, width = (int(v) for v in image_size)
        if height < 1 or width < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        return height, width

    # ------------------------------------------------------------------ flip
    def flip_maps(self, maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Mirror target or output maps horizontally: what encoding the flipped image gives.

        Keypoint types and directed edges are permuted with the skeleton's flip index and x offsets
        change sign. Works on (C, h, w) and (B, C, h, w) maps; exact when the image width is a
        multiple of the stride (cell centres then mirror onto cell centres). Used by flip test.
        """
        kperm = torch.tensor(self.skeleton.flip_index)
        eperm = torch.tensor(self.skeleton.directed_edge_flip_index(self.redundant_edges))
        out = {}
        for key, m in maps.items():
            if not isinstance(m, torch.Tensor) or m.ndim < 3:
                out[key] = m
                continue
            cdim = m.ndim - 3
            m = m.flip(-1)
            if key in ("skhm", "short_valid", "long_valid"):
                m = m.index_select(cdim, kperm.to(m.device))
            elif key == "mid_valid":
                m = m.index_select(cdim, eperm.to(m.device))
            elif key in ("short", "long", "mid"):
                perm = kperm if key != "mid" else eperm
                shape = m.shape
                m = m.unflatten(cdim, (shape[cdim] // 2, 2)).index_select(cdim, perm.to(m.device))
                m = (m * torch.tensor([-1.0, 1.0], device=m.device).view(2, 1, 1)).flatten(cdim, cdim + 1)
            out[key] = m
        return out

    # ------------------------------------------------------------------ decode
    def _perfect_peak(self) -> float:
        r = self.disk_radius / self.stride
        size = 2 * int(np.ceil(r)) + 9
        c = size // 2
        votes = torch.zeros(1, 1, size, size)
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        votes[0, 0, c, c] = float((((yy - c) ** 2 + (xx - c) ** 2) <= r * r).sum())
        return float(gaussian_blur(votes, self.decode_sigma)[0, 0, c, c])

    def keypoint_scores(self, skhm: torch.Tensor, short: torch.Tensor, to_grid: torch.Tensor | None = None,
                        grid_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, K, h, w) Hough maps, normalised so that a perfect keypoint whose votes fall in one cell scores about 1
        (unclamped; spread over up to 4 cells by its place in the cell, 0.6-1 at stride 8); with
        ``to_grid`` (B, 2, 3) and ``grid_hw``, voted onto that grid (:func:`strongpose.codec.hough.hough_vote`)."""
        # normalising the few votes is cheaper than the whole map
        hough = hough_vote(skhm, short, self.stride, self.decode_vote_threshold, scale=1.0 / self._score_norm,
                           to_grid=to_grid, grid_hw=grid_hw)
        return smooth_votes(hough, self.decode_sigma)

    def decode(self, outputs: dict[str, torch.Tensor], keypoint_scores: torch.Tensor | None = None) -> list[Poses]:
        """Decode network outputs (or targets) into people, one :class:`Poses` per image (on the CPU).

        ``outputs`` holds ``skhm`` (B, K, h, w) probabilities, ``short`` (B, 2K, h, w), ``mid``
        (B, 2E, h, w), optionally ``long`` (B, 2K, h, w) and ``bhm`` (B, 1, h, w) probabilities;
        unbatched (C, h, w) maps are taken as B = 1. Offsets are in input pixels. When decoding targets,
        ``mid_valid`` / ``long_valid`` may be passed too: offsets are then only followed where defined.
        ``keypoint_scores`` (B, K, h, w), when given, replaces :meth:`keypoint_scores` of ``skhm`` and
        ``short`` (multi-scale test fuses the Hough maps of several scales and passes them here).
        Runs on the maps' device except the greedy grouping, which is NumPy; timings land in ``last_timing``.
        Non-finite values (a diverged network) are dropped: such a cell casts no vote, such an offset is not
        followed.
        """
        if arrays := sorted(key for key, v in outputs.items() if isinstance(v, np.ndarray)):
            raise TypeError(f"decode takes torch tensors; {', '.join(arrays)} are NumPy arrays (e.g. ONNX Runtime's "
                            f"outputs): pass {{name: torch.from_numpy(array)}}")
        outputs = {key: (v[None] if v.ndim == 3 else v) for key, v in outputs.items() if isinstance(v, torch.Tensor)}
        for key in ("skhm", "short", "mid"):
            if key not in outputs:
                raise KeyError(f"decode needs {key!r} in outputs, got {sorted(outputs)}")
        b = outputs["skhm"].shape[0]
        expect = {"skhm": self.num_keypoints, "short": 2 * self.num_keypoints, "mid": 2 * self.num_edges}
        for key, ch in expect.items():
            if outputs[key].shape[1] != ch:
                raise ValueError(f"decode: {key!r} has {outputs[key].shape[1]} channels, codec {self} expects {ch}")
        if keypoint_scores is not None and keypoint_scores.shape != outputs["skhm"].shape:
            raise ValueError(f"decode: keypoint_scores {tuple(keypoint_scores.shape)} must match skhm "
                             f"{tuple(outputs['skhm'].shape)}")
        if b == 0:  # an empty batch (the maps' reshapes below need an image)
            self.last_timing = {"peaks_ms": 0.0, "links_ms": 0.0, "group_ms": 0.0, "images": 0}
            return []
        # the network's raw heat maps are logits: decoded as they are, the people differ. One device read for both
        # maps; non-finite cells are decoding's to drop (and a NaN would hide the rest from aminmax)
        heat = [key for key in ("skhm", "bhm") if key in outputs and outputs[key].numel()]
        maps = [outputs[key].detach() for key in heat]
        bounds = torch.stack([torch.stack(torch.aminmax(m)).float() for m in maps]).tolist() if heat else []
        if not all(math.isfinite(v) for pair in bounds for v in pair):  # the finite cells' range (rare: ~2x the cost)
            bounds = torch.stack([torch.stack(torch.aminmax(torch.where(m.isfinite(), m, 0.5).float()))
                                  for m in maps]).tolist()
        for key, (low, high) in zip(heat, bounds):
            if low < 0.0 or high > 1.0:
                raise ValueError(f"decode: {key!r} holds values from {low:.3g} to {high:.3g}, not probabilities "
                                 f"in 0..1: the network's raw heat maps are logits; decode "
                                 f"to_probabilities(outputs) (strongpose.models.to_probabilities)")
        long = outputs["long"] if (self.long_range and "long" in outputs) else None
        t0 = time.perf_counter()
        # inference mode rather than no_grad: no autograd bookkeeping at all, ~8 % less per-op overhead,
        # which is most of the cost at these sizes on the CPU; the Poses are made outside it
        with torch.inference_mode():
            skhm, short, mid = outputs["skhm"].float(), outputs["short"].float(), outputs["mid"].float()
            long = long.float() if long is not None else None
            scores = self.keypoint_scores(skhm, short) if keypoint_scores is None else keypoint_scores.float()
            # as many peak slots as the busiest (image, type) needs
            pos, peak_scores, valid = find_peaks(
                scores, short, self.stride, self.decode_max_peaks, self.decode_peak_threshold, self.decode_refine,
                # not on multi-scale fused maps: a scale's offsets resampled onto the reference grid and averaged
                # with the others' are exact at a keypoint's own cells only (disks of another size mix in zeros)
                skhm=skhm if keypoint_scores is None else None, vote_radius=self.decode_refine_radius,
                vote_threshold=self.decode_vote_threshold,
                vote_window=math.ceil((self.disk_radius + self.decode_refine_radius) / self.stride),
                vote_iters=self.decode_refine_iters, max_step=self.disk_radius)
            t1 = time.perf_counter()
            # the body-map probability under each detection scales the person scores
            bhm = outputs["bhm"].float() if ("bhm" in outputs and self.decode_bhm_weight > 0) else None
            edges = self.edges.to(skhm.device)
            host: list[dict[str, np.ndarray]] = [{} for _ in range(b)]  # each image's links, its own slots
            counts = valid.sum(-1).amax(-1).tolist()
            for images, num in link_groups(counts, LINK_CALL_COST.get(skhm.device.type)):
                if len(images) == b:  # one group: the batch as it is
                    images, index = list(range(b)), None
                else:  # its detections; the maps are read in place
                    index = torch.tensor(images, device=skhm.device)
                pick = (lambda t: t) if index is None else (lambda t: t.index_select(0, index))
                links = link_candidates(pick(pos)[:, :, :num], pick(valid)[:, :, :num], short, mid, long, edges,
                                        self.stride, self.decode_topn, self.decode_mid_refine,
                                        mid_valid=outputs.get("mid_valid"), long_valid=outputs.get("long_valid"),
                                        bhm=bhm, images=index, snap_radius=self.decode_snap_radius)
                links = {key: v.cpu().numpy() for key, v in links.items()}
                for row, i in enumerate(images):
                    host[i] = {key: v[row] for key, v in links.items()}
            pos_np, score_np, valid_np = pos.cpu().numpy(), peak_scores.cpu().numpy(), valid.cpu().numpy()
        t2 = time.perf_counter()
        edges = self.edges.numpy()
        extent = (skhm.shape[-1] * self.stride, skhm.shape[-2] * self.stride)  # the input the maps cover
        results = []
        for i, links in enumerate(host):
            # this image's own slots (its group's may be more): every link array's axis 1 is the source slot
            num = max(int(counts[i]), 1)
            links = {key: v[:, :num] for key, v in links.items()}
            kps, person_scores = group_image(
                pos_np[i][:, :num], score_np[i][:, :num], valid_np[i][:, :num], edges, links["mid_dist"],
                links["mid_idx"], self.decode_snap_radius, self._sigmas, long_dist=links.get("long_dist"),
                long_idx=links.get("long_idx"), long_pred=links.get("long_pred"), bhm_at=links.get("bhm_at"),
                bhm_weight=self.decode_bhm_weight, nms_oks=self.decode_nms_oks,
                min_keypoints=self.decode_min_keypoints, max_people=self.decode_max_people, extent=extent)
            results.append(Poses(torch.from_numpy(kps), torch.from_numpy(person_scores)))
        t3 = time.perf_counter()
        self.last_timing = {"peaks_ms": 1e3 * (t1 - t0), "links_ms": 1e3 * (t2 - t1),
                            "group_ms": 1e3 * (t3 - t2), "images": b}
        return results
