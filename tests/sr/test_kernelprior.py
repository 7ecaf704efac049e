"""The learnt kernel prior (sr/kernelprior.py) and the kernel="estimate" path that uses it (sr/blind.py)."""
from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

import sr
from sr import blind, degradations, kernelgan, kernelprior
from sr.resize import degradation_for
from tests.sr.conftest import tiny


def test_log_covariance_round_trips():
    covariance = np.array([[2.0, -0.7], [-0.7, 0.6]])
    assert np.allclose(kernelprior.covariance_of(kernelprior.log_covariance(covariance)), covariance)
    assert np.allclose(kernelprior.log_covariance(np.eye(2) * np.e), [1.0, 0.0, 1.0])


def test_the_net_pools_any_input_size_to_one_guess():
    net = kernelprior.KernelPriorNet()
    for height, width in ((24, 24), (40, 72)):
        assert net(torch.rand(2, 1, height, width)).shape == (2, 3)


def test_random_covariance_keeps_the_standard_deviations_in_range():
    rng = np.random.default_rng(0)
    for _ in range(20):
        stds = np.sqrt(np.linalg.eigvalsh(kernelprior.random_covariance(rng, 0.7, 2.8)))
        assert (stds >= 0.7 - 1e-9).all() and (stds <= 2.8 + 1e-9).all()


def test_missing_weights_are_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(kernelprior, "weights_path", lambda sf: tmp_path / f"kernel_prior_x{sf}.pt")
    kernelprior.load_prior.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="train_kernel_prior.py --sf 2"):
            kernelprior.load_prior(2)
        assert kernelprior.available_scales() == ()
    finally:
        kernelprior.load_prior.cache_clear()


def degraded(covariance: np.ndarray, sf: int = 2, crop: int = 192) -> torch.Tensor:
    """A crop of scikit-image's coins (a training image: this checks the shipped weights work, not how well they
    generalise, which is bench/blind.py's job) blurred by the Gaussian of `covariance` and subsampled."""
    array = skimage.data.coins()[40:40 + crop, 40:40 + crop].astype(np.float32) / 255
    hr = torch.from_numpy(array)[None, None].expand(1, 3, crop, crop).contiguous()
    kernel = kernelgan.gaussian_kernel(covariance, sf, min_side=13)
    return (degradations.degrade_with_kernel(hr, kernel, sf).clamp(0, 1) * 255).round() / 255


def test_the_shipped_prior_reads_width_and_orientation():
    assert 2 in kernelprior.available_scales()
    wide_rows = np.diag([5.0, 0.8])  # long along the rows
    wide_cols = np.diag([0.8, 5.0])
    narrow = np.eye(2) * 0.6
    guesses = {name: kernelprior.estimate_covariance(degraded(cov), 2)
               for name, cov in (("rows", wide_rows), ("cols", wide_cols), ("narrow", narrow))}
    assert guesses["rows"][0, 0] > 2 * guesses["rows"][1, 1]
    assert guesses["cols"][1, 1] > 2 * guesses["cols"][0, 0]
    assert np.linalg.det(guesses["narrow"]) < 0.5 * min(np.linalg.det(guesses["rows"]), np.linalg.det(guesses["cols"]))


def test_estimate_uses_the_prior_at_x2_and_x4_and_kernelgan_where_it_has_no_weights(monkeypatch):
    lr = degraded(np.diag([3.0, 1.0]))
    config = tiny(kernel_estimation_iters=4)
    by_prior = blind.estimate_kernel(lr, (2.0, 2.0), config, seed=0)
    assert by_prior.info["kernel_estimator"] == "prior"
    assert by_prior.kernel.sum() == pytest.approx(1.0)
    assert degradations.kernel_center_of_mass(by_prior.kernel) == pytest.approx(
        (degradations.aligned_center(by_prior.kernel.shape[0], 2),) * 2, abs=1e-6)
    small = lr[..., :44, :44]  # KernelGAN's width fit is the slow part: a small input keeps the test short
    by_gan = blind.estimate_kernel(small, (2.0, 2.0), config, seed=0, estimator="kernelgan")
    assert by_gan.info["kernel_estimator"] == "kernelgan" and "kernel_factor" in by_gan.info
    assert kernelprior.available_scales() == (2, 4)
    assert blind.estimate_kernel(lr, (4.0, 4.0), config, seed=0).info["kernel_estimator"] == "prior"
    monkeypatch.setattr(kernelprior, "available_scales", lambda: (2,))
    assert blind.estimate_kernel(small, (4.0, 4.0), config, seed=0).info["kernel_estimator"] == "kernelgan"
    with pytest.raises(sr.InvalidInput, match="estimator"):
        blind.estimate_kernel(lr, (2.0, 2.0), config, estimator="guess")


def test_upscale_reports_which_estimator_ran():
    lr = degraded(np.diag([2.0, 1.0]), crop=96)
    image = Image.fromarray((lr[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    result = sr.upscale(image, 2, config=tiny(), kernel="estimate", seed=0, device="cpu")
    info = result.info["sr"]
    assert info["kernel_source"] == "estimate" and info["kernel_estimator"] == "prior"
    assert np.asarray(info["kernel"]).ndim == 2 and len(info["kernel_covariance"]) == 2


def test_sampling_convention_estimated_kernels_are_aligned_and_given_kernels_used_as_given():
    """On a ramp f(row, col) = col, the son's pixel j reads the kernel's centre of mass: sf * j + (sf - 1) / 2 for
    an estimated kernel (the middle of its sf x sf block), sf * j for a Gaussian given centred on its grid."""
    ramp = torch.arange(64, dtype=torch.float32).expand(1, 1, 64, 64).contiguous()
    estimated = blind.estimate_kernel(degraded(np.diag([2.0, 1.0])), (2.0, 2.0), tiny()).kernel
    centred = kernelgan.gaussian_kernel(np.diag([2.0, 1.0]), sf=1, min_side=13)
    columns = torch.arange(32, dtype=torch.float32) * 2
    for kernel, offset in ((estimated, 0.5), (centred, 0.0)):
        son = degradation_for(kernel).downscale(ramp, (32, 32), (2.0, 2.0))[0, 0]
        assert torch.allclose(son[16, 8:24], columns[8:24] + offset, atol=1e-3)


def halves_image(first: np.ndarray, second: np.ndarray) -> torch.Tensor:
    """An LR image whose top half was blurred by the Gaussian of `first` and bottom half by `second`'s."""
    top, bottom = degraded(first), degraded(second)
    return torch.cat([top[..., :48, :], bottom[..., 48:, :]], dim=-2)


def test_the_held_out_check_keeps_an_estimate_both_halves_agree_on():
    consistent = degraded(np.diag([5.0, 2.0]))
    check = blind.held_out_check(consistent, 2, blind.prior_held_out_measure)
    assert check["kept"] == "estimate" and check["estimate"] < check["bicubic"]


def test_the_held_out_check_keeps_bicubic_when_the_halves_disagree():
    torn = halves_image(np.diag([7.0, 7.0]), np.eye(2) * 0.3)
    check = blind.held_out_check(torn, 2, blind.prior_held_out_measure)
    assert check["kept"] == "bicubic" and check["bicubic"] < check["estimate"]
    assert blind.held_out_check(torn[..., :40, :40], 2, blind.prior_held_out_measure) is None  # too small to cut


def test_when_the_check_keeps_bicubic_the_run_is_the_bicubic_assumption_itself():
    """Not the bicubic kernel as an array, which is another degradation (wider at x4): sr's own cubic downscaling,
    so that the result is the kernel="bicubic" result, pixel for pixel."""
    torn = halves_image(np.diag([7.0, 7.0]), np.eye(2) * 0.3)
    image = Image.fromarray((torn[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    estimated = sr.upscale(image, 2, config=tiny(), kernel="estimate", seed=0, device="cpu")
    assumed = sr.upscale(image, 2, config=tiny(), kernel="bicubic", seed=0, device="cpu")
    info = estimated.info["sr"]
    assert info["kernel_check"]["kept"] == "bicubic" and "kernel" not in info
    assert np.array_equal(np.asarray(estimated), np.asarray(assumed))


def test_a_prior_guess_too_wide_for_the_input_is_narrowed_and_none_is_widened(monkeypatch):
    """The prior reads a soft scene as blur; the estimate is the widest scaling (<= 1) of its guess whose kernel can
    still explain the input (blind.fit_kernel): a guess far too wide comes back narrowed, a narrow one as it is."""
    sharp = degraded(np.eye(2) * 0.4)
    # coins' grain measures 2.7 levels of noise when this sharp: over the x2 limit, which this test is not about
    monkeypatch.setattr(blind, "too_noisy_to_estimate", lambda color, scale: None)
    guesses = {"too wide": np.eye(2) * 6.0, "narrow": np.eye(2) * 0.05}
    for name, guess in guesses.items():
        monkeypatch.setattr(kernelprior, "estimate_covariance", lambda color, sf, guess=guess: guess)
        estimate = blind.estimate_kernel(sharp, (2.0, 2.0), tiny(), seed=0, estimator="prior")
        factor = estimate.info["kernel_factor"]
        assert estimate.info["kernel_shape"] == "estimate"
        assert np.allclose(estimate.info["kernel_covariance"], guess * factor, atol=1e-3)
        if name == "too wide":
            assert factor < 0.25
            limit = blind.PRIOR_WIDTH_LIMIT * blind.QUANTISATION_RMS
            assert blind.consistency_residual(sharp, kernelgan.gaussian_kernel(guess, 2, min_side=13), 2) > limit
            assert blind.consistency_residual(blind.central_crop(sharp, blind.CONSISTENCY_MAX_SIDE), estimate.kernel,
                                              2) <= limit
        else:
            assert factor == 1.0
