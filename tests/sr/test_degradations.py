"""Blur kernels, kernel degradation, JPEG quality estimation and round trips, noise estimation."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sr import degradations as d
from sr.errors import InvalidInput


def smooth_image(size: int = 96, channels: int = 3) -> torch.Tensor:
    """A smooth [1,C,size,size] image in [0.1, 0.9]: low-frequency sinusoids, a different phase per channel."""
    rows, cols = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                                indexing="ij")
    planes = [0.5 + 0.2 * torch.sin(rows / 9.0 + c) * torch.cos(cols / 13.0 - c) + 0.1 * torch.sin((rows + cols) / 17.0)
              for c in range(channels)]
    return torch.stack(planes)[None].float()


# --- kernels --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sf", [2, 4])
def test_random_kernel_is_normalised_centred_and_odd(sf):
    kernel = d.random_anisotropic_gaussian_kernel(sf, np.random.default_rng(3))
    assert kernel.shape[0] == kernel.shape[1] and kernel.shape[0] % 2 == 1
    assert kernel.shape[0] >= d.KERNEL_SIZE_FOR_SF[sf]
    assert kernel.min() >= 0 and kernel.sum() == pytest.approx(1.0, abs=1e-12)
    wanted = d.aligned_center(kernel.shape[0], sf)
    assert d.kernel_center_of_mass(kernel) == pytest.approx((wanted, wanted), abs=1e-6)


def test_random_kernels_follow_the_seed_and_are_anisotropic():
    first = d.random_anisotropic_gaussian_kernel(2, np.random.default_rng(7))
    again = d.random_anisotropic_gaussian_kernel(2, np.random.default_rng(7))
    other = d.random_anisotropic_gaussian_kernel(2, np.random.default_rng(8))
    assert np.array_equal(first, again) and not np.allclose(first, other)
    # Second moments: the covariance's two eigenvalues differ for most draws (ratio over 1.5 for some of 10).
    ratios = []
    for seed in range(10):
        kernel = d.random_anisotropic_gaussian_kernel(2, np.random.default_rng(seed), noise_level=0.0)
        offsets = np.arange(kernel.shape[0]) - d.kernel_center_of_mass(kernel)[0]
        rows, cols = np.meshgrid(offsets, offsets, indexing="ij")
        cov = np.array([[np.sum(kernel * rows * rows), np.sum(kernel * rows * cols)],
                        [np.sum(kernel * rows * cols), np.sum(kernel * cols * cols)]])
        eigen = np.linalg.eigvalsh(cov)
        ratios.append(eigen[1] / eigen[0])
    assert max(ratios) > 1.5


def test_center_kernel_moves_the_centre_of_mass():
    kernel = np.zeros((7, 7))
    kernel[1, 2] = 0.7
    kernel[1, 3] = 0.3
    centred = d.center_kernel(kernel, sf=2)
    wanted = d.aligned_center(centred.shape[0], 2)
    assert centred.sum() == pytest.approx(1.0)
    assert d.kernel_center_of_mass(centred) == pytest.approx((wanted, wanted), abs=1e-9)


def test_degrade_with_a_box_kernel_is_block_averaging():
    image = torch.rand(2, 3, 16, 20)
    box = np.zeros((3, 3))
    box[1:, 1:] = 0.25  # origin at (1, 1): averages the 2x2 block starting at (2j, 2i)
    assert torch.allclose(d.degrade_with_kernel(image, box, 2), F.avg_pool2d(image, 2), atol=1e-6)


def test_degrade_with_a_delta_is_plain_subsampling():
    image = torch.rand(1, 1, 15, 12)
    delta = np.zeros((5, 5))
    delta[2, 2] = 1.0
    result = d.degrade_with_kernel(image, delta, 3)
    assert result.shape == (1, 1, 5, 4)
    assert torch.allclose(result, image[..., ::3, ::3])


def test_an_aligned_kernel_lines_up_with_block_averaging():
    """A small centred Gaussian and a 2x2 box put the low-resolution pixel at the same place."""
    image = smooth_image(64)
    offsets = np.arange(9) - 4
    gaussian = np.exp(-offsets**2 / (2 * 0.6**2))
    kernel = d.center_kernel(np.outer(gaussian, gaussian), sf=2)
    aligned = (d.degrade_with_kernel(image, kernel, 2) - F.avg_pool2d(image, 2))[..., 4:-4, 4:-4].abs().max()
    shifted = np.pad(kernel, ((0, 2), (0, 2)))  # the same kernel one high-resolution pixel off
    misaligned = (d.degrade_with_kernel(image, shifted, 2) - F.avg_pool2d(image, 2))[..., 4:-4, 4:-4].abs().max()
    assert aligned < 0.01 < misaligned


def test_even_kernels_keep_their_origin():
    kernel = np.full((4, 4), 1 / 16)
    odd = d.as_odd_kernel(kernel)
    assert odd.shape == (5, 5) and odd[0].sum() == 0 and odd[:, 0].sum() == 0


def test_degrade_rejects_bad_arguments():
    with pytest.raises(InvalidInput):
        d.degrade_with_kernel(torch.rand(1, 3, 8, 8), np.ones((3, 3)) / 9, 1.5)
    with pytest.raises(InvalidInput):
        d.degrade_with_kernel(torch.rand(3, 8, 8), np.ones((3, 3)) / 9, 2)
    with pytest.raises(InvalidInput):
        d.degrade_with_kernel(torch.rand(1, 3, 8, 8), np.ones(9) / 9, 2)


def test_kernel_mse_pads_to_the_larger_side():
    small = np.zeros((3, 3))
    small[1, 1] = 1.0
    large = np.zeros((7, 7))
    large[3, 3] = 1.0
    assert d.kernel_mse(small, large) == 0.0
    assert d.kernel_mse(small, np.full((5, 5), 1 / 25)) > 0


# --- JPEG -----------------------------------------------------------------------------------------------------

def jpeg_file(image: Image.Image, **options) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    buffer.seek(0)
    return Image.open(buffer)


@pytest.mark.parametrize("quality", [5, 23, 50, 68, 85, 95])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_jpeg_quality_is_read_back_from_the_tables(quality, mode):
    pixels = (np.random.default_rng(0).random((32, 40, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    settings = d.jpeg_settings(jpeg_file(image, quality=quality))
    assert settings is not None
    assert settings.quality == quality and settings.table_error == 0.0


def test_jpeg_subsampling_is_read_back():
    image = Image.fromarray((np.random.default_rng(1).random((32, 32, 3)) * 255).astype(np.uint8))
    assert d.jpeg_settings(jpeg_file(image, quality=80, subsampling=0)).subsampling == 0
    assert d.jpeg_settings(jpeg_file(image, quality=80, subsampling=2)).subsampling == 2


def test_jpeg_settings_of_a_png_is_none():
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    buffer.seek(0)
    assert d.jpeg_settings(Image.open(buffer)) is None
    assert d.jpeg_settings(Image.new("RGB", (8, 8))) is None


def test_jpeg_round_trip_matches_pillow_and_keeps_the_batch_shape():
    batch = smooth_image(40) + 0.05 * torch.randn(1, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    batch = torch.cat([batch, batch.flip(-1)]).clamp(0, 1)
    result = d.jpeg_round_trip(batch, quality=30)
    assert result.shape == batch.shape and result.dtype == batch.dtype
    pixels = (batch[1].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    expected = np.asarray(jpeg_file(Image.fromarray(pixels), quality=30)) / 255.0
    assert np.allclose(result[1].permute(1, 2, 0).numpy(), expected, atol=1e-6)


def test_jpeg_round_trip_error_falls_with_quality():
    batch = (smooth_image(48) + 0.05 * torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(1)))
    batch = batch.clamp(0, 1)
    errors = [float((d.jpeg_round_trip(batch, quality=q) - batch).abs().mean()) for q in (20, 50, 90)]
    assert errors[0] > errors[1] > errors[2] > 0


def test_jpeg_round_trip_of_grey_and_bad_quality():
    grey = smooth_image(24, channels=1)
    assert d.jpeg_round_trip(grey, quality=50).shape == grey.shape
    with pytest.raises(InvalidInput):
        d.jpeg_round_trip(grey, quality=0)


# --- noise ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sigma", [0.01, 0.03, 0.08])
def test_noise_std_is_estimated_within_ten_percent(sigma):
    clean = smooth_image(128)
    noisy = clean + sigma * torch.randn(clean.shape, generator=torch.Generator().manual_seed(2))
    assert d.estimate_noise_std(noisy) == pytest.approx(sigma, rel=0.10)


def test_a_clean_smooth_image_has_almost_no_noise():
    assert d.estimate_noise_std(smooth_image(128)) < 0.002


def test_noise_estimation_needs_an_image():
    with pytest.raises(InvalidInput):
        d.estimate_noise_std(torch.rand(1, 3, 2, 50))
