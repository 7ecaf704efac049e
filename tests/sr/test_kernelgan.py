"""KernelGAN: the generator's explicit kernel, the regularisers and their schedule, x4 kernels, the estimate."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sr import degradations, kernelgan
from sr.errors import Cancelled, InvalidInput

TINY = kernelgan.KernelGANConfig(g_channels=8, d_channels=8)


def textured_image(size: int = 80, seed: int = 0) -> torch.Tensor:
    """[1,3,size,size]: smoothed noise with edges, so the crop sampler finds structure."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(1, 3, size // 4, size // 4, generator=generator)
    return F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)


def test_generator_by_its_explicit_kernel_equals_the_layers():
    torch.manual_seed(0)
    generator = kernelgan.KernelGenerator(kernelgan.KernelGANConfig())
    crop = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        by_kernel = generator(crop)
        by_layers = generator.forward_layers(crop)
    assert by_kernel.shape == by_layers.shape == (1, 3, 26, 26)
    assert torch.allclose(by_kernel, by_layers, atol=1e-6 * float(by_layers.abs().max()) + 1e-9)


def test_explicit_kernel_is_the_response_to_a_delta():
    torch.manual_seed(1)
    generator = kernelgan.KernelGenerator(TINY)
    image = torch.zeros(1, 1, 40, 40)
    image[..., 20, 20] = 1.0  # a delta at an even position: G's output reads the kernel back mirrored
    with torch.no_grad():
        kernel = generator.explicit_kernel()
        output = generator.forward_layers(image)[0, 0]  # [14, 14]: output j reads input 2j .. 2j + 12
    for row in range(4, 10):
        for col in range(4, 10):
            assert output[row, col] == pytest.approx(float(kernel[20 - 2 * row, 20 - 2 * col]), abs=1e-7)


def test_bicubic_x2_kernel():
    kernel = kernelgan.bicubic_x2_kernel()
    assert kernel.shape == (8, 8) and kernel.sum() == pytest.approx(1.0)
    assert np.allclose(kernel, kernel.T) and np.allclose(kernel, kernel[::-1, ::-1])
    assert kernel[3, 3] == pytest.approx(0.18800354, abs=1e-7)  # the reference's table


def test_boundary_mask_is_zero_in_the_middle_and_grows_outward():
    mask = kernelgan.boundary_penalty_mask(13)
    assert mask[2:11, 2:11].max() == 0.0
    assert mask[0, 0] > mask[0, 6] > 0 and mask[1, 6] > 0


def test_losses_on_good_and_bad_kernels():
    losses = kernelgan.KernelLosses.build(13, torch.device("cpu"))
    centred = torch.tensor(degradations.pad_kernel_to(degradations.center_kernel(np.ones((2, 2)) / 4, 2), 13))
    centred = centred.float()
    assert float(losses.sum_to_one(centred)) == pytest.approx(0.0, abs=1e-6)
    assert float(losses.centralized(centred)) == pytest.approx(0.0, abs=1e-8)
    assert float(losses.boundaries(centred)) == 0.0
    corner = torch.zeros(13, 13)
    corner[0, 0] = 2.0
    assert float(losses.sum_to_one(corner)) == pytest.approx(1.0)
    assert float(losses.centralized(corner)) > 10 and float(losses.boundaries(corner)) > 0
    assert float(losses.sparse(torch.full((13, 13), 1 / 169))) > float(losses.sparse(centred))


def test_bicubic_loss_is_zero_for_a_bicubic_generator():
    losses = kernelgan.KernelLosses.build(13, torch.device("cpu"))
    crop = torch.rand(1, 3, 64, 64)
    bicubic = torch.tensor(kernelgan.bicubic_x2_kernel(), dtype=torch.float32)
    kernel = torch.zeros(13, 13)
    kernel[3:11, 3:11] = bicubic  # origin 6, taps at offsets -3..4: the same grid as padding 3 with stride 2
    generator = kernelgan.KernelGenerator(kernelgan.KernelGANConfig())
    with torch.no_grad():
        output = generator(crop, kernel)
    assert float(losses.bicubic(crop, output)) == pytest.approx(0.0, abs=1e-10)
    assert float(losses.bicubic(crop, output.roll(1, -1))) > 1e-4


def test_regulariser_schedule_follows_the_published_steps():
    schedule = kernelgan.RegularizerSchedule()
    for step in range(1, 10):
        schedule.update(step, 0.5)  # not close to bicubic yet
    assert not schedule.close_to_bicubic and schedule.bicubic == 5.0
    schedule.update(10, 0.3)
    schedule.update(11, 0.5)  # the run of close steps is broken
    for step in (12, 13):
        schedule.update(step, 0.3)
    assert not schedule.close_to_bicubic
    schedule.update(14, 0.3)
    assert schedule.close_to_bicubic
    for step in range(15, 200):
        schedule.update(step, 1.0)
    assert schedule.bicubic == 5.0 and schedule.sparse == 0.0
    schedule.update(200, 1.0)
    assert schedule.bicubic == pytest.approx(0.05) and schedule.centralized == 0.0
    schedule.update(400, 1.0)
    assert schedule.bicubic == pytest.approx(5e-4)
    assert (schedule.centralized, schedule.sparse) == (1.0, 5.0)
    for step in range(600, 2001, 200):
        schedule.update(step, 1.0)
    assert schedule.bicubic == kernelgan.RegularizerSchedule.BICUBIC_MIN


def test_x4_kernel_of_a_box_is_the_bigger_box():
    box_x2 = np.zeros((5, 5))
    box_x2[2:4, 2:4] = 0.25  # centred for x2: centre of mass 2.5
    box_x4 = kernelgan.x4_kernel_from_x2(box_x2)
    assert box_x4.sum() == pytest.approx(1.0)
    wanted = degradations.aligned_center(box_x4.shape[0], 4)
    assert degradations.kernel_center_of_mass(box_x4) == pytest.approx((wanted, wanted))
    image = torch.rand(1, 3, 32, 32)
    assert torch.allclose(degradations.degrade_with_kernel(image, box_x4, 4), F.avg_pool2d(image, 4), atol=1e-6)


def test_gaussian_of_moments_keeps_the_second_moments():
    kernel = degradations.random_anisotropic_gaussian_kernel(2, np.random.default_rng(5))
    fitted = kernelgan.gaussian_of_moments(kernel, sf=2)

    def moments(k):
        row, col = degradations.kernel_center_of_mass(k)
        rows, cols = np.meshgrid(np.arange(k.shape[0]) - row, np.arange(k.shape[1]) - col, indexing="ij")
        return np.array([np.sum(k * rows * rows), np.sum(k * cols * cols), np.sum(k * rows * cols)])

    assert fitted.sum() == pytest.approx(1.0) and fitted.shape[0] % 2 == 1
    wanted = degradations.aligned_center(fitted.shape[0], 2)
    assert degradations.kernel_center_of_mass(fitted) == pytest.approx((wanted, wanted), abs=1e-6)
    assert np.allclose(moments(fitted), moments(kernel), atol=0.1)


def test_zero_negligible_taps_keeps_the_largest():
    kernel = np.full((5, 5), 0.001)
    kernel[2, 2], kernel[2, 3], kernel[3, 2] = 0.8, 0.05, 0.05
    kept = kernelgan.zero_negligible_taps(kernel, n=2)  # threshold: 0.75 x the third largest tap
    assert kept.sum() == pytest.approx(1.0) and np.count_nonzero(kept) == 3
    assert kept[2, 2] == pytest.approx(0.7625 / 0.7875)  # (0.8 - 0.0375) / (0.7625 + 2 x 0.0125)


@pytest.mark.parametrize("sf", [2, 4])
def test_estimate_is_a_centred_normalised_kernel(sf):
    kernel = kernelgan.estimate_kernel(textured_image(), sf, iters=12, seed=0, config=TINY, device="cpu")
    assert kernel.ndim == 2 and kernel.shape[0] == kernel.shape[1] and kernel.shape[0] % 2 == 1
    assert kernel.min() >= 0 and kernel.sum() == pytest.approx(1.0)
    wanted = degradations.aligned_center(kernel.shape[0], sf)
    assert degradations.kernel_center_of_mass(kernel) == pytest.approx((wanted, wanted), abs=0.05)


def test_estimate_is_deterministic_for_a_seed():
    image = textured_image()
    first = kernelgan.estimate_kernel(image, 2, iters=15, seed=4, config=TINY, device="cpu")
    again = kernelgan.estimate_kernel(image, 2, iters=15, seed=4, config=TINY, device="cpu")
    other = kernelgan.estimate_kernel(image, 2, iters=15, seed=5, config=TINY, device="cpu")
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_estimate_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    kernelgan.estimate_kernel(textured_image(), 2, iters=3, seed=1, config=TINY, device="cpu")
    assert torch.equal(torch.rand(3), expected)


def test_estimate_reports_progress_and_stops():
    updates = []
    kernelgan.estimate_kernel(textured_image(), 2, iters=5, seed=0, config=TINY, device="cpu",
                              progress=updates.append)
    assert updates and updates[-1].phase == "kernel" and updates[-1].step == updates[-1].total_steps == 5
    calls = []
    with pytest.raises(Cancelled):
        kernelgan.estimate_kernel(textured_image(), 2, iters=50, seed=0, config=TINY, device="cpu",
                                  should_stop=lambda: calls.append(1) or len(calls) > 3)
    assert len(calls) == 4


def test_estimate_accepts_a_pil_image():
    from PIL import Image
    pixels = (textured_image()[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    kernel = kernelgan.estimate_kernel(Image.fromarray(pixels).convert("L"), 2, iters=3, seed=0, config=TINY,
                                       device="cpu")
    assert kernel.sum() == pytest.approx(1.0)


def test_estimate_rejects_bad_input():
    with pytest.raises(InvalidInput, match="scale factors 2 and 4"):
        kernelgan.estimate_kernel(textured_image(), 3, iters=3)
    with pytest.raises(InvalidInput, match="pixels a side"):
        kernelgan.estimate_kernel(torch.rand(1, 3, 30, 200), 2, iters=3)
    with pytest.raises(InvalidInput):
        kernelgan.estimate_kernel(torch.rand(3, 64, 64), 2, iters=3)


@pytest.mark.slow
def test_estimate_finds_a_wide_anisotropic_kernel_better_than_bicubic():
    """A photo blurred by a wide, elongated kernel: the estimate explains the low-resolution image better."""
    data = pytest.importorskip("skimage.data")
    torch.set_num_threads(1)
    photo = data.astronaut()[:384, 64:448]
    hr = torch.from_numpy(photo.copy()).permute(2, 0, 1)[None].float() / 255.0
    offsets = np.arange(15) - 7.5
    rows, cols = np.meshgrid(offsets, offsets, indexing="ij")
    truth = np.exp(-0.5 * (rows**2 / 6.0 + cols**2 / 0.6))
    truth = degradations.center_kernel(truth / truth.sum(), 2)
    lr = degradations.degrade_with_kernel(hr, truth, 2)
    estimated = kernelgan.estimate_kernel(lr, 2, iters=300, seed=0, device="cpu")
    bicubic = degradations.center_kernel(kernelgan.bicubic_x2_kernel(), 2)
    target = degradations.degrade_with_kernel(hr, truth, 2)
    error_estimated = float(((degradations.degrade_with_kernel(hr, estimated, 2) - target) ** 2).mean())
    error_bicubic = float(((degradations.degrade_with_kernel(hr, bicubic, 2) - target) ** 2).mean())
    assert error_estimated < error_bicubic
