"""`Annotated` dependencies: the store, the caller (its key, counted against its rate), and a job the caller may see.

Ownership is checked once, in `get_job_or_404`: a job of another key is answered exactly like an unknown id.
All are `async def`: FastAPI runs a plain `def` dependency in a worker thread, a costly hop on every poll.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import math
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Request
from pydantic import SecretStr

from api.errors import ApiError
from jobs.settings import Settings
from jobs.record import is_job_id
from jobs.store import AsyncJobStore, Lookup, RateLimit

OPEN_ACCESS_OWNER = "open"


async def get_store(request: Request) -> AsyncJobStore:
    return request.app.state.store


StoreDep = Annotated[AsyncJobStore, Depends(get_store)]


def owner_of(key: str) -> str:
    """Jobs are filed under a hash of the key, so no record or log ever holds a key itself."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _presented_key(request: Request) -> str | None:
    authorization = request.headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return request.headers.get("x-api-key")


@functools.lru_cache(maxsize=4)
def _key_digests(keys: tuple[SecretStr, ...]) -> tuple[bytes, ...]:
    return tuple(hashlib.sha256(key.get_secret_value().encode()).digest() for key in keys)


def authenticate(request: Request, settings: Settings) -> str:
    """The caller's owner id. Without UPSCALER_API_KEYS (local mode only) everyone is one owner."""
    if not settings.api_keys:
        return OPEN_ACCESS_OWNER
    presented = (_presented_key(request) or "").encode()
    # Digests have one length whatever the key's, so the comparison's time says nothing about a key's length
    # either; every key is compared, without stopping at a match.
    presented_digest = hashlib.sha256(presented).digest()
    matched = False
    for digest in _key_digests(settings.api_keys):
        matched |= hmac.compare_digest(presented_digest, digest)
    if not presented or not matched:
        raise ApiError(401, "unauthorized", "a valid API key is required (Authorization: Bearer KEY)",
                       {"WWW-Authenticate": "Bearer"})
    return owner_of(presented.decode())


def rate_limit_for(owner: str, settings: Settings) -> RateLimit | None:
    """The key's request-rate limit: UPSCALER_RATE_LIMIT_PER_SECOND, bursts of UPSCALER_RATE_LIMIT_BURST."""
    if not settings.rate_limit_per_second:
        return None
    return RateLimit(owner, settings.rate_limit_per_second, settings.rate_limit_burst)


def refuse_if_limited(wait: float, settings: Settings) -> None:
    """429 with Retry-After when the key's request was over its rate (counted in Redis, so every API process
    shares the count)."""
    if wait:
        raise ApiError(429, "rate_limited", f"more than {settings.rate_limit_per_second:g} requests a second "
                                            "with this key; slow down", {"Retry-After": str(max(1, math.ceil(wait)))})


@dataclass(frozen=True)
class Caller:
    """An authenticated caller, with what its route needs to serve it."""
    owner: str  # the id its jobs are filed under (owner_of its key)
    settings: Settings
    store: AsyncJobStore
    rate: RateLimit | None  # its key's request-rate limit (None: unlimited)

    async def count_request(self) -> None:
        """Count this request against the key's rate; 429 when it is over."""
        if self.rate is not None:
            refuse_if_limited(await self.store.take_request(self.rate), self.settings)


def _caller(request: Request) -> Caller:
    state = request.app.state
    owner = authenticate(request, state.settings)
    return Caller(owner, state.settings, state.store, rate_limit_for(owner, state.settings))


async def get_current_key(request: Request) -> Caller:
    """Authenticate the caller and count the request against its key's rate.

    One dependency for all of it, handing the route the settings and the store as well: FastAPI's cost grows
    with every dependency a route resolves (two more, for the settings and the store, were a measurable share of
    a submission's CPU in `python bench/submit_cpu.py`: bench/RESULTS.md)."""
    caller = _caller(request)
    await caller.count_request()
    return caller


async def get_submitting_key(request: Request) -> Caller:
    """Authenticate the caller without counting the request: the submission route counts it itself, in the
    round trip that records the job when it can (api/routes/jobs.py SubmissionCount). A round trip of its own
    before that one held every submission for one more turn of the event loop, behind every other request
    (bench/api_load.py; the figures are in bench/RESULTS.md, the API's submit path)."""
    return _caller(request)


CurrentKey = Annotated[Caller, Depends(get_current_key)]
SubmittingKey = Annotated[Caller, Depends(get_submitting_key)]


@dataclass(frozen=True)
class OwnedJob:
    id: str
    fields: dict[str, str]
    deliveries: list[str]


async def get_job_or_404(request: Request, job_id: Annotated[str, Path(description="the job id")]) -> OwnedJob:
    """The caller's job, or 404 (also for another key's job), or 410 (expired). Authenticates and counts the
    request like CurrentKey, the count riding in the same Redis round trip as the read (polls are the most
    frequent request)."""
    caller = _caller(request)
    if not is_job_id(job_id):
        await caller.count_request()
        raise ApiError(404, "job_not_found", "no such job")
    found: Lookup = await caller.store.lookup(job_id, rate=caller.rate)
    refuse_if_limited(found.rate_wait, caller.settings)
    if found.visible_to(caller.owner):
        return OwnedJob(job_id, found.fields, found.deliveries)
    if found.expired_for(caller.owner):
        raise ApiError(410, "job_expired", "the job expired; its record and result were deleted")
    raise ApiError(404, "job_not_found", "no such job")


JobDep = Annotated[OwnedJob, Depends(get_job_or_404)]
