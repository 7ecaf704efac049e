from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import sr
from tests.sr.conftest import as_array, tiny

CONFIG = tiny(max_iters=30, min_iters=30, checkpoint_every=10, augment_pool_size=4, output_flip=True)


def run(photo, config=CONFIG, **kwargs):
    saved = []
    result = sr.upscale(photo, 2, config=config, seed=5, checkpoint=saved.append, **kwargs)
    return result, saved


def test_a_checkpoint_every_n_steps_and_resume_equals_the_uninterrupted_run(photo):
    uninterrupted, saved = run(photo)
    assert len(saved) == 3 and all(isinstance(data, bytes) for data in saved)
    for checkpoint in saved[:2]:
        resumed, _ = run(photo, resume=checkpoint)
        assert np.abs(as_array(resumed) - as_array(uninterrupted)).max() <= 1
        assert resumed.info["sr"]["train_steps"] == 30


def test_a_stage_that_stops_early_still_leaves_its_last_state(photo):
    _, saved = run(photo, config=dataclasses.replace(CONFIG, max_iters=25))
    assert len(saved) == 3  # steps 10, 20 and the last one (25)


def test_a_resume_of_a_gradual_run_continues_in_its_stage(photo):
    config = dataclasses.replace(CONFIG, scale_factors=(1.5,), max_iters=10, checkpoint_every=4)
    uninterrupted, saved = run(photo, config=config)
    resumed, _ = run(photo, config=config, resume=saved[-2])  # inside the second stage
    assert np.abs(as_array(resumed) - as_array(uninterrupted)).max() <= 1


def test_a_checkpoint_of_another_run_is_refused(photo):
    _, saved = run(photo)
    with pytest.raises(sr.InvalidInput, match="another"):
        run(photo, config=dataclasses.replace(CONFIG, width=9), resume=saved[0])
    with pytest.raises(sr.InvalidInput, match="another"):
        run(photo.rotate(90), resume=saved[0])
    with pytest.raises(sr.InvalidInput, match="cannot be read"):
        run(photo, resume=b"not a checkpoint")


def test_the_inference_tile_memory_is_not_part_of_the_fingerprint(photo):
    _, saved = run(photo)
    resumed, _ = run(photo, config=dataclasses.replace(CONFIG, inference_memory_mb=64), resume=saved[0])
    assert resumed.size == (80, 64)
