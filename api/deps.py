"""`Annotated` dependencies: the store, the caller (its key, counted against its rate), and a job the caller may see.

Ownership is checked once, in `get_job_or_404`: a job of another key is answered exactly like an unknown id.
All are `async def`: FastAPI runs a plain `def` dependency in a worker thread, a costly hop on every poll.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import math
import time
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


def client_address(request: Request) -> str:
    """Whom failed authentications are counted against: the client's IPv4 address, or its IPv6 /64 (one host's
    usual share; an attacker holding a /64 would otherwise have 2**64 addresses to spread its guesses over)."""
    host = request.client.host if request.client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host  # a name (the test client's "testclient") or nothing
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class AuthFailures:
    """Failed authentications counted per client address in Redis (shared by every API process); past `limit` in a
    window, every request from that address is answered 429 until the window ends, with a valid key too (else a
    429 for wrong keys only would tell a guessing client which key was right). Each process keeps the addresses it
    saw go past the limit, so a request needs no extra round trip; a process that has not seen that address's
    failures learns of them with its first one (so at most one more guess per API process gets an answer)."""

    MAX_BLOCKED = 100_000  # addresses remembered per process; past it the expired ones are forgotten

    def __init__(self, limit: int, window_seconds: int):
        self.limit, self.window_seconds = limit, window_seconds
        self.blocked: dict[str, float] = {}  # address -> when its block ends (time.monotonic)

    def refuse_if_blocked(self, request: Request) -> None:
        if not self.blocked:
            return
        address = client_address(request)
        until = self.blocked.get(address)
        if until is not None:
            left = until - time.monotonic()
            if left > 0:
                raise self._refusal(left)
            del self.blocked[address]

    async def count(self, request: Request, store: AsyncJobStore) -> None:
        """Count a failed authentication; 429 if it takes the address past the limit."""
        if not self.limit:
            return
        address = client_address(request)
        failures, seconds_left = await store.count_auth_failure(address, self.window_seconds)
        if failures > self.limit:
            if len(self.blocked) >= self.MAX_BLOCKED:
                now = time.monotonic()
                self.blocked = {a: until for a, until in self.blocked.items() if until > now}
            self.blocked[address] = time.monotonic() + seconds_left
            raise self._refusal(seconds_left)

    def _refusal(self, seconds_left: float) -> ApiError:
        return ApiError(429, "too_many_auth_failures",
                        f"more than {self.limit} requests with a missing or wrong API key from this address within "
                        f"{self.window_seconds} s; retry later", {"Retry-After": str(max(1, math.ceil(seconds_left)))})


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


async def _caller(request: Request) -> Caller:
    state = request.app.state
    failures: AuthFailures = state.auth_failures
    failures.refuse_if_blocked(request)
    try:
        owner = authenticate(request, state.settings)
    except ApiError:
        await failures.count(request, state.store)
        raise
    return Caller(owner, state.settings, state.store, rate_limit_for(owner, state.settings))


async def get_current_key(request: Request) -> Caller:
    """Authenticate the caller and count the request against its key's rate.

    One dependency for all of it, handing the route the settings and the store as well: FastAPI's cost grows
    with every dependency a route resolves (two more, for the settings and the store, were a measurable share of
    a submission's CPU in `python bench/submit_cpu.py`: bench/RESULTS.md)."""
    caller = await _caller(request)
    await caller.count_request()
    return caller


async def get_submitting_key(request: Request) -> Caller:
    """Authenticate the caller without counting the request: the submission route counts it itself, in the
    round trip that records the job when it can (api/routes/jobs.py SubmissionCount). A round trip of its own
    before that one held every submission for one more turn of the event loop, behind every other request
    (bench/api_load.py; the figures are in bench/RESULTS.md, the API's submit path)."""
    return await _caller(request)


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
    caller = await _caller(request)
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
