"""sr.metrics: Y-channel PSNR by hand, SSIM against scikit-image, the shave, and the accepted input types."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from sr.errors import InvalidInput
from sr.metrics import luma, psnr, ssim

RNG = np.random.default_rng(11)


def _noisy_pair(shape=(40, 48, 3), noise=12.0):
    clean = RNG.integers(0, 256, shape, dtype=np.uint8)
    smooth = np.clip(clean.astype(np.float64) * 0.6 + 50, 0, 255)  # structure that SSIM can see
    noisy = np.clip(smooth + RNG.normal(0, noise, shape), 0, 255)
    return smooth.astype(np.uint8), noisy.astype(np.uint8)


def test_psnr_matches_a_hand_computation_on_the_bt601_luma():
    a, b = _noisy_pair()
    shave = 2
    y_a = 16 + (65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2]) / 255
    y_b = 16 + (65.481 * b[..., 0] + 128.553 * b[..., 1] + 24.966 * b[..., 2]) / 255
    mse = np.mean((y_a[shave:-shave, shave:-shave] - y_b[shave:-shave, shave:-shave]) ** 2)
    assert psnr(a, b, shave=shave) == pytest.approx(10 * math.log10(255 ** 2 / mse), abs=1e-9)
    assert psnr(a, b, shave=0) != pytest.approx(psnr(a, b, shave=shave), abs=1e-6)  # the shave is applied


def test_psnr_of_a_known_constant_error():
    grey = np.full((16, 16), 100, np.uint8)
    assert psnr(grey, grey + 5) == pytest.approx(10 * math.log10(255 ** 2 / 25))
    assert psnr(grey, grey) == math.inf


def test_grey_images_use_their_one_channel_without_the_luma_offset():
    grey = RNG.integers(0, 256, (20, 20), dtype=np.uint8)
    assert np.array_equal(luma(grey), grey.astype(np.float64))
    white = np.full((4, 4, 3), 255, np.uint8)
    assert luma(white)[0, 0] == pytest.approx(235.0)  # the 16..235 range of BT.601 luma


@pytest.mark.parametrize("shave", [0, 3])
def test_ssim_matches_scikit_image_on_the_luma(shave):
    metrics = pytest.importorskip("skimage.metrics")
    a, b = _noisy_pair((64, 72, 3))
    reference = metrics.structural_similarity(
        luma(a)[shave:a.shape[0] - shave, shave:a.shape[1] - shave],
        luma(b)[shave:b.shape[0] - shave, shave:b.shape[1] - shave],
        gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    assert ssim(a, b, shave=shave) == pytest.approx(reference, abs=1e-9)
    assert 0.0 < reference < 0.99


def test_ssim_of_an_image_with_itself_is_one():
    a, _ = _noisy_pair()
    assert ssim(a, a) == pytest.approx(1.0)


def test_pil_images_arrays_and_tensors_give_the_same_figures():
    a, b = _noisy_pair()
    as_float = [torch.from_numpy(x.astype(np.float32) / 255).permute(2, 0, 1)[None] for x in (a, b)]
    expected = psnr(a, b, 1), ssim(a, b, 1)
    for pair in [(Image.fromarray(a), Image.fromarray(b)), as_float, (a / 255.0, b / 255.0)]:
        assert psnr(*pair, shave=1) == pytest.approx(expected[0], abs=1e-4)
        assert ssim(*pair, shave=1) == pytest.approx(expected[1], abs=1e-5)


def test_alpha_is_ignored_and_sixteen_bit_grey_is_on_the_eight_bit_scale():
    a, b = _noisy_pair()
    opaque = np.full(a.shape[:2] + (1,), 255, np.uint8)
    with_alpha = Image.fromarray(np.concatenate([a, opaque], axis=2))
    assert psnr(with_alpha, b) == pytest.approx(psnr(a, b))
    grey16 = Image.fromarray(a[..., 0].astype(np.uint16) * 257)
    assert grey16.mode == "I;16"
    assert psnr(grey16, Image.fromarray(b[..., 0])) == pytest.approx(psnr(a[..., 0], b[..., 0]))
    grey32 = Image.fromarray(a[..., 0].astype(np.int32) * 257)  # mode I: 16-bit values in 32-bit samples
    assert grey32.mode == "I" and psnr(grey32, grey16) == math.inf


def test_bad_pairs_are_refused_with_a_clear_message():
    a, b = _noisy_pair((20, 20, 3))
    with pytest.raises(InvalidInput, match="differ in size: 20x20 and 19x20"):
        psnr(a, b[:, :19])
    with pytest.raises(InvalidInput, match="shave of 10"):
        psnr(a, b, shave=10)
    with pytest.raises(InvalidInput, match="at least 11x11"):
        ssim(a, b, shave=5)
    with pytest.raises(InvalidInput, match="int64"):
        psnr(a.astype(np.int64), b.astype(np.int64))
