"""Batch-level augmentation (kdistill.data.augment): mixup pairs, ratio distribution, crops, flips, replay."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from scipy import stats

from kdistill.data.augment import crop_resize, inception_crop, mixup, random_flip, sample_crop_boxes, sample_ratio


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("batch_size", [2, 3, 4, 7, 8, 64, 65])
def test_mixup_partner_is_never_the_sample_itself(batch_size):
    inputs = torch.arange(batch_size, dtype=torch.float32).reshape(batch_size, 1, 1, 1).expand(batch_size, 1, 2, 2)
    mixed, ratio, partner = mixup(inputs, generator(batch_size))
    assert partner.shape == (batch_size,)
    assert (partner != torch.arange(batch_size)).all()
    assert torch.equal(partner, torch.roll(torch.arange(batch_size), 1))
    assert sorted(partner.tolist()) == list(range(batch_size)), "every sample is used once as a partner"
    expected = ratio * inputs + (1 - ratio) * inputs[partner]
    torch.testing.assert_close(mixed, expected)
    # the pixel values say which two images were mixed: value = ratio * i + (1 - ratio) * (i - 1 mod B)
    own = torch.arange(batch_size, dtype=torch.float32)
    torch.testing.assert_close(mixed[:, 0, 0, 0], ratio * own + (1 - ratio) * own[partner])


def test_mixup_ratio_is_one_per_batch_by_default_and_per_sample_on_request():
    inputs = torch.randn(6, 3, 4, 4, generator=generator(1))
    _, ratio, _ = mixup(inputs, generator(2))
    assert ratio.dim() == 0
    mixed, ratios, partner = mixup(inputs, generator(2), per_sample=True)
    assert ratios.shape == (6,) and len(set(ratios.tolist())) == 6
    torch.testing.assert_close(
        mixed, ratios[:, None, None, None] * inputs + (1 - ratios[:, None, None, None]) * inputs[partner]
    )


def test_mixup_ratio_is_uniform():
    """Kolmogorov-Smirnov against U(0, 1) over 4,000 batches (fixed seed: deterministic)."""
    g = generator(123)
    inputs = torch.zeros(4, 1, 2, 2)
    ratios = torch.stack([mixup(inputs, g)[1] for _ in range(4000)]).numpy()
    assert ratios.min() >= 0 and ratios.max() <= 1
    assert stats.kstest(ratios, "uniform").pvalue > 0.01
    # and it is not some other distribution on [0, 1]: Beta(0.1, 0.1) is rejected by the same test
    beta = sample_ratio(generator(5), ("beta", 0.1), (4000,)).numpy()
    assert stats.kstest(beta, "uniform").pvalue < 1e-6


@pytest.mark.parametrize("alpha", [0.1, 0.4, 2.0])
def test_beta_ratio_matches_scipy_beta(alpha):
    """Chi-square over 10 equal-probability bins of Beta(alpha, alpha). (Not KS: with alpha = 0.1 about 10% of
    the mass lies within float32 rounding of 0 or 1, and the resulting ties at exactly 1.0 break a KS test.)"""
    samples = sample_ratio(generator(7), ("beta", alpha), (4000,)).double().numpy()
    edges = stats.beta(alpha, alpha).ppf(np.linspace(0, 1, 11))
    counts, _ = np.histogram(samples, bins=edges)
    assert counts.sum() == 4000
    assert stats.chisquare(counts).pvalue > 0.01


def test_augmentation_is_a_function_of_the_generator_state():
    inputs = torch.randn(8, 3, 16, 16, generator=generator(3))
    first = random_flip(inception_crop(mixup(inputs, generator(9))[0], generator(10)), generator(11))
    again = random_flip(inception_crop(mixup(inputs, generator(9))[0], generator(10)), generator(11))
    other = random_flip(inception_crop(mixup(inputs, generator(9))[0], generator(12)), generator(11))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    state = torch.random.get_rng_state()
    inception_crop(inputs, generator(1))
    assert torch.equal(state, torch.random.get_rng_state()), "global RNG must not be used"


def coordinate_image(height: int, width: int) -> torch.Tensor:
    """(1, 2, H, W): channel 0 holds the x of each pixel centre, channel 1 its y (in pixels)."""
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    return torch.stack([xs, ys])[None].float()


@pytest.mark.parametrize("area_range", [(0.05, 1.0), (0.3, 0.5)])
def test_inception_crop_size_area_and_content(area_range):
    height, width, batch = 64, 48, 200
    inputs = coordinate_image(height, width).expand(batch, 2, height, width)
    crops, boxes = inception_crop(inputs, generator(4), output_size=(20, 24), area_range=area_range, return_boxes=True)
    assert crops.shape == (batch, 2, 20, 24)
    x0, y0, box_w, box_h = boxes.unbind(1)
    fraction = box_w * box_h / (height * width)
    whole = (box_w == width) & (box_h == height)
    assert ((fraction >= area_range[0] - 1e-5) & (fraction <= area_range[1] + 1e-5) | whole).all()
    # whole pixels; w = round(h * ratio) with ratio in [0.75, 1.33], so w / h is within 0.5 / h of that range
    assert all(torch.equal(v, v.round()) for v in (x0, y0, box_w, box_h))
    aspect = box_w / box_h
    slack = 0.5 / box_h + 1e-6
    assert ((aspect >= 0.75 - slack) & (aspect <= 1.33 + slack) | whole).all()
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + box_w <= width).all() and (y0 + box_h <= height).all()
    assert fraction.min() < area_range[0] + 0.1 * (area_range[1] - area_range[0]), "areas should cover the range"
    # The pixel values tell where each output pixel was sampled: output pixel j of w_out sits at
    # x0 + (j + 0.5) * box_w / w_out in the input; bilinear sampling of a linear ramp returns exactly that
    # (except within half a pixel of the border, where sampling clamps).
    j = torch.arange(24) + 0.5
    expected_x = x0[:, None] + j[None] * (box_w[:, None] / 24)  # (B, 24)
    measured_x = crops[:, 0, 10, :]
    inside = (expected_x > 0.5) & (expected_x < width - 0.5)
    torch.testing.assert_close(measured_x[inside], expected_x[inside], atol=1e-3, rtol=0)
    i = torch.arange(20) + 0.5
    expected_y = y0[:, None] + i[None] * (box_h[:, None] / 20)
    measured_y = crops[:, 1, :, 12]
    inside = (expected_y > 0.5) & (expected_y < height - 0.5)
    torch.testing.assert_close(measured_y[inside], expected_y[inside], atol=1e-3, rtol=0)
    # and the crop's measured extent gives back its area fraction
    span_x = (measured_x[:, -1] - measured_x[:, 0]) * 24 / 23
    span_y = (measured_y[:, -1] - measured_y[:, 0]) * 20 / 19
    measured_fraction = span_x * span_y / (height * width)
    interior = (x0 > 1) & (y0 > 1) & (x0 + box_w < width - 1) & (y0 + box_h < height - 1)
    torch.testing.assert_close(measured_fraction[interior], fraction[interior], atol=1e-3, rtol=1e-3)


def test_inception_crop_default_size_is_the_input_size_and_full_box_is_identity():
    inputs = torch.randn(3, 3, 10, 12, generator=generator(5))
    assert inception_crop(inputs, generator(6)).shape == inputs.shape
    full = torch.tensor([[0.0, 0.0, 12.0, 10.0]]).expand(3, 4)
    torch.testing.assert_close(crop_resize(inputs, full, (10, 12)), inputs, atol=1e-5, rtol=0)
    flipped = crop_resize(inputs, full, (10, 12), flip=torch.tensor([True, False, True]))
    torch.testing.assert_close(flipped[0], inputs[0].flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(flipped[1], inputs[1], atol=1e-5, rtol=0)


def tf_reference_crop(rng: random.Random, height: int, width: int, area_range, aspect_range, attempts: int = 100):
    """A per-sample, loop-by-loop reading of TensorFlow's sample_distorted_bounding_box kernel
    (GenerateRandomCrop + its max_attempts loop; min_object_covered = 0, no boxes), with Python's RNG.
    Returns (x0, y0, w, h)."""

    def lrint(value: float) -> int:  # C's lrintf in the default mode: round half to even
        return int(round(value))

    def uniform_int(n: int) -> int:  # SimplePhilox::Uniform(n): an integer in [0, n)
        return rng.randrange(n)

    min_area = area_range[0] * width * height
    max_area = area_range[1] * width * height
    for _ in range(attempts):
        ratio = aspect_range[0] + rng.random() * (aspect_range[1] - aspect_range[0])
        h = lrint(math.sqrt(min_area / ratio))
        h_max = lrint(math.sqrt(max_area / ratio))
        if lrint(h_max * ratio) > width:
            h_max = int((width + 0.5 - 1e-7) / ratio)
            if lrint(h_max * ratio) > width:
                h_max -= 1
        h_max = min(h_max, height)
        if h >= h_max:
            h = h_max
        else:
            h += uniform_int(h_max - h + 1)
        w = lrint(h * ratio)
        if w * h < min_area:
            h += 1
            w = lrint(h * ratio)
        if w * h > max_area:
            h -= 1
            w = lrint(h * ratio)
        if not (min_area <= w * h <= max_area) or w > width or h > height or w <= 0 or h <= 0:
            continue
        y = uniform_int(height - h) if h < height else 0
        x = uniform_int(width - w) if w < width else 0
        return x, y, w, h
    return 0, 0, width, height


@pytest.mark.parametrize(
    "height, width, area_range",
    [(32, 32, (0.05, 1.0)), (64, 48, (0.05, 1.0)), (24, 40, (0.3, 0.5)), (20, 20, (0.9, 1.0))],
)
def test_crop_boxes_follow_tensorflows_sampler_in_distribution(height, width, area_range):
    """Ours (vectorised, torch generator) against the per-sample TF loop above (Python RNG): same mean area
    (z-test on 20,000 draws each), same distribution of areas and offsets (two-sample KS), same fallback rate."""
    draws = 20_000
    ours = sample_crop_boxes(draws, height, width, generator(21), area_range=area_range).double().numpy()
    rng = random.Random(1234)
    reference = np.array([tf_reference_crop(rng, height, width, area_range, (0.75, 1.33)) for _ in range(draws)], float)
    area_ours = ours[:, 2] * ours[:, 3] / (height * width)
    area_ref = reference[:, 2] * reference[:, 3] / (height * width)
    standard_error = math.sqrt(area_ours.var() / draws + area_ref.var() / draws)
    assert abs(area_ours.mean() - area_ref.mean()) < 4 * standard_error + 1e-12, (area_ours.mean(), area_ref.mean())
    for column in range(4):  # x0, y0, w, h: integer-valued, so KS is conservative here
        if np.ptp(reference[:, column]) > 0:
            assert stats.ks_2samp(ours[:, column], reference[:, column]).pvalue > 1e-3, column
    whole_ours = np.mean((ours[:, 2] == width) & (ours[:, 3] == height))
    whole_ref = np.mean((reference[:, 2] == width) & (reference[:, 3] == height))
    assert abs(whole_ours - whole_ref) < 4 * math.sqrt(max(whole_ref * (1 - whole_ref), 1e-4) * 2 / draws) + 1e-3


def test_crop_side_not_area_is_uniform():
    """TF draws the height uniformly, so small crops are more frequent than with an area-uniform draw: at
    32x32 and area_min 0.05 the mean area fraction is about 0.38 (TF's loop above), against about 0.46 for an
    area-uniform, log-uniform-ratio sampler with rejection of boxes that do not fit."""
    boxes = sample_crop_boxes(20_000, 32, 32, generator(22))
    fraction = (boxes[:, 2] * boxes[:, 3] / (32 * 32)).double()
    rng = random.Random(99)
    expected = np.mean(
        [np.prod(tf_reference_crop(rng, 32, 32, (0.05, 1.0), (0.75, 1.33))[2:]) / 1024 for _ in range(20_000)]
    )
    assert abs(fraction.mean().item() - expected) < 0.01
    assert fraction.mean().item() < 0.42, "an area-uniform sampler gives about 0.46 here"


def test_impossible_boxes_fall_back_to_the_whole_image():
    boxes = sample_crop_boxes(50, 10, 100, generator(0), area_range=(0.9, 1.0), aspect_range=(1.0, 1.0))
    assert torch.equal(boxes, torch.tensor([0.0, 0.0, 100.0, 10.0]).expand(50, 4))


def test_random_flip_mirrors_about_half_of_the_samples():
    inputs = torch.randn(400, 1, 3, 5, generator=generator(8))
    flipped = random_flip(inputs, generator(9))
    mirrored = (flipped == inputs.flip(-1)).flatten(1).all(1)
    kept = (flipped == inputs).flatten(1).all(1)
    assert (mirrored | kept).all()
    assert stats.binomtest(int(mirrored.sum()), 400, 0.5).pvalue > 0.01
