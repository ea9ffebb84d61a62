import math

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from strongpose.codec import OFFSET_MAPS
from strongpose.models.losses import COUNT_SCALE, heatmap_loss, offset_loss, strongpose_losses, term_counts
from strongpose.op_count import CountOps

WEIGHTS = {"skhm": 4.0, "bhm": 2.0, "short": 1.0, "mid": 0.4, "long": 0.1}


def _outputs_like(targets, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in ("skhm", "bhm", "short", "mid", "long"):
        out[name] = torch.randn(targets[name].shape, generator=g) * (1.0 if name in ("skhm", "bhm") else 10.0)
    return out


@pytest.mark.parametrize("kind", ["bce", "focal"])
def test_heatmap_loss_ignores_zero_weight_cells(kind, batch):
    t = batch["targets"]
    weight = t["weight"]
    assert (weight == 0).any() and (weight > 0).any()
    logits = torch.randn(t["skhm"].shape)
    before = heatmap_loss(logits, t["skhm"], weight, kind)
    ignored = (weight == 0) & (t["skhm"] == 0)  # a positive target counts in an ignored region too
    changed = torch.where(ignored, logits + 100 * torch.randn_like(logits), logits)
    assert torch.equal(heatmap_loss(changed, t["skhm"], weight, kind), before)
    changed_kept = torch.where(~ignored, logits + 3.0, logits)
    assert not torch.allclose(heatmap_loss(changed_kept, t["skhm"], weight, kind), before)


def test_focal_loss_is_below_bce_and_perfect_logits_cost_almost_nothing(batch):
    t = batch["targets"]
    logits = torch.randn(t["skhm"].shape)
    assert heatmap_loss(logits, t["skhm"], t["weight"], "focal") < heatmap_loss(logits, t["skhm"], t["weight"], "bce")
    perfect = (t["skhm"] * 2 - 1) * 30.0
    assert heatmap_loss(perfect, t["skhm"], t["weight"], "bce") < 1e-6
    with pytest.raises(ValueError, match="heat-map loss"):
        heatmap_loss(logits, t["skhm"], t["weight"], "mse")


@pytest.mark.parametrize("name", ["short", "mid", "long"])
def test_offset_loss_ignores_invalid_cells(name, batch, codec):
    t = batch["targets"]
    valid = t[f"{name}_valid"]
    assert valid.any() and (~valid).any()
    pred = torch.randn(t[name].shape) * 10
    before = offset_loss(pred, t[name], valid, codec.disk_radius)
    invalid = (~valid).repeat_interleave(2, dim=1)  # (dx, dy) channels of each map
    changed = torch.where(invalid, pred + 1000 * torch.randn_like(pred), pred)
    assert torch.equal(offset_loss(changed, t[name], valid, codec.disk_radius), before)
    assert offset_loss(t[name], t[name], valid, codec.disk_radius) == 0


def test_offset_loss_is_l1_in_disk_radius_units_averaged_over_valid_cells():
    target = torch.zeros(1, 4, 2, 2)  # two maps of 2 x 2 cells
    valid = torch.zeros(1, 2, 2, 2, dtype=torch.bool)
    valid[0, 0, 0, 0] = valid[0, 1, 1, 1] = True
    pred = target.clone()
    pred[0, 0, 0, 0] = 10.0   # map 0 dx, valid cell: |10| / R
    pred[0, 3, 1, 1] = -20.0  # map 1 dy, valid cell: |-20| / R
    pred[0, 2, 0, 0] = 99.0   # map 1 dx at a cell valid only for map 0: ignored
    assert offset_loss(pred, target, valid, disk_radius=10.0) == pytest.approx((1.0 + 2.0) / 2)
    assert offset_loss(pred, target, torch.zeros_like(valid), 10.0) == 0


@pytest.mark.parametrize("alpha", [None, 0.25])
def test_focal_loss_is_torchvisions_sigmoid_focal_loss(batch, alpha):
    """The modulating factor (1 - p_t)^gamma and the alpha balance, against torchvision's reference."""
    t = batch["targets"]
    logits = torch.randn(t["skhm"].shape, generator=torch.Generator().manual_seed(3)) * 3
    ones = torch.ones_like(t["weight"])
    reference = sigmoid_focal_loss(logits, t["skhm"], alpha=-1 if alpha is None else alpha, gamma=2.0, reduction="mean")
    assert heatmap_loss(logits, t["skhm"], ones, "focal", 2.0, alpha) == pytest.approx(float(reference), rel=1e-5)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_gradients_stay_finite_for_confident_logits(gamma):
    """1 - sigmoid(20) is 0 in float32, where (1 - p_t) ** gamma has an infinite slope for gamma < 1: the loss
    was finite and its gradient NaN (one step made most weights NaN, past the non-finite loss guard)."""
    logits = torch.tensor([[[[-20.0, 20.0, 0.3, -40.0]]]], requires_grad=True)
    target = torch.tensor([[[[0.0, 1.0, 1.0, 1.0]]]])
    loss = heatmap_loss(logits, target, torch.ones(1, 1, 1, 4), "focal", gamma)
    loss.backward()
    assert torch.isfinite(loss) and bool(torch.isfinite(logits.grad).all()), logits.grad
    assert logits.grad[0, 0, 0, 3] < 0  # a confident miss is still pushed the right way


def test_the_heatmap_loss_is_a_mean_over_the_counted_cells(batch, codec):
    """Zero logits cost ln 2 in every cell: a mean over the counted cells is ln 2 whatever is ignored; a sum
    divided by all cells (or counting ignored cells) is less."""
    t = batch["targets"]
    assert (t["weight"] == 0).any()
    zeros = torch.zeros_like(t["skhm"])
    assert heatmap_loss(zeros, t["skhm"], t["weight"]) == pytest.approx(math.log(2))
    out = {**_outputs_like(t), "skhm": zeros, "bhm": torch.zeros_like(t["bhm"])}
    losses = strongpose_losses(out, t, WEIGHTS, codec.disk_radius)
    assert losses["skhm"] == pytest.approx(math.log(2)) and losses["bhm"] == pytest.approx(math.log(2))


def test_all_terms_and_weighted_total(batch, codec):
    t = batch["targets"]
    out = _outputs_like(t)
    losses = strongpose_losses(out, t, WEIGHTS, codec.disk_radius)
    assert set(losses) == {"skhm", "bhm", "short", "mid", "long", "total"}
    for name in OFFSET_MAPS:  # each offset term in disk-radius units, as offset_loss alone
        assert losses[name] == pytest.approx(float(offset_loss(out[name], t[name], t[f"{name}_valid"],
                                                               codec.disk_radius)))
        assert t[f"{name}_valid"].any()
    assert losses["total"] == pytest.approx(sum(WEIGHTS[k] * float(losses[k]) for k in WEIGHTS))
    without_long = {k: v for k, v in out.items() if k != "long"}
    assert "long" not in strongpose_losses(without_long, t, WEIGHTS, codec.disk_radius)
    with pytest.raises(KeyError, match="no loss weight"):
        strongpose_losses(out, t, {k: v for k, v in WEIGHTS.items() if k != "mid"}, codec.disk_radius)


@pytest.mark.parametrize("kind", ["bce", "focal"])
def test_the_terms_computed_side_by_side_are_each_terms_own_loss_with_its_gradient(batch, codec, kind):
    """strongpose_losses reduces all heat maps and all offsets together: each term and the gradient of the total
    are those of the per-term losses."""
    t = batch["targets"]
    out = {k: v.requires_grad_() for k, v in _outputs_like(t, seed=3).items()}
    losses = strongpose_losses(out, t, WEIGHTS, codec.disk_radius, heatmap=kind, focal_alpha=0.25)
    alone = {name: heatmap_loss(out[name], t[name], t["weight"], kind, focal_alpha=0.25) for name in ("skhm", "bhm")}
    alone |= {name: offset_loss(out[name], t[name], t[f"{name}_valid"], codec.disk_radius) for name in OFFSET_MAPS}
    for name, value in alone.items():
        torch.testing.assert_close(losses[name], value, rtol=1e-5, atol=0)
    grads = torch.autograd.grad(losses["total"], list(out.values()))
    want = torch.autograd.grad(sum(WEIGHTS[name] * value for name, value in alone.items()), list(out.values()))
    for got, expected in zip(grads, want):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-9)


def test_one_infinite_term_leaves_the_others_finite(batch, codec):
    """The terms are reduced together; a term that overflows still shows alone in the logged terms."""
    t = batch["targets"]
    out = _outputs_like(t)
    out["long"] = torch.full_like(out["long"], float("inf"))
    losses = strongpose_losses(out, t, WEIGHTS, codec.disk_radius)
    assert losses["long"] == float("inf") and losses["total"] == float("inf")
    assert all(torch.isfinite(losses[name]) for name in ("skhm", "bhm", "short", "mid"))


def test_the_losses_operations_do_not_grow_with_the_terms(batch, codec):
    """What computing the terms side by side is for: on a fast GPU the host queueing small operations limits a
    small batch's step. Five terms cost only the concatenations of three offset maps more than three terms."""
    t = batch["targets"]
    out = _outputs_like(t)
    counted = {}
    for names in (("skhm", "bhm", "short"), ("skhm", "bhm", "short", "mid", "long")):
        with CountOps() as ops:
            strongpose_losses({name: out[name] for name in names}, t, WEIGHTS, codec.disk_radius)
        counted[len(names)] = ops.total
    assert counted[5] - counted[3] <= 3, counted


def _chunk_gradients(outputs, targets, codec, mean_over_processes):
    """Gradient of the chunk's loss w.r.t. float64 copies of its outputs."""
    leaves = {k: v.detach().double().requires_grad_() for k, v in outputs.items()}
    strongpose_losses(leaves, targets, WEIGHTS, codec.disk_radius, mean_over_processes=mean_over_processes)["total"].backward()
    return {k: v.grad for k, v in leaves.items()}


@pytest.mark.parametrize("global_counts", [True, False])
def test_two_processes_with_mean_counts_have_the_gradient_of_the_global_batch(codec, make_batch, global_counts):
    """What DDP computes (the mean of each process's gradient) equals the one-process gradient of the whole
    batch when each process divides by the mean of the processes' counts, and not with its own counts
    (the two halves hold different numbers of people, hence different counts)."""
    halves = [make_batch(codec, batch_size=2, people=p, seed=p) for p in (1, 3)]
    targets = {k: torch.cat([h["targets"][k] for h in halves]).double() if halves[0]["targets"][k].is_floating_point()
               else torch.cat([h["targets"][k] for h in halves]) for k in halves[0]["targets"]}
    outputs = _outputs_like(targets)
    one = _chunk_gradients(outputs, targets, codec, None)

    def part(k, t):
        return {name: v[2 * k: 2 * k + 2] for name, v in t.items()}

    counts = []  # each half's own counts, as the all-reduce would see them
    for k in range(2):
        strongpose_losses(part(k, outputs), part(k, targets), WEIGHTS, codec.disk_radius,
                          mean_over_processes=lambda c: counts.append(c) or c)
    assert not torch.equal(counts[0], counts[1])
    mean = (lambda c: (counts[0] + counts[1]) / 2) if global_counts else None
    halves_grads = [_chunk_gradients(part(k, outputs), part(k, targets), codec, mean) for k in range(2)]
    ddp = {name: torch.cat([g[name] for g in halves_grads]) / 2 for name in one}  # DDP: the processes' mean
    same = {name: torch.allclose(ddp[name], one[name], rtol=1e-9, atol=1e-15) for name in one}
    # own counts: the offset terms (valid cells depend on the people) go wrong; the heat maps' weight sums
    # (all cells but the crowd region) are equal in both halves here
    assert all(same.values()) if global_counts else not any(same[name] for name in ("short", "mid", "long"))


@pytest.mark.parametrize("window_counts", [True, False])
def test_accumulated_micro_batches_with_window_counts_have_the_gradient_of_the_whole_batch(codec, make_batch,
                                                                                          window_counts):
    """Lightning sums the gradients of loss / k over k micro-batches: that is the gradient of one batch of all
    their images when each micro-batch divides by the window's mean counts (term_counts summed, / k), as
    ResumableDataLoader supplies them, and not with its own."""
    chunks = [make_batch(codec, batch_size=2, people=p, seed=p) for p in (1, 4, 2)]
    targets = {k: torch.cat([c["targets"][k] for c in chunks]) for k in chunks[0]["targets"]}
    targets = {k: v.double() if v.is_floating_point() else v for k, v in targets.items()}
    outputs = _outputs_like(targets)
    one = _chunk_gradients(outputs, targets, codec, None)

    def part(k, t):
        return {name: v[2 * k: 2 * k + 2] for name, v in t.items()}

    per_chunk = [term_counts(part(k, targets)) for k in range(3)]
    assert per_chunk[0]["short"] != per_chunk[1]["short"]
    shares = {name: torch.tensor(round(sum(c[name] for c in per_chunk) / 3 * COUNT_SCALE)) for name in per_chunk[0]}
    grads = []
    for k in range(3):
        leaves = {n: v.detach().double().requires_grad_() for n, v in part(k, outputs).items()}
        loss = strongpose_losses(leaves, part(k, targets), WEIGHTS, codec.disk_radius,
                                 counts=shares if window_counts else None)["total"]
        (loss / 3).backward()  # what Lightning backpropagates
        grads.append({n: v.grad for n, v in leaves.items()})
    accumulated = {name: torch.cat([g[name] for g in grads]) for name in one}
    same = {name: torch.allclose(accumulated[name], one[name], rtol=1e-6, atol=1e-12) for name in one}
    assert all(same.values()) if window_counts else not any(same[name] for name in ("short", "mid", "long"))


def test_term_counts_are_what_the_loss_terms_divide_by(batch, codec):
    targets = batch["targets"]
    outputs = _outputs_like(targets)
    counts = term_counts(targets)
    assert set(counts) == {"skhm", "bhm", "short", "mid", "long"} and counts["short"] > 0
    own = strongpose_losses(outputs, targets, WEIGHTS, codec.disk_radius)
    given = strongpose_losses(outputs, targets, WEIGHTS, codec.disk_radius,
                              counts={name: torch.tensor(round(value * COUNT_SCALE)) for name, value in counts.items()})
    assert all(torch.allclose(own[name], given[name], rtol=1e-6) for name in own)


def test_float16_offset_targets_give_the_float32_loss(codec):
    """The data module's offsets arrive as float16: the loss computes in float32 and differs from the
    float32 targets' only by their rounding."""
    kp = 16 + torch.rand(3, codec.num_keypoints, 3, generator=torch.Generator().manual_seed(0)) * 47
    kp[..., 2] = 2
    exact = {k: v[None] for k, v in codec.encode(kp, (64, 64)).items()}  # float32, off float16's grid
    half = {k: v.half() if k in OFFSET_MAPS else v for k, v in exact.items()}
    out = _outputs_like(exact)
    a = strongpose_losses(out, exact, WEIGHTS, codec.disk_radius)
    b = strongpose_losses(out, half, WEIGHTS, codec.disk_radius)
    assert any((half[k].float() != exact[k]).any() for k in OFFSET_MAPS)  # the rounding is there
    assert all(b[k].dtype == torch.float32 for k in a)
    for k in a:
        assert float(b[k]) == pytest.approx(float(a[k]), rel=1e-3), k
    # under bfloat16 autocast, as Lightning computes the losses with precision=bf16-mixed (whose cat refuses float16
    # beside bfloat16): the same float32 terms
    with torch.autocast("cpu", dtype=torch.bfloat16):
        c = strongpose_losses({k: v.bfloat16() for k, v in out.items()}, half, WEIGHTS, codec.disk_radius)
    assert all(c[k].dtype == torch.float32 for k in a)
    for k in a:
        assert float(c[k]) == pytest.approx(float(a[k]), rel=2e-2), k


def test_an_ignored_region_counts_only_the_positive_targets_of_each_channel():
    """Crowd regions and unlabelled people: a labelled keypoint's disk reaching into one is learnt in its own
    channel; the other channels there (unknown: the crowd may hold that keypoint type) cost nothing."""
    target = torch.zeros(1, 3, 4, 4)
    target[0, 1, 1:3, 1:3] = 1.0  # channel 1's disk
    weight = torch.ones(1, 1, 4, 4)
    weight[..., :, :2] = 0.0  # the left half is ignored: half the disk lies in it
    logits = torch.zeros(1, 3, 4, 4)
    base = heatmap_loss(logits, target, weight)
    for c in range(3):
        for y, x in [(1, 1), (2, 0), (1, 3)]:
            changed = logits.clone()
            changed[0, c, y, x] = 5.0
            counts = heatmap_loss(changed, target, weight) != base
            assert counts == (x >= 2 or (c == 1 and target[0, c, y, x] > 0)), (c, y, x)
