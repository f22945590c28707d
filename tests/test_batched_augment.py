"""The batched augmentation of in-memory datasets (kdistill.data.batched) against torchvision's per-sample presets:
the same output for the same crop and flip, the same distribution of crops and flips, and draws that depend on
(stream seed, epoch, sample index) only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from kdistill.config import load_config
from kdistill.contracts import ConfigError
from kdistill.data import build_data, make_loader, start_epoch
from kdistill.data.batched import BATCH_PRESETS, CropFlip, ResizedCropFlip, sample_seeds, sample_uniforms
from kdistill.data.splits import UNLABELLED, sample_seed
from kdistill.data.transforms import PRESETS

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def images(count: int, size: int, seed: int = 0, channels: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (count, channels, size, size), generator=torch.Generator().manual_seed(seed)).to(
        torch.uint8
    )


def draws(count: int, columns: int, seed: int = 3, epoch: int = 0) -> torch.Tensor:
    return torch.from_numpy(sample_uniforms(seed, [epoch] * count, np.arange(count), columns))


def finish(image: torch.Tensor) -> torch.Tensor:
    """torchvision's ToDtype(scale=True) + Normalize, as the per-sample presets end."""
    return v2.Normalize(list(MEAN), list(STD))(v2.ToDtype(torch.float32, scale=True)(image))


# ----------------------------------------------------------------------------- the draws


def splitmix64(state: int, count: int) -> list[int]:
    """SplitMix64 written out with Python integers (Steele, Lea and Flood's reference, 64-bit wrap by masking)."""
    mask, out = (1 << 64) - 1, []
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(z ^ (z >> 31))
    return out


def test_draws_are_splitmix64_from_the_per_sample_seed():
    keys = [(0, 0, 0), (7, 3, 12345), (2**40 - 1, -1, 59_999), (123, 10**6, 2**31)]
    for stream, epoch, index in keys:
        assert int(sample_seeds(stream, [epoch], np.array([index]))[0]) == sample_seed(stream, epoch, index)
        expected = [(value >> 11) * 2.0**-53 for value in splitmix64(sample_seed(stream, epoch, index), 5)]
        assert sample_uniforms(stream, [epoch], np.array([index]), 5)[0].tolist() == expected


def test_draws_are_uniform_and_independent_across_samples_epochs_and_columns():
    count = 40_000
    u = sample_uniforms(11, np.repeat([0, 1], count // 2), np.tile(np.arange(count // 2), 2), 4)
    assert u.min() >= 0 and u.max() < 1
    counts = np.histogram(u[:, 0], bins=20, range=(0, 1))[0]
    expected = count / 20
    assert ((counts - expected) ** 2 / expected).sum() < 50  # chi-square, 19 dof: p < 1e-4 above 45.4
    correlations = np.corrcoef(np.concatenate([u[: count // 2], u[count // 2 :], np.roll(u[: count // 2], 1, 0)], 1).T)
    off_diagonal = correlations[~np.eye(len(correlations), dtype=bool)]
    assert np.abs(off_diagonal).max() < 0.03  # columns, epochs 0 vs 1, neighbouring indices: all uncorrelated


# ----------------------------------------------------------------------------- same output for the same crop


def per_sample_crop_flip(image, top, left, flip, size, padding, resize_to=None):
    if resize_to is not None:
        image = TF.resize(image, [resize_to, resize_to], antialias=True)
    image = TF.crop(TF.pad(image, [padding]), top, left, size, size)
    return finish(TF.horizontal_flip(image) if flip else image)


@pytest.mark.parametrize(
    "native, size, padding, resize_to", [(32, 32, 4, None), (28, 28, 3, None), (28, 24, 3, 24), (24, 24, 0, 30)]
)
def test_crop_flip_gives_torchvision_s_output_bit_for_bit_for_the_same_offsets(native, size, padding, resize_to):
    batch = images(48, native)
    transform = CropFlip(size, MEAN, STD, padding=padding, resize_to=resize_to)
    uniforms = draws(48, transform.draws)
    side = resize_to or native
    top, left, flip = transform.offsets(uniforms, side, side)
    assert int(top.max()) <= side + 2 * padding - size and flip.any() and not flip.all()
    expected = torch.stack(
        [
            per_sample_crop_flip(batch[i], int(top[i]), int(left[i]), bool(flip[i]), size, padding, resize_to)
            for i in range(48)
        ]
    )
    assert torch.equal(transform(batch, uniforms), expected)


@pytest.mark.parametrize("native, size", [(32, 32), (32, 24), (8, 32), (28, 28)])
def test_resized_crop_is_torchvision_s_antialiased_resize_of_the_same_box(native, size):
    batch = images(48, native, seed=1)
    transform = ResizedCropFlip(size, MEAN, STD)
    uniforms = draws(48, transform.draws)
    top, left, box_h, box_w = transform.boxes(uniforms, native, native)
    flip = uniforms[:, -1] < 0.5
    ours = transform.resized_crop(batch, top, left, box_h, box_w, flip).float()

    def reference(pixels: torch.Tensor, i: int) -> torch.Tensor:
        crop = TF.resized_crop(pixels[i], int(top[i]), int(left[i]), int(box_h[i]), int(box_w[i]), [size, size])
        return TF.horizontal_flip(crop) if flip[i] else crop

    # torchvision's float kernel, rounded: the same pixels but for float summation order at a half grey level
    float_kernel = torch.stack([reference(batch.float(), i) for i in range(48)]).round().clamp(0, 255)
    assert (ours - float_kernel).abs().max() <= 1 and (ours == float_kernel).float().mean() > 0.999
    # torchvision's uint8 CPU kernel (what the per-sample preset runs) rounds in fixed point: within one grey level
    uint8_kernel = torch.stack([reference(batch, i) for i in range(48)]).float()
    assert (ours - uint8_kernel).abs().max() <= 1 and (ours == uint8_kernel).float().mean() > 0.8
    full = transform(batch, uniforms)
    assert torch.allclose(full, finish(ours.to(torch.uint8)))


# ----------------------------------------------------------------------------- same distribution


def two_sample_p(ours: np.ndarray, theirs: np.ndarray, bins: np.ndarray) -> float:
    """p-value of a chi-square test that two samples of a discrete variable come from one distribution."""
    table = np.stack([np.histogram(ours, bins)[0], np.histogram(theirs, bins)[0]])
    return float(chi2_contingency(table[:, table.sum(0) > 0])[1])


def test_crop_offsets_and_flips_have_the_frequencies_of_torchvision_s_random_crop_and_flip():
    count, native, padding = 20_000, 28, 3
    transform = CropFlip(native, MEAN, STD, padding=padding)
    top, left, flip = transform.offsets(draws(count, transform.draws, seed=5), native, native)
    torch.manual_seed(5)
    crop = v2.RandomCrop(native, padding=padding)
    params = [crop.make_params([torch.zeros(1, native, native)]) for _ in range(count)]
    theirs_top, theirs_left = np.array([p["top"] for p in params]), np.array([p["left"] for p in params])
    bins = np.arange(2 * padding + 2) - 0.5  # offsets 0..2p, each with probability 1 / (2p + 1)
    assert two_sample_p(top.numpy(), theirs_top, bins) > 1e-3 and two_sample_p(left.numpy(), theirs_left, bins) > 1e-3
    their_flips = np.array([torch.rand(1).item() < 0.5 for _ in range(count)])  # RandomHorizontalFlip's draw
    assert two_sample_p(flip.numpy().astype(int), their_flips.astype(int), np.array([-0.5, 0.5, 1.5])) > 1e-3
    assert abs(flip.float().mean().item() - 0.5) < 0.015


@pytest.mark.parametrize("preset", ["inception", "imagenet"])
@pytest.mark.parametrize("native, size", [(32, 32), (28, 20)])
def test_resized_crop_boxes_have_the_frequencies_of_torchvision_s_random_resized_crop(preset, native, size):
    count = 20_000
    transform = BATCH_PRESETS.get(preset)(size, native, MEAN, STD)
    assert isinstance(transform, ResizedCropFlip)
    top, left, box_h, box_w = (t.numpy() for t in transform.boxes(draws(count, transform.draws), native, native))
    reference = PRESETS.get(preset)(size, native, MEAN, STD)[0].transforms[1]
    assert isinstance(reference, v2.RandomResizedCrop)
    torch.manual_seed(3)
    params = [reference.make_params([torch.zeros(1, native, native)]) for _ in range(count)]
    theirs = {key: np.array([p[key] for p in params]) for key in ("top", "left", "height", "width")}
    sides = np.arange(native + 2) - 0.5
    for ours, key in ((box_h, "height"), (box_w, "width"), (top, "top"), (left, "left")):
        assert two_sample_p(ours, theirs[key], sides) > 1e-3, key
    areas = np.linspace(0, native * native, 21)
    assert two_sample_p(box_h * box_w, theirs["height"] * theirs["width"], areas) > 1e-3
    assert (top + box_h <= native).all() and (left + box_w <= native).all() and (box_h >= 1).all()


def test_an_image_no_box_fits_gets_torchvision_s_centre_crop():
    transform = ResizedCropFlip(16, MEAN, STD, scale=(0.9, 1.0), ratio=(3.0, 4.0))  # too wide for a square image
    top, left, box_h, box_w = transform.boxes(draws(8, transform.draws), 32, 32)
    reference = v2.RandomResizedCrop(16, scale=(0.9, 1.0), ratio=(3.0, 4.0)).make_params([torch.zeros(1, 32, 32)])
    assert reference == {"top": 10, "left": 0, "height": 11, "width": 32}  # ratio clamped to 3, centred
    assert box_h.tolist() == [11] * 8 and box_w.tolist() == [32] * 8
    assert top.tolist() == [(32 - 11) // 2] * 8 and left.tolist() == [0] * 8


# ----------------------------------------------------------------------------- the in-memory splits


def digits(tmp_path, *extra: str):
    config = load_config(overrides=["data.name=digits", "data.val_size=100", f"output_dir={tmp_path}", *extra])
    return config, build_data(config.data, 0, stream_seed=4)


def epoch(data, epoch_number: int, batch_size: int = 64):
    loader = make_loader(data.train, batch_size, True, 4, drop_last=False)
    start_epoch(loader, 4, epoch_number)
    return list(loader)


@pytest.mark.parametrize("augment", ["crop_flip", "inception", "resize_crop"])
def test_a_sample_s_pixels_depend_on_stream_epoch_and_index_only(tmp_path, augment):
    _, data = digits(tmp_path, f"data.augment={augment}", "data.image_size=12")
    assert data.train.view is not None  # read by the batch
    batches = epoch(data, 2)
    inputs, indices = torch.cat([b.inputs for b in batches]), torch.cat([b.indices for b in batches])
    # other batch sizes, and one item at a time: the same pixels for every (epoch, index)
    for other in (epoch(data, 2, batch_size=7), [data.train[(int(i), 2)] for i in indices[:20]]):
        if isinstance(other[0], tuple):
            again, order = torch.stack([item[0] for item in other]), torch.tensor([item[2] for item in other])
        else:
            again, order = torch.cat([b.inputs for b in other]), torch.cat([b.indices for b in other])
        by_index = dict(zip(order.tolist(), again))
        assert all(torch.equal(by_index[i], x) for i, x in zip(indices.tolist(), inputs) if i in by_index)
    assert not torch.equal(inputs[indices.argsort()], torch.cat([b.inputs for b in epoch(data, 3)])[indices.argsort()])
    assert inputs.shape[1:] == (1, 12, 12) and inputs.dtype == torch.float32


def test_batched_and_per_sample_pipelines_give_the_same_targets_and_pixel_statistics(tmp_path):
    _, batched = digits(tmp_path, "data.augment=crop_flip", "data.labelled=300")
    _, per_sample = digits(tmp_path, "data.augment=crop_flip", "data.labelled=300", "data.pipeline=per_sample")
    assert batched.train.view is not None and per_sample.train.view is None
    ours, theirs = epoch(batched, 0), epoch(per_sample, 0)
    targets = torch.cat([b.targets for b in ours])
    assert torch.equal(targets, torch.cat([b.targets for b in theirs]))  # same order, labels and -1s
    assert (targets == UNLABELLED).sum() == len(targets) - 300
    assert torch.equal(torch.cat([b.indices for b in ours]), torch.cat([b.indices for b in theirs]))
    mean_ours = torch.cat([b.inputs for b in ours]).mean(0)
    mean_theirs = torch.cat([b.inputs for b in theirs]).mean(0)
    # the mean augmented image of 1,437 samples: a crop shifts it by whole pixels, the same way in both
    assert (mean_ours - mean_theirs).abs().mean() < 0.05 * mean_theirs.abs().mean()
    # validation and test splits are deterministic: identical pixels either way, as plain tensors (not v2's Image,
    # which torch.compile cannot take)
    for split in ("val", "test"):
        loaders = (make_loader(getattr(d, split), 512, False, 0) for d in (batched, per_sample))
        (ours_batch,), (theirs_batch,) = (list(loader) for loader in loaders)
        assert type(ours_batch.inputs) is torch.Tensor and torch.equal(ours_batch.inputs, theirs_batch.inputs)


def test_the_batched_pipeline_is_refused_for_file_datasets_and_unknown_pipelines(tmp_path):
    with pytest.raises(ConfigError, match="read from files image by image"):
        root = tmp_path / "folder"
        for split in ("train", "val"):
            for label in ("a", "b"):
                (root / split / label).mkdir(parents=True)
                for k in range(2):
                    v2.functional.to_pil_image(images(1, 16, seed=k)[0]).save(root / split / label / f"{k}.png")
        config = load_config(
            overrides=[f"data.root={root}", "data.name=imagefolder", "data.augment=crop_flip", "data.pipeline=batched"]
        )
        build_data(config.data, 0, 0)
    with pytest.raises(ConfigError, match="data.pipeline='fast'; valid: auto, batched, per_sample"):
        from kdistill.engine.builders import preflight

        preflight(load_config(overrides=["data.pipeline=fast"]), output=False)
