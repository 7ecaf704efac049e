"""The reference's learning-rate policy, as pure functions over the reconstruction-test history.

Every `learning_rate_policy_check_every` steps, once more than `min_iters` steps passed since the last change,
fit a line y = slope * x + b with x = the step of each reconstruction test and y = its MSE (the tests of the
last `learning_rate_slope_range` steps), with the covariance of the fit; std = sqrt(var(slope)). When
-learning_rate_change_ratio * slope < std the curve is flat within its noise: divide the learning rate by 10.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from sr.config import ZSSRConfig


@dataclass(frozen=True)
class PolicyState:
    learning_rate: float
    change_steps: tuple[int, ...] = (0,)  # iterations at which the learning rate changed (the reference starts at 0)
    test_steps: tuple[int, ...] = ()  # iterations of the reconstruction tests
    test_errors: tuple[float, ...] = ()  # their MSE
    cubic_errors: tuple[float, ...] = field(default=())  # the same test with plain cubic instead of the net

    def with_test(self, iteration: int, error: float, cubic_error: float) -> PolicyState:
        return replace(self, test_steps=self.test_steps + (iteration,), test_errors=self.test_errors + (error,),
                       cubic_errors=self.cubic_errors + (cubic_error,))


def slope_and_std(steps: list[int] | tuple[int, ...], errors: list[float] | tuple[float, ...]) -> tuple[float, float]:
    """Least-squares line through (step, error) -> (slope, std of the slope from the fit's covariance)."""
    # x = iteration, y = error: swapping them (fitting the iteration as a function of the error) is a known bug
    (slope, _), covariance = np.polyfit(np.asarray(steps, dtype=np.float64), np.asarray(errors, dtype=np.float64),
                                        1, cov=True)
    return float(slope), float(np.sqrt(max(covariance[0, 0], 0.0)))


def curve_is_flat(slope: float, std: float, change_ratio: float) -> bool:
    """The reference's test: the error no longer falls faster than its noise."""
    return -change_ratio * slope < std


def is_check_step(iteration: int, state: PolicyState, config: ZSSRConfig) -> bool:
    """True at the iterations where the reference checks the policy ((1 + iteration) % every == 0), once more
    than min_iters iterations passed since the last change."""
    return ((1 + iteration) % config.learning_rate_policy_check_every == 0
            and iteration - state.change_steps[-1] > config.min_iters)


def recent_tests(iteration: int, state: PolicyState, config: ZSSRConfig) -> tuple[list[int], list[float]]:
    """The tests within the last learning_rate_slope_range iterations (the reference: the last range/every ones)."""
    pairs = [(s, e) for s, e in zip(state.test_steps, state.test_errors)
             if iteration - config.learning_rate_slope_range < s <= iteration]
    return [s for s, _ in pairs], [e for _, e in pairs]


def apply_policy(iteration: int, state: PolicyState, config: ZSSRConfig) -> PolicyState:
    """The state after the policy ran at `iteration`: the learning rate divided by 10 when the curve is flat."""
    if not is_check_step(iteration, state, config):
        return state
    steps, errors = recent_tests(iteration, state, config)
    if len(steps) < 3:  # a line through fewer points has no variance estimate
        return state
    slope, std = slope_and_std(steps, errors)
    if not curve_is_flat(slope, std, config.learning_rate_change_ratio):
        return state
    return replace(state, learning_rate=state.learning_rate / 10, change_steps=state.change_steps + (iteration,))


def should_stop(state: PolicyState, config: ZSSRConfig) -> bool:
    """Training ends once the learning rate fell below its minimum (the step limit is the loop's own)."""
    return state.learning_rate < config.min_learning_rate
