from __future__ import annotations

import numpy as np

from sr.config import ZSSRConfig
from sr.policy import PolicyState, apply_policy, curve_is_flat, is_check_step, recent_tests, should_stop, slope_and_std

CONFIG = ZSSRConfig()  # the reference: check every 60, range 256, tests every 50, min_iters 256


def history(errors_at) -> PolicyState:
    state = PolicyState(1e-3)
    for step in range(0, 600, 50):
        state = state.with_test(step, errors_at(step), 1.0)
    return state


def test_the_fit_is_the_error_as_a_function_of_the_step():
    # y = 2 x + 1 exactly: slope 2 (the swapped fit, step as a function of error, would give 0.5), no noise
    slope, std = slope_and_std([0, 50, 100, 150, 200], [1, 101, 201, 301, 401])
    assert np.isclose(slope, 2.0) and std < 1e-9


def test_a_flat_noisy_curve_drops_the_learning_rate():
    noise = np.random.default_rng(0).normal(0, 1e-4, 20)
    state = apply_policy(599, history(lambda step: 0.01 + noise[step // 50]), CONFIG)
    assert state.learning_rate == 1e-4 and state.change_steps == (0, 599)


def test_a_falling_curve_keeps_the_learning_rate():
    noise = np.random.default_rng(0).normal(0, 1e-5, 20)
    falling = history(lambda step: 0.05 - 5e-5 * step + noise[step // 50])
    assert apply_policy(599, falling, CONFIG).learning_rate == 1e-3


def test_the_policy_acts_only_every_60_steps_and_min_iters_after_a_change():
    flat = history(lambda step: 0.01)
    assert is_check_step(299, flat, CONFIG) and not is_check_step(300, flat, CONFIG)
    assert not is_check_step(239, flat, CONFIG)  # 239 - 0 is not above min_iters (256)
    assert apply_policy(300, flat, CONFIG) is flat
    changed = PolicyState(1e-4, change_steps=(0, 299), test_steps=flat.test_steps, test_errors=flat.test_errors)
    assert not is_check_step(539, changed, CONFIG) and is_check_step(599, changed, CONFIG)


def test_the_fit_uses_the_tests_of_the_last_slope_range_steps():
    steps, _ = recent_tests(299, history(lambda step: 0.01), CONFIG)
    assert steps == [50, 100, 150, 200, 250]  # the reference's last 256 // 50 = 5 tests


def test_flatness_and_the_stop_rule():
    assert curve_is_flat(slope=-1e-7, std=1e-6, change_ratio=1.5)
    assert not curve_is_flat(slope=-1e-5, std=1e-6, change_ratio=1.5)
    assert should_stop(PolicyState(9e-7), CONFIG) and not should_stop(PolicyState(1e-5), CONFIG)
