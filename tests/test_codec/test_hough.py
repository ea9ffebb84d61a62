"""The sparse decoding helpers against plain dense references (max_pool2d, topk, a per-cell loop)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import as_tensor, person
from strongpose.codec import StrongPoseCodec
from strongpose.codec.grouping import _long_links
from strongpose.codec.hough import (
    find_peaks, gaussian_blur, hough_vote, nearest_cells, nonzero_above, scatter_blur, smooth_votes,
)
from strongpose.structures import map_to_input


def sparse_maps(shape, fraction, seed=0):
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(shape, generator=g)
    return values * (torch.rand(shape, generator=g) < fraction)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])  # NumPy path, torch path
def test_nonzero_above_matches_torch_nonzero(dtype):
    maps = sparse_maps((2, 3, 7, 9), 0.2).to(dtype)
    for threshold in (0.0, 0.5, 2.0):
        expect = (maps > threshold).flatten().nonzero().squeeze(1)
        assert torch.equal(nonzero_above(maps, threshold), expect)


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_scatter_blur_equals_dense_blur(sigma):
    maps = sparse_maps((2, 3, 13, 17), 0.05, seed=1)
    maps[0, 0, 0, 0] = maps[1, 2, -1, -1] = 1.0  # footprints cut by the map's edges
    flat = maps.reshape(-1)
    smooth = scatter_blur(flat, nonzero_above(flat, 0.0), maps.shape, sigma)
    assert torch.allclose(smooth, gaussian_blur(maps, sigma), atol=1e-6)


@pytest.mark.parametrize("fraction", [0.001, 0.5])  # scattered, dense products
def test_smooth_votes_equals_dense_blur(fraction):
    votes = sparse_maps((1, 17, 60, 80), fraction, seed=2)
    assert torch.allclose(smooth_votes(votes, 1.0), gaussian_blur(votes, 1.0), atol=1e-6)
    assert smooth_votes(votes, 0.0) is votes


def reference_votes(skhm, short, stride, threshold):
    """Bilinear splat, one voting cell at a time."""
    b, k, h, w = skhm.shape
    out = torch.zeros(b, k, h, w, dtype=torch.float64)
    for i, t, y, x in (skhm > threshold).nonzero().tolist():
        px = min(max(x + short[i, 2 * t, y, x].item() / stride, -1), w)
        py = min(max(y + short[i, 2 * t + 1, y, x].item() / stride, -1), h)
        x0, y0 = int(np.floor(px)), int(np.floor(py))
        for yy, xx, wt in ((y0, x0, (1 - px + x0) * (1 - py + y0)), (y0, x0 + 1, (px - x0) * (1 - py + y0)),
                           (y0 + 1, x0, (1 - px + x0) * (py - y0)), (y0 + 1, x0 + 1, (px - x0) * (py - y0))):
            if 0 <= yy < h and 0 <= xx < w:
                out[i, t, yy, xx] += wt * skhm[i, t, y, x].item()
    return out.float()


def test_hough_vote_matches_per_cell_splat():
    g = torch.Generator().manual_seed(3)
    skhm = sparse_maps((2, 3, 6, 7), 0.4, seed=3)
    short = (torch.rand(2, 6, 6, 7, generator=g) - 0.5) * 60  # some votes leave the map
    votes = hough_vote(skhm, short, 8, 0.1, scale=1.0)
    assert torch.allclose(votes, reference_votes(skhm, short, 8, 0.1), atol=1e-5)
    assert torch.allclose(hough_vote(skhm, short, 8, 0.1, scale=0.5), votes * 0.5, atol=1e-6)


def test_votes_leaving_the_bottom_right_corner_are_dropped():
    skhm = torch.zeros(1, 2, 4, 5)
    skhm[0, 1, 3, 4] = skhm[0, 1, 0, 0] = 1.0  # the last cell of the last map: its corner x + 1, y + 1
    short = torch.zeros(1, 4, 4, 5)
    short[0, 2:, 3, 4] = 100.0
    votes = hough_vote(skhm, short, 8)
    assert votes.sum() == 1.0 and votes[0, 1, 0, 0] == 1.0


def reference_peaks(hough, max_peaks, threshold):
    """Set of (image, type, cell, score) of the max_peaks strongest 3x3 maxima above threshold (of equal
    neighbouring maxima, the first in raster order)."""
    b, k, h, w = hough.shape
    is_max = hough >= F.max_pool2d(hough, 3, 1, 1)
    padded = F.pad(hough, (1, 1, 1, 1), value=float("-inf"))
    padded_max = F.pad(is_max, (1, 1, 1, 1), value=False)
    first = torch.ones_like(hough, dtype=torch.bool)
    for dy, dx in ((-1, -1), (-1, 0), (-1, 1), (0, -1)):  # the neighbours before the cell in raster order
        window = (..., slice(1 + dy, 1 + dy + h), slice(1 + dx, 1 + dx + w))
        first &= ~((padded[window] == hough) & padded_max[window])
    peak = torch.where(is_max & first, hough, torch.zeros_like(hough))
    scores, idx = peak.flatten(2).topk(min(max_peaks, h * w), dim=2)
    return {(i, t, c, round(s, 5)) for i in range(b) for t in range(k)
            for s, c in zip(scores[i, t].tolist(), idx[i, t].tolist()) if s > threshold}


@pytest.mark.parametrize("fraction", [0.02, 0.9])  # candidates tested one by one, dense max filter
@pytest.mark.parametrize("max_peaks", [3, 32])
def test_find_peaks_matches_max_pool_and_topk(fraction, max_peaks):
    hough = sparse_maps((2, 3, 12, 14), fraction, seed=4) * 1.5  # some scores above 1
    short = torch.randn(2, 6, 12, 14)
    pos, scores, valid = find_peaks(hough, short, 8, max_peaks, 0.05, refine=False)
    found = set()
    for i, t, slot in valid.nonzero().tolist():
        u, v = ((pos[i, t, slot] - 3.5) / 8).round().long().tolist()
        found.add((i, t, v * 14 + u, round(float(hough[i, t, v, u]), 5)))
    assert found == reference_peaks(hough, max_peaks, 0.05)
    assert valid.shape[2] == max(valid.sum(-1).max().item(), 1) <= max_peaks
    assert (scores[valid] <= 1).all() and (scores[~valid] == 0).all()
    ordered = torch.where(valid, scores, -1.0)
    assert (ordered[..., :-1] >= ordered[..., 1:]).all()  # strongest first
    refined, _, _ = find_peaks(hough, short, 8, max_peaks, 0.05, refine=True)
    i, t, slot = valid.nonzero()[0].tolist()
    cell = nearest_cells(pos[i, t, slot], 8, (12, 14))[0]
    offset = short[i, 2 * t:2 * t + 2].flatten(1)[:, cell]
    assert torch.allclose(refined[i, t, slot] - pos[i, t, slot], offset, atol=1e-4)


@pytest.mark.parametrize("dense", [False, True])  # candidates tested one by one, dense max filter first
def test_equal_neighbours_make_one_peak_the_first_in_raster_order(dense):
    hough = torch.rand(1, 1, 6, 8, generator=torch.Generator().manual_seed(0)) * 0.4 * dense
    hough[0, 0, 1:3, 1:3] = 0.9  # a keypoint on a cell corner: four equal cells
    hough[0, 0, 4, 1:4] = 0.8  # three in a row
    hough[0, 0, 1, 6] = hough[0, 0, 2, 5] = 0.7  # equal on the anti-diagonal
    hough[0, 0, 4, 5] = hough[0, 0, 5, 6] = 0.6  # and on the diagonal
    pos, scores, valid = find_peaks(hough, torch.zeros(1, 2, 6, 8), 8, 32, 0.05, refine=False)
    found = {tuple(((p - 3.5) / 8).round().long().tolist()[::-1]) for p in pos[valid]}  # (row, column)
    firsts = {(1, 1), (4, 1), (1, 6), (4, 5)}
    assert firsts <= found and not found & {(1, 2), (2, 1), (2, 2), (4, 2), (4, 3), (2, 5), (5, 6)}
    if not dense:
        assert found == firsts
    as_reference = {(0, 0, r * 8 + c, round(float(hough[0, 0, r, c]), 5)) for r, c in found}
    assert as_reference == reference_peaks(hough, 32, 0.05)


@pytest.mark.parametrize("dense", [False, True])
def test_an_equal_neighbour_beside_a_higher_cell_suppresses_nothing(dense):
    hough = torch.rand(1, 1, 5, 7, generator=torch.Generator().manual_seed(1)) * 0.3 * dense
    hough[0, 0, 2, 1:4] = torch.tensor([0.9, 0.5, 0.5])  # the first 0.5 is below the 0.9: the second is a maximum
    hough[0, 0, 0, 6] = hough[0, 0, 1, 5] = 0.6  # tied on the anti-diagonal, the later one beside a higher cell
    hough[0, 0, 2, 5] = 0.8
    pos, _, valid = find_peaks(hough, torch.zeros(1, 2, 5, 7), 8, 32, 0.05, refine=False)
    found = {tuple(((p - 3.5) / 8).round().long().tolist()[::-1]) for p in pos[valid]}  # (row, column)
    assert {(2, 1), (2, 3), (0, 6), (2, 5)} <= found and not found & {(2, 2), (1, 5)}
    as_reference = {(0, 0, r * 7 + c, round(float(hough[0, 0, r, c]), 5)) for r, c in found}
    assert as_reference == reference_peaks(hough, 32, 0.05)


def test_a_keypoint_on_a_cell_corner_decodes_to_one_person():
    codec = StrongPoseCodec(stride=8, disk_radius=32.0, decode_nms_oks=1.0)  # no OKS-NMS to hide copies
    keypoints = torch.zeros(1, 17, 3)
    keypoints[0, :, 0] = torch.arange(17) % 6 * 32 + 40 + 7.5  # midway between cell centres in x and y
    keypoints[0, :, 1] = torch.arange(17) // 6 * 48 + 40 + 7.5
    keypoints[0, :, 2] = 2
    targets = {name: value[None] for name, value in codec.encode(keypoints, (256, 256)).items()}
    people = codec.decode(targets)[0]
    assert len(people) == 1
    assert torch.allclose(people.keypoints[0, :, :2], keypoints[0, :, :2], atol=1e-3)


def test_find_peaks_on_an_empty_map():
    pos, scores, valid = find_peaks(torch.zeros(1, 2, 5, 5), torch.zeros(1, 4, 5, 5), 8, 32, 0.01)
    assert pos.shape == (1, 2, 1, 2) and not valid.any()


def test_nearest_cells_clamps_to_the_map():
    pos = torch.tensor([[3.5, 3.5], [12.0, 3.4], [-50.0, 500.0], [1000.0, -3.0]])
    cells, centres = nearest_cells(pos, 8, (4, 6))
    assert cells.tolist() == [0, 1, 18, 5]
    assert torch.equal(centres, map_to_input(torch.tensor([[0.0, 0], [1, 0], [0, 3], [5, 0]]), 8))


def test_long_links_keeps_the_listed_links_within_the_snap_radius():
    g = np.random.default_rng(5)
    k, num, topn = 3, 4, 2
    dist = g.uniform(0, 20, (k, num, k, topn)).astype(np.float32)
    idx = np.stack([g.permutation(num + 1)[:topn] for _ in range(k * num * k)]).reshape(k, num, k, topn)
    link_dist, link_slot = _long_links(dist, idx, 10.0)  # slot num: past the image's own (a batch's busier one)
    assert link_dist.shape == link_slot.shape == (k * num, k, topn)
    for s in range(k):
        for l in range(num):
            for t in range(k):
                for n, (d, j) in enumerate(zip(dist[s, l, t], idx[s, l, t])):
                    kept = d <= 10.0 and j < num
                    assert link_dist[s * num + l, t, n] == (d if kept else np.inf)
                    assert link_slot[s * num + l, t, n] == min(j, num - 1)


def test_decode_leaves_no_inference_tensors_behind():
    codec = StrongPoseCodec(stride=8)
    maps = codec.encode(as_tensor([person(80, 30, 200)]), (256, 320))
    poses = codec.decode(maps)[0]
    poses.keypoints[..., 2] *= 0.5  # in place: fails on an inference tensor
    # the constants cached during decode (inference mode) must still work with autograd
    skhm = maps["skhm"][None].clone().requires_grad_()
    codec.keypoint_scores(skhm, maps["short"][None]).sum().backward()
    assert skhm.grad is not None and skhm.grad.abs().sum() > 0
