"""The production defaults keep the issue's bounds, and the fault-injection hooks stay out of production."""
from __future__ import annotations

import pytest

from jobs.images import MIN_SIDE
from worker.runs import lease_margin
from jobs.settings import Settings, UnsafeSettings

SECRET = "whsec_c2VydmljZS10ZXN0cy13ZWJob29rLWtleQ=="


def test_a_dead_workers_job_is_queued_again_within_60_seconds_by_default():
    settings = Settings()
    # The lease lapses at most lease_seconds after the worker's last renewal (so after its death), and the
    # next reaper pass (every reaper_interval_seconds, on whichever worker) puts the job back.
    assert settings.lease_seconds + settings.reaper_interval_seconds <= 60
    # A slow worker stops itself a margin before its lease could lapse; a healthy one renews every third of the
    # lease, so it may miss one renewal (a Redis blip) and still not stop itself.
    renewal = settings.lease_seconds / 3
    assert 0 < lease_margin(settings.lease_seconds) and 2 * renewal <= settings.lease_seconds - lease_margin(
        settings.lease_seconds)
    # Celery's redelivery of an unacknowledged message comes after the longest job (the reaper's work is done
    # long before; a redelivered message then finds its job finished).
    assert settings.visibility_timeout_seconds > settings.job_time_limit_seconds + settings.job_stop_grace_seconds


@pytest.mark.parametrize("hook", ["test_pause_before_result_seconds", "test_hang_before_result_seconds"])
def test_test_hooks_are_refused_outside_local_mode(hook):
    deployable = {"api_keys": "k1", "webhook_secret": SECRET, "redis_url": "redis://redis:6379/0"}
    Settings(**deployable).check_deployable(bind_host="0.0.0.0")
    with pytest.raises(UnsafeSettings, match="test"):
        Settings(**deployable, **{hook: 1}).check_deployable(bind_host="0.0.0.0")
    Settings(**{hook: 1}).check_deployable(bind_host="127.0.0.1")  # local mode: the tests' own stacks


def test_the_api_refuses_images_too_small_for_sr_before_a_job_exists():
    core = pytest.importorskip("sr.images", reason="the ZSSR core has not landed yet")
    assert MIN_SIDE == core.MIN_SIDE
