from __future__ import annotations

import dataclasses

import pytest

import sr
from sr.config import fingerprint_fields


def test_paper_preset_is_the_reference_defaults():
    paper = sr.PRESETS["paper"]
    assert (paper.max_iters, paper.min_iters, paper.min_learning_rate, paper.learning_rate) == (3000, 256, 9e-6, 1e-3)
    assert (paper.learning_rate_change_ratio, paper.learning_rate_policy_check_every,
            paper.learning_rate_slope_range, paper.run_test_every) == (1.5, 60, 256, 50)
    assert (paper.crop_size, paper.batch_size, paper.width, paper.depth, paper.init_variance) == (128, 1, 64, 8, 0.1)
    assert (paper.augment_leave_as_is_probability, paper.augment_no_interpolate_probability,
            paper.augment_min_scale, paper.augment_scale_diff_sigma, paper.augment_shear_sigma) == (
        0.05, 0.45, 0.5, 0.25, 0.1)
    assert paper.back_projection_iters == (10,) and paper.output_flip and paper.ensemble_size == 8
    assert paper.precision == "float32" and paper.noise_std == 0.0 and paper.scale_factors == ()


def test_presets_are_named_constants_and_frozen():
    assert sr.PRESETS == {"paper": sr.PAPER, "balanced": sr.BALANCED, "fast": sr.FAST}
    with pytest.raises(dataclasses.FrozenInstanceError):
        sr.FAST.width = 3  # type: ignore[misc]


def test_overrides_apply_and_json_lists_become_tuples():
    config = sr.config_for("fast", {"max_iters": 40, "back_projection_iters": [2, 3], "scale_factors": [1.5, [2, 1.5]],
                                    "learning_rate": 1, "output_flip": False})
    assert config.max_iters == 40 and config.back_projection_iters == (2, 3) and config.learning_rate == 1.0
    assert config.scale_factors == (1.5, (2.0, 1.5)) and not config.output_flip
    assert config.width == sr.FAST.width  # untouched fields keep the preset's value


def test_the_services_override_set_is_accepted():
    overrides = {"max_iters": 40, "min_iters": 40, "crop_size": 24, "width": 16, "depth": 4, "run_test_every": 10,
                 "back_projection_iters": [2], "output_flip": False, "channels_last": False, "precision": "float32",
                 "batch_size": 1, "test_crop": 0, "checkpoint_every": 25, "inference_memory_mb": 16}
    for preset in sr.PRESETS:
        assert sr.config_for(preset, overrides).checkpoint_every == 25


@pytest.mark.parametrize("overrides, named", [
    ({"widht": 3}, "widht"),
    ({"width": "64"}, "width"),
    ({"width": 6.5}, "width"),
    ({"output_flip": 1}, "output_flip"),
    ({"learning_rate": True}, "learning_rate"),
    ({"back_projection_iters": ["2"]}, "back_projection_iters"),
    ({"precision": "float16"}, "precision"),
    ({"inference_memory_mb": 8}, "inference_memory_mb"),
    ({"crop_size": 0}, "crop_size"),
    ({"scale_factors": [0.5]}, "scale_factors"),
])
def test_a_bad_override_is_invalid_input_naming_the_field(overrides, named):
    with pytest.raises(sr.InvalidInput, match=named):
        sr.config_for("balanced", overrides)


def test_an_unknown_preset_is_invalid_input():
    with pytest.raises(sr.InvalidInput, match="preset"):
        sr.config_for("turbo")


def test_the_fingerprint_ignores_the_inference_tile_memory_only():
    base = sr.config_for("fast")
    assert fingerprint_fields(base) == fingerprint_fields(dataclasses.replace(base, inference_memory_mb=4096))
    assert fingerprint_fields(base) != fingerprint_fields(dataclasses.replace(base, max_iters=7))
