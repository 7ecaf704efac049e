"""Blind ZSSR through sr.upscale and the CLI: kernel="estimate", JPEG-aware sons, denoise="auto", arch="post"."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import sr
import sr.blind
from sr import degradations
from sr.cli import main as cli_main
from sr.inference import plan_tiles, run_net_tiled
from sr.model import PostUpsamplingNet, build_net
from sr.resize import Degradation, son_of

TINY = {"max_iters": 12, "min_iters": 12, "crop_size": 24, "width": 8, "depth": 3, "run_test_every": 4,
        "back_projection_iters": [1], "output_flip": False, "channels_last": False, "precision": "float32",
        "test_crop": 0, "kernel_estimation_iters": 6}


def textured(size: int = 64, seed: int = 0) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(1, 3, size // 4, size // 4, generator=generator)
    smooth = F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)
    return (smooth[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def as_jpeg(pixels: np.ndarray, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer)


def test_estimated_kernel_is_used_and_reported():
    image = Image.fromarray(textured(64))
    result = sr.upscale(image, 2, config=sr.config_for("fast", TINY), kernel="estimate", seed=0, device="cpu")
    info = result.info["sr"]
    assert result.size == (128, 128)
    assert info["kernel_source"] == "estimate" and info["kernel_estimation_seconds"] >= 0
    kernel = np.asarray(info["kernel"])
    assert kernel.ndim == 2 and kernel.shape[0] % 2 == 1 and kernel.sum() == pytest.approx(1.0, abs=1e-4)


def test_estimate_needs_x2_or_x4():
    with pytest.raises(sr.InvalidInput, match="x2 or x4"):
        sr.upscale(Image.fromarray(textured(64)), 3, config=sr.config_for("fast", TINY), kernel="estimate")


def test_given_and_bicubic_kernels_are_reported():
    image = Image.fromarray(textured(32))
    given = sr.upscale(image, 2, config=sr.config_for("fast", TINY), kernel=np.ones((3, 3)), seed=0, device="cpu")
    assert given.info["sr"]["kernel_source"] == "given"
    assert np.allclose(given.info["sr"]["kernel"], np.full((3, 3), 1 / 9), atol=1e-6)
    plain = sr.upscale(image, 2, config=sr.config_for("fast", TINY), seed=0, device="cpu")
    assert plain.info["sr"]["kernel_source"] == "bicubic" and "kernel" not in plain.info["sr"]


@pytest.mark.parametrize("overrides, expected", [({}, 55), ({"son_jpeg_quality": 0}, 0),
                                                 ({"son_jpeg_quality": 80}, 80)])
def test_jpeg_input_sons_are_compressed_at_its_quality(overrides, expected):
    config = sr.config_for("fast", {**TINY, **overrides})
    result = sr.upscale(as_jpeg(textured(48), 55), 2, config=config, seed=0, device="cpu")
    assert result.info["sr"]["son_jpeg_quality"] == expected


def test_jpeg_aware_training_turns_back_projection_off():
    from sr.blind import blind_setup
    image = as_jpeg(textured(48), 55)
    color = torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)[None].float() / 255.0
    config = sr.config_for("fast", TINY)
    aware = blind_setup(image, color, (2.0, 2.0), "bicubic", config)
    assert aware.degradation.jpeg_quality == 55 and aware.config.back_projection_iters == (0,)
    plain = blind_setup(image, color, (2.0, 2.0), "bicubic", sr.config_for("fast", {**TINY, "son_jpeg_quality": 0}))
    assert plain.degradation.jpeg_quality == 0 and plain.config.back_projection_iters == (1,)


def test_png_input_sons_are_not_compressed():
    result = sr.upscale(Image.fromarray(textured(32)), 2, config=sr.config_for("fast", TINY), seed=0, device="cpu")
    assert result.info["sr"]["son_jpeg_quality"] == 0


def test_son_of_applies_the_jpeg_round_trip_after_downscaling():
    father = torch.from_numpy(textured(48)).permute(2, 0, 1)[None].float() / 255.0
    plain = Degradation()
    compressed = Degradation(jpeg_quality=20)
    small = plain.downscale(father, (24, 24), (2.0, 2.0))
    expected = F.interpolate(degradations.jpeg_round_trip(small, 20), size=(48, 48), mode="bicubic",
                             align_corners=False, antialias=True)
    assert torch.allclose(son_of(father, (2.0, 2.0), compressed), expected, atol=1e-6)
    assert not torch.allclose(son_of(father, (2.0, 2.0), plain), expected, atol=1e-3)


def test_denoise_auto_sets_noise_std_from_the_image():
    rng = np.random.default_rng(0)
    clean = np.full((64, 64, 3), 128.0)
    noisy = np.clip(clean + rng.normal(0, 0.04 * 255, clean.shape), 0, 255).round().astype(np.uint8)
    result = sr.upscale(Image.fromarray(noisy), 2, config=sr.config_for("fast", TINY), denoise="auto", seed=0,
                        device="cpu")
    assert result.info["sr"]["noise_std"] == pytest.approx(0.04, rel=0.15)
    off = sr.upscale(Image.fromarray(noisy), 2, config=sr.config_for("fast", TINY), seed=0, device="cpu")
    assert off.info["sr"]["noise_std"] == 0.0
    with pytest.raises(sr.InvalidInput, match="denoise"):
        sr.upscale(Image.fromarray(noisy), 2, denoise="always")


def test_with_denoise_auto_the_kernel_fit_allows_for_the_estimated_noise(monkeypatch):
    monkeypatch.setattr(sr.kernelprior, "available_scales", lambda: ())  # the KernelGAN path, where the fit runs
    floors = []
    fit = sr.blind.fit_kernel
    monkeypatch.setattr(sr.blind, "fit_kernel", lambda *args, **kwargs: floors.append(kwargs["noise_floor"])
                        or fit(*args, **kwargs))
    rng = np.random.default_rng(1)
    # 1.5 levels: under the noise limit of an estimate at x2 (sr.blind.ESTIMATE_NOISE_LIMIT)
    noisy = np.clip(textured(64) + rng.normal(0, 1.5, (64, 64, 3)), 0, 255).round().astype(np.uint8)
    result = sr.upscale(Image.fromarray(noisy), 2, config=sr.config_for("fast", TINY), kernel="estimate",
                        denoise="auto", seed=0, device="cpu")
    assert result.info["sr"]["noise_std"] > 1.0 / 255 and floors == [result.info["sr"]["noise_std"]]


@pytest.mark.parametrize("denoise", ["off", "auto"])
def test_an_input_too_noisy_for_an_estimate_keeps_the_bicubic_assumption(monkeypatch, denoise):
    """ZSSR with a kernel wider than bicubic sharpens an input's noise with its detail; at x2 an input noisier than
    the limit gets the kernel="bicubic" run, pixel for pixel, and nothing is estimated."""
    rng = np.random.default_rng(2)
    noisy = Image.fromarray(np.clip(textured(64) + rng.normal(0, 5.0, (64, 64, 3)), 0, 255).round().astype(np.uint8))
    config = sr.config_for("fast", TINY)
    assumed = sr.upscale(noisy, 2, config=config, kernel="bicubic", denoise=denoise, seed=0, device="cpu")

    def no_estimate(*args, **kwargs):
        raise AssertionError("a kernel was estimated for a noisy input")

    monkeypatch.setattr(sr.kernelprior, "estimate_covariance", no_estimate)
    monkeypatch.setattr(sr.blind, "estimate_for_scale", no_estimate)
    estimated = sr.upscale(noisy, 2, config=config, kernel="estimate", denoise=denoise, seed=0, device="cpu")
    check = estimated.info["sr"]["kernel_check"]
    assert check["kept"] == "bicubic" and check["noise"] > check["limit"] == 2.0
    assert "kernel" not in estimated.info["sr"]
    assert np.array_equal(np.asarray(estimated), np.asarray(assumed))


def test_the_noise_limit_leaves_a_clean_input_and_x4_to_the_estimate():
    rng = np.random.default_rng(3)
    clean = torch.from_numpy(textured(64)).permute(2, 0, 1)[None].float() / 255
    noisy = (clean + torch.from_numpy(rng.normal(0, 5.0 / 255, clean.shape)).float()).clamp(0, 1)
    assert sr.blind.too_noisy_to_estimate(clean, 2) is None
    assert sr.blind.too_noisy_to_estimate(noisy, 2)["kept"] == "bicubic"
    assert sr.blind.too_noisy_to_estimate(noisy, 4) is None  # not measured at x4: no limit there


def test_kernel_sons_follow_the_degradations_convention():
    """The core's kernel downscale and sr.degradations.degrade_with_kernel agree away from the borders."""
    image = torch.rand(1, 3, 40, 40)
    kernel = degradations.random_anisotropic_gaussian_kernel(2, np.random.default_rng(0))
    core = Degradation(torch.from_numpy(kernel).float()).downscale(image, (20, 20), (2.0, 2.0))
    ours = degradations.degrade_with_kernel(image, kernel, 2)
    margin = kernel.shape[0] // 4 + 1
    assert torch.allclose(core[..., margin:-margin, margin:-margin], ours[..., margin:-margin, margin:-margin],
                          atol=1e-5)


# --- arch="post" ----------------------------------------------------------------------------------------------

def test_post_net_runs_at_the_sons_size_and_keeps_the_interface():
    config = sr.config_for("fast", {**TINY, "arch": "post"})
    net = build_net(3, config, torch.device("cpu"), torch.Generator().manual_seed(0), sf=(2.0, 2.0))
    assert isinstance(net, PostUpsamplingNet) and net.factor == 2
    first_conv = net.body[0]
    assert first_conv.in_channels == 12 and net.body[-1].out_channels == 12
    for height, width in ((32, 32), (31, 30)):
        up = torch.rand(1, 3, height, width)
        assert net(up).shape == up.shape
    # With zero weights the residual vanishes: the output is the cubic pre-upsample itself.
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.zero_()
    up = torch.rand(1, 3, 16, 16)
    assert torch.equal(net(up), up)


def test_post_net_tiled_equals_untiled():
    config = sr.config_for("fast", {**TINY, "arch": "post"})
    net = build_net(3, config, torch.device("cpu"), torch.Generator().manual_seed(1), sf=(2.0, 2.0)).eval()
    up = torch.rand(1, 3, 70, 58)
    whole = plan_tiles(70, 58, 10_000, net.receptive_radius, net.tile_multiple)
    tiles = plan_tiles(70, 58, 40, net.receptive_radius, net.tile_multiple)
    assert len(whole) == 1 and len(tiles) > 1
    assert all(tile.pad_top % 2 == 0 and tile.pad_left % 2 == 0 for tile in tiles)
    for k in (0, 3, 5):
        untiled = run_net_tiled(net, up, k, whole, config)
        tiled = run_net_tiled(net, up, k, tiles, config)
        assert torch.allclose(untiled, tiled, atol=1e-5)


def test_post_arch_upscales_and_bad_arch_is_refused():
    config = sr.config_for("fast", {**TINY, "arch": "post"})
    result = sr.upscale(Image.fromarray(textured(32)), 2, config=config, seed=0, device="cpu")
    assert result.size == (64, 64)
    with pytest.raises(sr.InvalidInput, match="arch"):
        sr.config_for("fast", {"arch": "sideways"})
    with pytest.raises(sr.InvalidInput, match="son_jpeg_quality"):
        sr.config_for("fast", {"son_jpeg_quality": 101})


# --- command line ---------------------------------------------------------------------------------------------

def test_cli_estimates_and_prints_the_kernel(tmp_path, capsys):
    source, target, config = tmp_path / "in.png", tmp_path / "out.png", tmp_path / "tiny.json"
    Image.fromarray(textured(64)).save(source)
    config.write_text(json.dumps(TINY))
    code = cli_main(["upscale", str(source), str(target), "--preset", "fast", "--config", str(config),
                     "--kernel", "estimate", "--seed", "0", "--quiet"])
    assert code == 0 and Image.open(target).size == (128, 128)
    assert "estimated kernel" in capsys.readouterr().err


def test_cli_kernel_file_and_bad_kernel(tmp_path, capsys):
    source, target, config = tmp_path / "in.png", tmp_path / "out.png", tmp_path / "tiny.json"
    Image.fromarray(textured(32)).save(source)
    config.write_text(json.dumps(TINY))
    np.save(tmp_path / "k.npy", np.ones((3, 3)) / 9)
    assert cli_main(["upscale", str(source), str(target), "--preset", "fast", "--config", str(config),
                     "--kernel", str(tmp_path / "k.npy"), "--quiet"]) == 0
    assert cli_main(["upscale", str(source), str(target), "--kernel", "gaussian", "--quiet"]) == 2
    assert cli_main(["upscale", str(source), str(target), "--kernel", str(tmp_path / "none.npy"), "--quiet"]) == 2
    errors = capsys.readouterr().err
    assert "error: --kernel must be" in errors and "cannot read the kernel file" in errors


# --- the width fit of estimated kernels ------------------------------------------------------------------------

def blocky(size: int, seed: int, block: int = 6) -> torch.Tensor:
    """[1,3,size,size] in [0,1]: random flat blocks, sharp full-contrast edges (a too-wide kernel cannot explain
    their LR image)."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(1, 3, size // block + 1, size // block + 1, generator=generator)
    return F.interpolate(noise, scale_factor=block, mode="nearest")[..., :size, :size]


@pytest.mark.parametrize("start", [4.0, 0.5])
def test_the_width_fit_moves_a_wrong_estimate_toward_the_true_kernel(start):
    from sr import blind, kernelgan
    covariance = np.array([[0.8, 0.2], [0.2, 1.2]])
    true = kernelgan.gaussian_kernel(covariance, sf=2)
    lr = (degradations.degrade_with_kernel(blocky(192, seed=3), true, 2).clamp(0, 1) * 255).round() / 255
    estimate = kernelgan.gaussian_kernel(covariance * start, sf=2)
    fit = blind.fit_kernel(lr, estimate, 2)
    # 4x too wide is narrowed, 2x too narrow widened; both land near the true covariance (measured: 0.84x of it)
    assert fit.shape == "estimate"
    assert (fit.factor < 1.0) if start > 1 else (fit.factor > 1.0)
    assert 0.6 < start * fit.factor < 1.2
    assert fit.kernel.sum() == pytest.approx(1.0)
    assert np.allclose(kernelgan.kernel_covariance(fit.kernel), covariance * start * fit.factor, rtol=0.05, atol=0.02)
    limit = blind.KERNEL_FIT_RESIDUAL * blind.QUANTISATION_RMS
    assert blind.consistency_residual(lr, fit.kernel, 2) <= limit
    assert (blind.consistency_residual(lr, estimate, 2) > limit) == (start > 1)
    again = blind.fit_kernel(lr, estimate, 2)
    assert again.factor == fit.factor and np.array_equal(again.kernel, fit.kernel)


def test_the_kernel_fit_turns_an_estimate_lying_across_the_true_kernel():
    from sr import blind, kernelgan
    true_covariance = np.diag([0.4, 2.0])  # long along the columns
    true = kernelgan.gaussian_kernel(true_covariance, sf=2)
    lr = (degradations.degrade_with_kernel(blocky(192, seed=4), true, 2).clamp(0, 1) * 255).round() / 255
    across = kernelgan.gaussian_kernel(np.diag([2.0, 0.4]), sf=2)  # long along the rows
    fit = blind.fit_kernel(lr, across, 2)
    assert fit.shape == "turned 90"
    fitted = kernelgan.kernel_covariance(fit.kernel)
    assert fitted[1, 1] > 2 * fitted[0, 0]
    assert np.linalg.norm(fitted - true_covariance) < 0.5 * np.linalg.norm(np.diag([2.0, 0.4]) - true_covariance)


@pytest.mark.parametrize("sf", [2, 4])
def test_a_wild_estimate_gets_a_kernel_the_core_can_use_not_an_error(sf):
    """KernelGAN after a few iterations can guess a blur of tens of pixels, and the width fit tries twice that: every
    Gaussian it draws fits sr.resize's 64x64 limit (a job once failed with 'at most 64x64' on kernel=estimate)."""
    from sr import blind, kernelgan
    from sr.resize import degradation_for
    for covariance in (np.eye(2) * 400.0, np.array([[900.0, 300.0], [300.0, 200.0]])):
        kernel = kernelgan.gaussian_kernel(covariance, sf)
        assert kernel.shape[0] <= kernelgan.MAX_KERNEL_SIDE and kernel.sum() == pytest.approx(1.0)
        degradation_for(kernel)
    lr = (degradations.degrade_with_kernel(blocky(96, seed=5), kernelgan.gaussian_kernel(np.eye(2), sf), sf)
          .clamp(0, 1) * 255).round() / 255
    fit = blind.fit_kernel(lr, kernelgan.gaussian_kernel(np.eye(2) * 30.0, sf), sf)
    assert fit.kernel.shape[0] <= kernelgan.MAX_KERNEL_SIDE
