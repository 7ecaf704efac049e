"""Checking a webhook the service sent (Standard Webhooks v1, https://www.standardwebhooks.com)."""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from typing import Mapping

DEFAULT_TOLERANCE_SECONDS = 300  # Standard Webhooks' suggestion: long enough for clock skew, short for replays


def verify_webhook(secret: str | bytes, headers: Mapping[str, str], body: bytes | str, *,
                   tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS, now: float | None = None) -> bool:
    """True when `body` (the raw request body, before any JSON parsing) was signed with `secret` (the service's
    UPSCALER_WEBHOOK_SECRET, `whsec_` + base64; or the key's raw bytes) and its `webhook-timestamp` is within
    `tolerance_seconds` of now (an old delivery replayed is refused). `headers` may use any letter case.
    ValueError if `secret` is not `whsec_` + base64.

    The signature header may hold several space-separated signatures (`v1,<base64> v1,<base64>`, as during a
    secret rotation): one valid `v1` signature is enough. Signatures are compared in constant time."""
    key = _key(secret)
    lowered = {name.lower(): value for name, value in headers.items()}
    message_id, timestamp, signatures = (lowered.get(name) for name in
                                         ("webhook-id", "webhook-timestamp", "webhook-signature"))
    if not (message_id and timestamp and signatures):
        return False
    try:
        sent_at = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - sent_at) > tolerance_seconds:
        return False
    payload = body.encode() if isinstance(body, str) else bytes(body)
    digest = hmac.new(key, f"{message_id}.{sent_at}.".encode() + payload, hashlib.sha256).digest()
    expected = base64.b64encode(digest)
    valid = False
    for candidate in signatures.split():
        version, _, signature = candidate.partition(",")
        # every candidate is compared (no early exit), so the time taken says nothing about which one matched
        valid |= version == "v1" and hmac.compare_digest(expected, signature.encode())
    return valid


def _key(secret: str | bytes) -> bytes:
    """A wrong secret raises rather than fail every delivery's check without a word."""
    if isinstance(secret, bytes):
        return secret
    try:
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the webhook secret must be 'whsec_' followed by base64 (UPSCALER_WEBHOOK_SECRET)") from None
