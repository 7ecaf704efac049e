"""Idempotency-Key on `POST /v1/jobs` (IETF httpapi draft; Stripe's semantics): the same key from the same caller
with the same body within 24 h gets the first job back instead of a second one.

The create script that records the job checks the key's record and names the job in it in the same step, so two
API processes given one key at once make one job (jobs/lua/create.lua). A submission with costly checks holds the
key first, once the body is read (jobs/lua/idempotency_claim.lua), so a retry meanwhile gets 409 instead.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets

from fastapi import Request

from api.deps import Caller
from api.errors import ApiError
from api.schemas import JobCreate
from api.submission import Upload
from jobs.store import IdempotencyClaim, idempotency_record_key

HEADER = "idempotency-key"
MAX_KEY_LENGTH = 255
# A claim lapses this long after it was taken unless its job was recorded: longer than any submission's checks
# (an image_url fetch is the slowest, bounded by UPSCALER_IMAGE_URL_TIMEOUT_SECONDS), short enough that a key held
# by an API process that died is free again soon.
PENDING_MARGIN_SECONDS = 30
IN_USE_RETRY_AFTER_SECONDS = "1"


def requested_key(request: Request) -> str | None:
    """The request's Idempotency-Key, or None; 400 when it is not 1-255 printable ASCII characters."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not all(" " <= c <= "~" for c in key):
        raise ApiError(400, "invalid_idempotency_key", "Idempotency-Key must be 1 to 255 printable ASCII characters")
    return key


def fingerprint(params: JobCreate, image: bytes | None, image_url: str | None) -> str:
    """A hash of what the submission asks for: its parameters and its image (the bytes, or the URL as sent), the
    same whether the image came as a file or in base64."""
    digest = hashlib.sha256(json.dumps(params.model_dump(mode="json"), sort_keys=True).encode())
    digest.update(b"\0image\0" + image if image is not None else b"\0url\0" + (image_url or "").encode())
    return digest.hexdigest()


def claim_for(caller: Caller, key: str, upload: Upload) -> IdempotencyClaim:
    """The caller's claim on `key` for this body, not yet held (no token): the create script alone then decides
    (a replay, a reuse with another body, or the new job named in the key's record, atomically)."""
    return IdempotencyClaim(idempotency_record_key(caller.owner, hashlib.sha256(key.encode()).hexdigest()), "",
                            fingerprint(upload.params, upload.image, upload.image_url))


def worth_holding(upload: Upload, small_body: bool, stores_blobs: bool) -> bool:
    """Whether the key is held before the checks: when they are costly (a large body, an image_url to fetch, a
    webhook host to resolve, an input to store), a retry that comes meanwhile gets 409 rather than redo them, and a
    replay skips them. A cheap submission goes straight to the create script: one round trip, as without a key
    (a held key was two more, and doubled the submit p50 in bench/api_load.py --idempotency key)."""
    return not small_body or upload.image_url is not None or upload.params.webhook_url is not None or stores_blobs


async def hold(caller: Caller, claim: IdempotencyClaim) -> tuple[IdempotencyClaim, str | None]:
    """Hold the key for this submission: (the held claim, None), or (it, the job id) when the key already made a
    job with this body. 422 when it made one with another body; 409 while another request holds it."""
    held = dataclasses.replace(claim, token=secrets.token_hex(8))
    pending = caller.settings.image_url_timeout_seconds + PENDING_MARGIN_SECONDS
    outcome, job_id = await caller.store.claim_idempotency(held, pending_seconds=pending)
    if outcome == "reused":
        raise reused()
    if outcome == "in_use":
        raise in_use()
    return held, job_id


def reused() -> ApiError:
    return ApiError(422, "idempotency_key_reused", "this Idempotency-Key was used with another request body; "
                                                   "use a new key for a new job")


def in_use() -> ApiError:
    return ApiError(409, "idempotency_key_in_use", "a request with this Idempotency-Key is still being accepted; "
                                                   "retry shortly", {"Retry-After": IN_USE_RETRY_AFTER_SECONDS})
