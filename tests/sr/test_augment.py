from __future__ import annotations

import dataclasses

import pytest
import torch

from sr.augment import AXIS_PRESERVING, FatherPool, FatherSource, dihedral, ensemble_transforms, undo_dihedral
from tests.sr.conftest import tiny


@pytest.mark.parametrize("k", range(8))
def test_each_dihedral_transform_is_undone(k):
    image = torch.rand(1, 3, 5, 7)
    transformed = dihedral(image, k)
    assert transformed.shape[-2:] == ((5, 7) if k % 2 == 0 else (7, 5))
    assert torch.equal(undo_dihedral(transformed, k), image)


def test_the_eight_transforms_are_distinct():
    image = torch.rand(1, 1, 4, 4)
    assert len({tuple(dihedral(image, k).flatten().tolist()) for k in range(8)}) == 8


def test_ensemble_transforms_keep_the_axes_for_per_axis_scales():
    assert ensemble_transforms(8, axes_may_swap=True) == list(range(8))
    assert ensemble_transforms(8, axes_may_swap=False) == list(AXIS_PRESERVING)
    assert ensemble_transforms(2, axes_may_swap=True) == [0, 4]
    assert ensemble_transforms(1, axes_may_swap=True) == [0]


def pool_for(config, image, seed=0, rotations=True):
    return FatherPool([FatherSource(image, 1.0)], config, crop_size=12, max_scale=1.0, rotations=rotations,
                      axes_may_swap=True, generator=torch.Generator().manual_seed(seed))


def test_fathers_are_crops_in_range_of_the_requested_batch():
    image = torch.rand(1, 3, 30, 40)
    pool = pool_for(tiny(augment_pool_size=8), image)
    for batch in (1, 3):
        fathers = pool.sample(batch)
        assert fathers.shape == (batch, 3, 12, 12) and fathers.min() >= 0 and fathers.max() <= 1


def test_as_is_fathers_are_plain_crops_of_the_image():
    image = torch.rand(1, 1, 20, 20)
    config = dataclasses.replace(tiny(), augment_leave_as_is_probability=1.0, augment_no_interpolate_probability=0.0)
    father = pool_for(config, image).sample(1)
    windows = image.unfold(2, 12, 1).unfold(3, 12, 1)  # every 12x12 window
    assert any(torch.equal(windows[0, 0, i, j], father[0, 0]) for i in range(9) for j in range(9))


def test_affine_fathers_are_warped_and_downscaled():
    image = torch.rand(1, 1, 40, 40)
    config = dataclasses.replace(tiny(augment_pool_size=4), augment_leave_as_is_probability=0.0,
                                 augment_no_interpolate_probability=0.0, augment_min_scale=0.5)
    father = pool_for(config, image).sample(1)
    windows = image.unfold(2, 12, 1).unfold(3, 12, 1)
    assert not any(torch.equal(windows[0, 0, i, j], father[0, 0]) for i in range(29) for j in range(29))


def test_the_pool_state_round_trips_so_a_resume_draws_the_same_fathers():
    image = torch.rand(1, 3, 30, 30)
    config = dataclasses.replace(tiny(augment_pool_size=4), augment_no_interpolate_probability=0.0,
                                 augment_leave_as_is_probability=0.0)
    first = pool_for(config, image)
    for _ in range(6):  # into the second bank
        first.sample(1)
    saved, generator_state = first.state_dict(), first.generator.get_state()
    expected = [first.sample(1) for _ in range(5)]
    second = pool_for(config, image, seed=99)
    second.generator.set_state(generator_state)
    second.load_state_dict(saved)
    assert all(torch.equal(a, b) for a, b in zip(expected, [second.sample(1) for _ in range(5)]))
