"""Standard Webhooks signing and the target guard (no network: refused targets are refused before connecting)."""
from __future__ import annotations

import base64
import ipaddress
import sys
import threading
import time

import pytest
from pydantic import SecretStr

from jobs.settings import secret_key_bytes
from tests.hostile.cases import EMBEDDED_NON_PUBLIC
from jobs.webhooks import (TargetRefused, backoff_seconds, deliver, embedded_ipv4, is_refused_address, resolve_target,
                           sign, verify, webhook_id)


def test_signature_matches_the_standard_webhooks_reference_vector():
    # The example of the Standard Webhooks specification and its reference libraries.
    key = secret_key_bytes(SecretStr("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"))
    signature = sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_verify_accepts_a_fresh_signature_and_rejects_tampering():
    key = b"k" * 32
    now = int(time.time())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(now), "webhook-signature": sign(key, "msg_1", now, b"{}")}
    assert verify(key, headers, b"{}")
    assert not verify(key, headers, b'{"x":1}')
    assert not verify(b"other-key-000000", headers, b"{}")
    stale = dict(headers, **{"webhook-timestamp": str(now - 3600)})
    stale["webhook-signature"] = sign(key, "msg_1", now - 3600, b"{}")
    assert not verify(key, stale, b"{}")


def test_webhook_ids_are_stable_per_job_and_event():
    assert webhook_id("job1", "job.succeeded") == webhook_id("job1", "job.succeeded")
    assert webhook_id("job1", "job.succeeded") != webhook_id("job1", "job.started")
    assert webhook_id("job1", "job.succeeded") != webhook_id("job2", "job.succeeded")


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/hook", "http://localhost:8080/hook", "http://10.1.2.3/", "http://192.168.0.10/",
    "http://172.16.5.4/", "http://169.254.169.254/latest/meta-data/", "http://[::1]/", "http://[::ffff:127.0.0.1]/",
    "http://100.100.100.200/", "http://0.0.0.0/", "http://[fd00:ec2::254]/",
])
def test_private_targets_are_refused_unless_allowed(url):
    with pytest.raises(TargetRefused, match="non-public"):
        resolve_target(url, allow_private=False)
    assert resolve_target(url, allow_private=True)


@pytest.mark.parametrize("url", ["ftp://example.com/", "file:///etc/passwd", "http:///nohost",
                                 "http://user:pw@example.com/", "gopher://127.0.0.1/"])
def test_malformed_or_non_http_targets_are_refused(url):
    with pytest.raises(TargetRefused):
        resolve_target(url, allow_private=True)


def test_a_public_address_passes_the_guard():
    assert resolve_target("https://93.184.216.34/hook", allow_private=False) == "93.184.216.34"


def test_a_refused_target_is_recorded_without_a_connection_and_not_retried():
    attempt = deliver("http://127.0.0.1:9/hook", message_id="msg_1", body="{}", key=b"k" * 16,
                      allow_private=False, timeout=1)
    assert not attempt.delivered and not attempt.retryable and attempt.status is None
    assert "non-public" in attempt.error


def test_the_embedded_address_is_where_each_form_puts_it():
    assert embedded_ipv4(ipaddress.IPv6Address("64:ff9b::7f00:1")) == [ipaddress.IPv4Address("127.0.0.1")]
    assert embedded_ipv4(ipaddress.IPv6Address("2002:c0a8:101::")) == [ipaddress.IPv4Address("192.168.1.1")]
    assert embedded_ipv4(ipaddress.IPv6Address("2001:0:808:808:0:0:80ff:fffe")) == [
        ipaddress.IPv4Address("8.8.8.8"), ipaddress.IPv4Address("127.0.0.1")]
    assert embedded_ipv4(ipaddress.IPv6Address("::ffff:0:c0a8:1")) == [ipaddress.IPv4Address("192.168.0.1")]
    assert embedded_ipv4(ipaddress.IPv6Address("2606:4700::1111")) == []


@pytest.mark.parametrize("address", EMBEDDED_NON_PUBLIC.values(), ids=EMBEDDED_NON_PUBLIC.keys())
def test_an_ipv6_address_that_embeds_a_non_public_ipv4_address_is_refused(address):
    assert is_refused_address(ipaddress.IPv6Address(address))
    with pytest.raises(TargetRefused, match="non-public"):
        resolve_target(f"http://[{address}]:8080/hook", allow_private=False)


@pytest.mark.parametrize("address", ["64:ff9b::808:808", "2002:808:808::1", "::ffff:808:808", "2606:4700::1111",
                                     "93.184.216.34"])
def test_an_address_that_embeds_a_public_ipv4_address_passes(address):
    assert not is_refused_address(ipaddress.ip_address(address))


_connecting = threading.local()


def _refuse_connections_off_this_machine(event: str, args: tuple) -> None:
    """An audit hook: while a test holds `loopback_only`, a connection to any address but loopback raises."""
    if event == "socket.connect" and getattr(_connecting, "loopback_only", False):
        address = args[1]
        if isinstance(address, tuple) and not ipaddress.ip_address(address[0].split("%")[0]).is_loopback:
            raise ConnectionRefusedError(f"test guard: no connection off this machine ({address[0]})")


sys.addaudithook(_refuse_connections_off_this_machine)


@pytest.fixture
def loopback_only():
    _connecting.loopback_only = True
    yield
    _connecting.loopback_only = False


def test_the_guard_stops_a_connection_off_this_machine(loopback_only):
    attempt = deliver("http://[2606:4700::1111]:9/hook", message_id="msg_1", body="{}", key=b"k" * 16,
                      allow_private=False, timeout=1)
    assert not attempt.delivered and attempt.retryable  # it got as far as connecting, and the guard stopped it


@pytest.mark.parametrize("address", EMBEDDED_NON_PUBLIC.values(), ids=EMBEDDED_NON_PUBLIC.keys())
def test_a_delivery_to_an_embedded_non_public_address_is_refused_before_connecting(address, loopback_only):
    attempt = deliver(f"http://[{address}]/hook", message_id="msg_1", body="{}", key=b"k" * 16,
                      allow_private=False, timeout=1)
    assert not attempt.delivered and not attempt.retryable and attempt.status is None
    assert "non-public" in attempt.error


def test_backoff_doubles_up_to_its_cap():
    assert [backoff_seconds(n, 5, 60) for n in range(1, 6)] == [5, 10, 20, 40, 60]


def test_secrets_must_be_whsec_base64():
    with pytest.raises(ValueError, match="whsec_"):
        secret_key_bytes(SecretStr("plain-secret"))
    with pytest.raises(ValueError, match="at least 16 bytes"):
        secret_key_bytes(SecretStr("whsec_" + base64.b64encode(b"short").decode()))
