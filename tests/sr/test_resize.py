from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import sr
from sr.resize import Degradation, cubic_resize, degradation_for, output_size, son_of, son_size
from tests.sr.conftest import as_array


def test_output_size_rounds_each_axis_by_its_own_factor():
    assert output_size(33, 41, (2.0, 2.0)) == (66, 82)
    assert output_size(33, 41, (1.5, 2.5)) == (round(33 * 2.5), round(41 * 1.5))


def test_son_size_is_the_references_ceil():
    assert son_size(128, 128, (2.0, 2.0)) == (64, 64)
    assert son_size(127, 100, (2.0, 3.0)) == (43, 50)


def test_cubic_resize_matches_pillows_bicubic_to_within_rounding(photo):
    tensor = torch.from_numpy(as_array(photo) / 255).permute(2, 0, 1)[None].float()
    for size in [(80, 64), (60, 48), (20, 16)]:
        ours = cubic_resize(tensor, (size[1], size[0]))[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255
        pillow = as_array(photo.resize(size, Image.Resampling.BICUBIC))
        assert np.abs(ours - pillow).mean() < 0.6  # Pillow rounds to 8 bits between its two passes


def test_a_delta_kernel_subsamples_exactly():
    image = torch.arange(64.0).reshape(1, 1, 8, 8)
    degradation = degradation_for(np.array([[0, 0, 0], [0, 1.0, 0], [0, 0, 0]]))
    small = degradation.downscale(image, (4, 4), (2.0, 2.0))
    assert torch.equal(small, image[:, :, ::2, ::2])


def test_kernels_are_normalised_and_symmetry_is_detected():
    assert degradation_for(np.ones((3, 3))).is_symmetric
    assert torch.isclose(degradation_for(np.ones((3, 3))).kernel.sum(), torch.tensor(1.0))
    assert not degradation_for(np.array([[1.0, 2.0], [0.0, 0.0]])).is_symmetric
    assert Degradation().is_symmetric


@pytest.mark.parametrize("kernel, message", [("estimate", "not available"), ("gaussian", "unknown kernel"),
                                             (np.ones(3), "2-D"), (np.zeros((3, 3)), "positive")])
def test_unusable_kernels_are_invalid_input(kernel, message):
    with pytest.raises(sr.InvalidInput, match=message):
        degradation_for(kernel)


def test_the_son_is_upscaled_back_to_the_fathers_size_and_noise_is_clipped():
    father = torch.rand(2, 3, 20, 20)
    assert son_of(father, (2.0, 2.0), Degradation()).shape == father.shape
    noisy = son_of(father, (1.5, 2.0), Degradation(), noise_std=0.5, generator=torch.Generator().manual_seed(0))
    assert noisy.shape == father.shape
    clean = son_of(father, (1.5, 2.0), Degradation())
    assert (noisy - clean).abs().mean() > 0.05  # the noise is there
