"""The shared settings: parsing, secrets kept out of errors, unsafe defaults refused outside local mode."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jobs.settings import Settings, SettingsError, UnsafeSettings, load_settings

ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec_c2VydmljZS10ZXN0cy13ZWJob29rLWtleQ=="


def test_keys_and_overrides_are_parsed_from_the_environment(monkeypatch):
    monkeypatch.setenv("UPSCALER_API_KEYS", " key-alpha-1, key-beta-2 ,,")
    monkeypatch.setenv("UPSCALER_ZSSR_OVERRIDES", '{"paper": {"max_iters": 10}}')
    monkeypatch.setenv("REDIS_URL", "redis://redis.internal:6379/2")
    settings = load_settings()
    assert [k.get_secret_value() for k in settings.api_keys] == ["key-alpha-1", "key-beta-2"]
    assert settings.zssr_overrides == {"paper": {"max_iters": 10}}
    assert settings.redis_url == "redis://redis.internal:6379/2"
    assert "key-alpha-1" not in repr(settings) and "key-alpha-1" not in str(settings.model_dump())


def test_a_bad_secret_is_named_but_never_echoed(monkeypatch):
    monkeypatch.setenv("UPSCALER_WEBHOOK_SECRET", "whsec_not-base64-but-secret!!")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "UPSCALER_WEBHOOK_SECRET" in str(caught.value) and "not-base64-but-secret" not in str(caught.value)


def test_local_mode_allows_open_access():
    Settings().check_deployable(bind_host="127.0.0.1")
    Settings(dev=True).check_deployable(bind_host="0.0.0.0")
    Settings().check_deployable()  # a worker whose Redis is on loopback


def test_open_access_or_unsigned_webhooks_are_refused_outside_local_mode():
    with pytest.raises(UnsafeSettings, match="UPSCALER_API_KEYS.*UPSCALER_WEBHOOK_SECRET"):
        Settings().check_deployable(bind_host="0.0.0.0")
    with pytest.raises(UnsafeSettings, match="UPSCALER_WEBHOOK_SECRET"):
        Settings(api_keys="k1").check_deployable(bind_host="0.0.0.0")
    Settings(api_keys="k1", webhook_secret=SECRET).check_deployable(bind_host="0.0.0.0")
    with pytest.raises(UnsafeSettings):  # a worker on another host than Redis
        Settings(redis_url="redis://redis:6379/0").check_deployable()


def test_the_clis_refuse_unsafe_settings_with_one_line():
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "UPSCALER_HOST": "0.0.0.0"}
    api = subprocess.run([sys.executable, "-m", "api"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert api.returncode == 2 and "refusing to start" in api.stderr and "Traceback" not in api.stderr
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "REDIS_URL": "redis://redis.example:6379/0"}
    worker = subprocess.run([sys.executable, "-m", "worker"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert worker.returncode == 2 and "refusing to start" in worker.stderr and "Traceback" not in worker.stderr
