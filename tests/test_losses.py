import math

import pytest
import torch

from sae.losses import enhance_loss, gaussian_smooth, norm_loss, separate_loss, smoothing_sigma

# 1-D Gaussian of size 3, sigma 0.5: exp(-x^2 / 0.5) at x = -1, 0, 1, normalised (the textbook kernel)
_E = math.exp(-2.0)
K_EDGE, K_CENTRE = _E / (1 + 2 * _E), 1 / (1 + 2 * _E)
# the release's (and Attend-and-Excite's) kernel: exp(-((x - mean) / (2 * 0.5))^2) = exp(-x^2), normalised
_R = math.exp(-1.0)
R_EDGE, R_CENTRE = _R / (1 + 2 * _R), 1 / (1 + 2 * _R)


def test_separate_two_maps_hand_computed():
    m1 = torch.tensor([[0.5, 0.0], [0.3, 0.1]])
    m2 = torch.tensor([[0.5, 0.2], [0.6, 0.0]])
    # pixel-wise m1*m2/(m1+m2): 0.25/1.0, 0, 0.18/0.9 = 0.2, 0 -> max 0.25 (the release's: no epsilon)
    loss = separate_loss(torch.stack([m1, m2]))
    assert loss.shape == ()
    assert loss.item() == 0.25


def test_separate_is_zero_where_both_maps_are_and_changes_nothing_else():
    """The release divides by M1 + M2 with no epsilon: where both maps underflowed to 0 the ratio is 0 (not NaN),
    and every other pixel keeps its exact value."""
    zero = torch.zeros(2, 2)
    loss = separate_loss(torch.stack([zero, zero]))
    assert loss.item() == 0.0
    tiny = torch.full((2, 2), 1e-30)
    assert separate_loss(torch.stack([tiny, tiny])).item() == pytest.approx(0.5e-30, rel=1e-6)


def test_separate_three_maps_max_and_mean_over_pairs():
    a = torch.tensor([[0.4, 0.0], [0.0, 0.0]])
    b = torch.tensor([[0.4, 0.0], [0.0, 0.2]])
    c = torch.tensor([[0.0, 0.0], [0.0, 0.2]])
    maps = torch.stack([a, b, c])
    ab = 0.16 / 0.8  # at (0, 0)
    ac = 0.0
    bc = 0.04 / 0.4  # at (1, 1)
    assert separate_loss(maps).item() == pytest.approx(max(ab, ac, bc), abs=1e-5)
    assert separate_loss(maps, pair_reduction="mean").item() == pytest.approx((ab + ac + bc) / 3, abs=1e-5)


def test_separate_disjoint_maps_is_zero_and_identical_maps_is_half_peak():
    a = torch.zeros(4, 4)
    a[0, 0] = 0.9
    b = torch.zeros(4, 4)
    b[3, 3] = 0.7
    assert separate_loss(torch.stack([a, b])).item() == 0.0
    assert separate_loss(torch.stack([a, a])).item() == pytest.approx(0.45, abs=1e-5)


def test_gaussian_smooth_reflect_padding_hand_computed():
    m = torch.zeros(3, 3)
    m[1, 0] = 1.0  # middle of the left edge
    s = gaussian_smooth(m)
    assert s[1, 0].item() == pytest.approx(K_CENTRE * K_CENTRE, abs=1e-6)
    # (0, 0) sees the peak directly below and, through reflect padding, its mirror image above
    assert s[0, 0].item() == pytest.approx(2 * K_EDGE * K_CENTRE, abs=1e-6)
    assert s[1, 1].item() == pytest.approx(K_CENTRE * K_EDGE, abs=1e-6)
    # a constant map stays constant (the kernel is normalised, reflect padding adds no zeros)
    assert torch.allclose(gaussian_smooth(torch.full((5, 5), 0.3)), torch.full((5, 5), 0.3))


def test_kernel_weights_match_the_published_values():
    assert (R_EDGE, R_CENTRE) == (pytest.approx(0.212, abs=5e-4), pytest.approx(0.576, abs=5e-4))
    assert (K_EDGE, K_CENTRE) == (pytest.approx(0.107, abs=5e-4), pytest.approx(0.787, abs=5e-4))
    impulse = torch.zeros(5, 5)  # large enough that reflect padding does not fold the impulse back
    impulse[2, 2] = 1.0
    for kernel, (edge, centre) in (("release", (R_EDGE, R_CENTRE)), ("textbook", (K_EDGE, K_CENTRE))):
        smoothed = gaussian_smooth(impulse, sigma=smoothing_sigma(kernel))
        assert smoothed[2, 2].item() == pytest.approx(centre * centre, abs=1e-6)
        assert smoothed[1, 2].item() == pytest.approx(edge * centre, abs=1e-6)
        assert smoothed[1, 1].item() == pytest.approx(edge * edge, abs=1e-6)
    with pytest.raises(ValueError, match="smoothing kernel"):
        smoothing_sigma("box")


@pytest.mark.parametrize("kernel, centre", [("release", R_CENTRE), ("textbook", K_CENTRE)])
def test_enhance_masks_of_different_peak(kernel, centre):
    strong = torch.zeros(5, 5)
    strong[2, 2] = 0.8
    weak = torch.zeros(5, 5)
    weak[2, 2] = 0.4
    loss = enhance_loss(torch.stack([strong, weak]), kernel)
    # the weakest object's smoothed peak is 0.4 * centre weight
    assert loss.item() == pytest.approx(1 - 0.4 * centre ** 2, abs=1e-6)
    assert enhance_loss(torch.stack([strong]), kernel).item() == pytest.approx(1 - 0.8 * centre ** 2, abs=1e-6)


def test_enhance_defaults_to_the_release_kernel():
    peak = torch.zeros(1, 5, 5)
    peak[0, 2, 2] = 1.0
    assert enhance_loss(peak).item() == pytest.approx(1 - R_CENTRE ** 2, abs=1e-6)


def test_losses_batched_match_unbatched():
    torch.manual_seed(0)
    maps = torch.rand(2, 3, 3, 6, 6).softmax(dim=-1)  # (batch, time, K, H, W)
    sep, en = separate_loss(maps), enhance_loss(maps)
    assert sep.shape == (2, 3) and en.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            assert sep[i, j] == separate_loss(maps[i, j])
            assert en[i, j] == enhance_loss(maps[i, j])


def test_enhance_gradient_reaches_only_the_weakest_object():
    maps = torch.zeros(2, 4, 4)
    maps[0, 1, 1] = 0.9
    maps[1, 2, 2] = 0.3
    maps.requires_grad_(True)
    enhance_loss(maps).backward()
    assert maps.grad[0].abs().sum() == 0
    assert maps.grad[1].abs().sum() > 0
    assert maps.grad[1, 2, 2] < 0  # raising the weak peak lowers the loss


def test_separate_gradient_pushes_overlap_down():
    a = torch.full((3, 3), 0.1)
    a[1, 1] = 0.5
    maps = torch.stack([a, a.clone()]).requires_grad_(True)
    separate_loss(maps).backward()
    assert maps.grad[:, 1, 1].gt(0).all()  # lowering either map at the overlap lowers the loss
    assert maps.grad[:, 0, 0].eq(0).all()  # only the arg-max pixel carries gradient


@pytest.mark.parametrize("bad", [torch.zeros(1, 4, 4), torch.zeros(4, 4)])
def test_separate_needs_two_objects(bad):
    with pytest.raises(ValueError, match="K >= 2"):
        separate_loss(bad)


def test_enhance_needs_object_axis_and_bad_reduction_is_refused():
    with pytest.raises(ValueError, match="K >= 1"):
        enhance_loss(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="pair_reduction"):
        separate_loss(torch.zeros(2, 4, 4), pair_reduction="median")


def test_norm_loss_is_mse_without_gradient_to_frozen():
    pred = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    frozen = torch.tensor([1.0, 0.0, 0.0], requires_grad=True)
    loss = norm_loss(pred, frozen)
    assert loss.item() == pytest.approx((0 + 4 + 9) / 3)
    loss.backward()
    assert frozen.grad is None and pred.grad is not None
