"""verify_webhook against a real delivery from the worker, and against what an attacker could send."""
from __future__ import annotations

import base64

import pytest

from api.main import create_app
from tests.e2e.helpers import WEBHOOK_SECRET, WebhookReceiver, png_bytes, secret_key_bytes_of
from tests.live import serve
from jobs.webhooks import sign
from zssr_client import Client, verify_webhook


@pytest.fixture(scope="module")
def delivery(settings, worker_process):
    """The job.succeeded webhook of a real job, sent by the worker: (headers, raw body)."""
    with serve(create_app(settings)) as base, WebhookReceiver() as receiver, Client(base) as client:
        client.submit(png_bytes(), method="bicubic", webhook_url=receiver.url)
        receiver.wait_for(lambda: receiver.events("job.succeeded"))
    received = receiver.events("job.succeeded")[0]
    assert received["verified"]  # the service's own check agrees it is genuine
    return received["headers"], received["raw"]


def test_a_real_delivery_verifies(delivery):
    headers, body = delivery
    assert verify_webhook(WEBHOOK_SECRET, headers, body)
    assert verify_webhook(WEBHOOK_SECRET, {name.title(): value for name, value in headers.items()}, body.decode())
    assert verify_webhook(secret_key_bytes_of(WEBHOOK_SECRET), headers, body)  # the raw key works too


def test_a_tampered_body_or_header_or_another_secret_does_not(delivery):
    headers, body = delivery
    assert not verify_webhook(WEBHOOK_SECRET, headers, body.replace(b'"succeeded"', b'"failed"', 1))
    assert not verify_webhook(WEBHOOK_SECRET, headers, body + b" ")
    assert not verify_webhook(WEBHOOK_SECRET, {**headers, "webhook-id": headers["webhook-id"] + "x"}, body)
    other = "whsec_" + base64.b64encode(b"another-secret-of-some-length").decode()
    assert not verify_webhook(other, headers, body)
    for missing in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        assert not verify_webhook(WEBHOOK_SECRET, {k: v for k, v in headers.items() if k != missing}, body)
    assert not verify_webhook(WEBHOOK_SECRET, {**headers, "webhook-timestamp": "soon"}, body)


def test_an_old_or_future_timestamp_is_refused_even_when_signed(delivery):
    headers, body = delivery
    sent_at = int(headers["webhook-timestamp"])
    assert not verify_webhook(WEBHOOK_SECRET, headers, body, now=sent_at + 301)
    assert not verify_webhook(WEBHOOK_SECRET, headers, body, now=sent_at - 301)
    assert verify_webhook(WEBHOOK_SECRET, headers, body, now=sent_at + 299)
    key = secret_key_bytes_of(WEBHOOK_SECRET)
    old = sent_at - 3600  # a delivery replayed an hour later, its signature genuine
    replayed = {**headers, "webhook-timestamp": str(old), "webhook-signature": sign(key, headers["webhook-id"], old, body)}
    assert not verify_webhook(WEBHOOK_SECRET, replayed, body)
    assert verify_webhook(WEBHOOK_SECRET, replayed, body, tolerance_seconds=7200)
    assert not verify_webhook(WEBHOOK_SECRET, {**headers, "webhook-timestamp": str(old)}, body, tolerance_seconds=7200)


def test_one_valid_signature_among_several_is_enough(delivery):
    headers, body = delivery
    genuine = headers["webhook-signature"]
    forged = "v1," + base64.b64encode(b"\0" * 32).decode()
    assert verify_webhook(WEBHOOK_SECRET, {**headers, "webhook-signature": f"{forged} {genuine}"}, body)
    assert verify_webhook(WEBHOOK_SECRET, {**headers, "webhook-signature": f"{genuine} {forged}"}, body)
    assert not verify_webhook(WEBHOOK_SECRET, {**headers, "webhook-signature": f"{forged} {forged}"}, body)
    other_version = "v1a," + genuine.partition(",")[2]  # the same bytes under another scheme's name
    assert not verify_webhook(WEBHOOK_SECRET, {**headers, "webhook-signature": other_version}, body)


def test_a_secret_that_is_not_base64_is_an_error():
    with pytest.raises(ValueError, match="whsec_"):
        verify_webhook("whsec_not base64!", {}, b"")
